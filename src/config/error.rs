//! [`ConfigError`]: why a configuration was refused.

use std::{io, path::PathBuf};

/// A configuration that could not be read, parsed or validated.
///
/// Every variant names what the operator has to fix: the file, the variable,
/// or the key path (`server.port`, `apps[1].secret`). Start-up stops on any of
/// them; there is no partial or best-effort config.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The path as given.
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },
    /// A `${VAR}` reference that cannot be expanded: an unset variable
    /// without `:-default`, a bad name, or one in a quoted value.
    #[error("{file}:{line}: {message}")]
    Expansion {
        /// The file being expanded.
        file: String,
        /// 1-based line of the reference.
        line: usize,
        /// What is wrong with it.
        message: String,
    },
    /// The text is not YAML.
    #[error("{file}: {message}")]
    Yaml {
        /// The file being parsed.
        file: String,
        /// The parser's message, with line and column where known.
        message: String,
    },
    /// A key the schema does not have (often a typo).
    #[error("{file}: unknown key \"{key}\"")]
    UnknownKey {
        /// The file being parsed.
        file: String,
        /// Full key path, e.g. `server.prot` or `apps[0].secert`.
        key: String,
    },
    /// A value of the wrong type or outside its allowed range.
    #[error("{key}: {message}{}", .origin.as_ref().map_or(String::new(), |v| format!(" (from {v})")))]
    Invalid {
        /// Full key path, e.g. `server.port` or `apps[1].secret`.
        key: String,
        /// What is wrong and what was expected.
        message: String,
        /// The environment variable the value came from, if it did not come
        /// from the file or the defaults.
        origin: Option<String>,
    },
}

impl ConfigError {
    /// An [`ConfigError::Invalid`] for `key` with no environment origin.
    pub(crate) fn invalid(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid { key: key.into(), message: message.into(), origin: None }
    }

    /// Attributes an [`ConfigError::Invalid`] to the environment variable
    /// `var`; other variants are returned unchanged.
    pub(crate) fn with_origin(mut self, var: &str) -> Self {
        if let Self::Invalid { origin: origin @ None, .. } = &mut self {
            *origin = Some(var.to_owned());
        }
        self
    }
}
