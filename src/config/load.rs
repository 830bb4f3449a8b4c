//! Where a [`Config`] comes from: the sources stacked in a [`Figment`], then
//! read into the typed structs, the push keys resolved, and [`validate()`].

use std::{collections::HashMap, path::Path};

use figment2::{
    Figment, Metadata,
    error::{Actual, Kind},
    providers::{Named, Serialized},
    value::{Dict, Empty, Value},
};
use serde::Deserialize;

use super::{
    APNS_BUILDS, Config, ConfigError, IncusConfig, PushConfig, RedisConfig, ServerConfig,
    TlsConfig,
    de::{Leaf, Text},
    ipe,
    push::{BUILD_FIELDS, PushKeys},
    validate::{app_key, validate},
};

/// The environment, as variable names and values: `main` passes the
/// process's, tests a table. An empty value counts as unset.
pub type Env = HashMap<String, String>;

/// The formats a config file may be in. [`load_file`] asks
/// [`Format::detect`]; a second format (say, another server's config read
/// into stapes's keys) would be a variant here, chosen from the file or
/// the command line, that turns its file into the same key tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Format {
    /// `config.yml`: stapes's keys, in YAML.
    Yaml,
    /// IPÊ's config file, read into stapes's keys (see `ipe.rs`).
    Ipe,
}

impl Format {
    /// The format of the file at `path`, whose text is `text`: IPÊ's if it
    /// has a key only IPÊ has, else stapes's.
    pub fn detect(_path: &Path, text: &str) -> Self {
        if ipe::detect(text) { Self::Ipe } else { Self::Yaml }
    }
}

/// Loads, expands, layers and validates the config file at `path`.
///
/// # Errors
///
/// A [`ConfigError`] naming the file, variable or key path: unreadable file,
/// unset `${VAR}`, malformed YAML, unknown key, ill-typed value, malformed
/// variable, or a failed [`validate()`] check.
pub fn load_file(path: &Path, env: &Env) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
    load_str(Format::detect(path, &text), &text, &path.display().to_string(), env)
}

/// The configuration used when no file is given: one app and server
/// defaults, both adjustable from the environment.
///
/// The app comes from `STAPES_APP_ID` (default `1`), `STAPES_APP_KEY`
/// (`app-key`), `STAPES_APP_SECRET` (`app-secret`) and
/// `STAPES_APP_CLIENT_EVENTS` (`false`). The server listens on
/// 127.0.0.1:6001 unless `STAPES_HOST`/`STAPES_PORT` say otherwise: the demo
/// credentials are public, so it stays on loopback unless told not to.
///
/// # Errors
///
/// A [`ConfigError`] naming the variable if a value is malformed or invalid.
pub fn embedded_default(env: &Env) -> Result<Config, ConfigError> {
    let app =
        [("id", "1"), ("key", "app-key"), ("secret", "app-secret"), ("client_events", "false")];
    let mut figment = Figment::new();
    for (key, default) in app {
        let (var, key) = (format!("STAPES_APP_{}", key.to_uppercase()), format!("apps.0.{key}"));
        figment = figment.zipmerge(match set(env, &var) {
            Some(value) => env_layer(&var, &key, value),
            None => layer("the embedded default".into(), &key, default),
        });
    }
    load(figment, Format::Yaml, "the embedded default", env)
}

/// [`load_file`] on text already read; `name` stands for the file in errors.
pub(crate) fn load_str(
    format: Format,
    text: &str,
    name: &str,
    env: &Env,
) -> Result<Config, ConfigError> {
    if format == Format::Ipe {
        let (file, notes) = ipe::convert(&yaml(text, &ipe::expand(text, env), name)?, name)?;
        let mut config = load(Figment::from(file_layer(name, file)), Format::Ipe, name, env)
            .map_err(ipe::ipe_key)?;
        config.notes = notes;
        return Ok(config);
    }
    let file = yaml(text, &expand(text, name, env)?, name)?;
    let mut figment = Figment::new();
    for (key, value) in incus_aliases(&file)? {
        figment = figment.merge(layer(name.to_owned(), key, value));
    }
    load(figment.merge(file_layer(name, file)), Format::Yaml, name, env)
}

/// The file's key tree: `expanded` (`text` with its variables) parsed as
/// YAML, and `null` dropped (a key set to `null` is a key left out).
fn yaml(text: &str, expanded: &str, name: &str) -> Result<Dict, ConfigError> {
    let options = serde_saphyr::options! {
        strict_booleans: true,
        leading_zero_numbers_as_strings: true,
        underscored_numbers_as_strings: true,
        with_snippet: false,
    };
    let dict = serde_saphyr::from_str_with_options::<Option<Dict>>(expanded, options)
        .map_err(|err| yaml_error(text, name, &err))?;
    match without_nulls(Value::from(dict.unwrap_or_default())) {
        Some(Value::Dict(_, dict)) => Ok(dict),
        _ => Ok(Dict::new()),
    }
}

/// Expands `${VAR}` and `${VAR:-default}` in `text` from `env`.
///
/// `:-default` applies when the variable is unset or empty, as in the shell;
/// the default runs to the first `}`. `$${` writes a literal `${`. Lines whose
/// first non-blank character is `#` are comments and are left alone, so the
/// file can document the syntax. Values are inserted as text, before YAML
/// parsing: quote the reference (`"${VAR}"`) if the value may contain YAML
/// punctuation such as `: ` or ` #`.
///
/// # Errors
///
/// [`ConfigError::Expansion`] for an unset variable without a default, an
/// unterminated reference, a bad name, or a value containing a line break
/// (which would change the YAML structure).
pub(crate) fn expand(text: &str, file: &str, env: &Env) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(text.len());
    for (index, line) in text.split_inclusive('\n').enumerate() {
        let comment = line.trim_start().starts_with('#');
        let expanded = if comment { Ok(line.to_owned()) } else { expand_line(line, env) };
        out += &expanded.map_err(|message| ConfigError::Expansion {
            file: file.to_owned(),
            line: index + 1,
            message,
        })?;
    }
    Ok(out)
}

/// One line of [`expand`], or what is wrong with it.
fn expand_line(mut rest: &str, env: &Env) -> Result<String, String> {
    let mut out = String::new();
    while let Some(dollar) = rest.find('$') {
        out.push_str(&rest[..dollar]);
        let after = &rest[dollar + 1..];
        if let Some(escaped) = after.strip_prefix("${") {
            out.push_str("${");
            rest = escaped;
            continue;
        }
        let Some(reference) = after.strip_prefix('{') else {
            out.push('$');
            rest = after;
            continue;
        };
        let end =
            reference.find('}').ok_or("unterminated ${ (expected ${NAME} or ${NAME:-default})")?;
        let (name, default) = match reference[..end].split_once(":-") {
            Some((name, default)) => (name, Some(default)),
            None => (&reference[..end], None),
        };
        let mut chars = name.chars();
        if !(chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_'))
        {
            return Err(format!(
                "invalid variable name {name:?} in ${{…}} (letters, digits and _ only)"
            ));
        }
        let value = match (set(env, name), default) {
            (Some(value), _) | (None, Some(value)) => value,
            // Set but empty, and no default: the empty string.
            (None, None) if env.contains_key(name) => "",
            (None, None) => {
                return Err(format!(
                    "environment variable {name} is not set \
                     (write ${{{name}:-default}} to give it a default)"
                ));
            }
        };
        if value.contains(['\n', '\r']) {
            return Err(format!("the value of {name} contains a line break"));
        }
        out.push_str(value);
        rest = &reference[end + 1..];
    }
    Ok(out + rest)
}

/// `value` without its `null`s.
fn without_nulls(value: Value) -> Option<Value> {
    match value {
        Value::Empty(..) => None,
        Value::Dict(tag, dict) => Some(Value::Dict(
            tag,
            dict.into_iter().filter_map(|(k, v)| Some((k, without_nulls(v)?))).collect(),
        )),
        Value::Array(tag, list) => {
            Some(Value::Array(tag, list.into_iter().filter_map(without_nulls).collect()))
        }
        other => Some(other),
    }
}

/// The sources above the file, then everything read, resolved and checked.
fn load(figment: Figment, format: Format, name: &str, env: &Env) -> Result<Config, ConfigError> {
    // The other server's variables, below stapes's own.
    let figment = match format {
        Format::Yaml => incus_env(figment, env)?,
        Format::Ipe => {
            ipe::env(figment, env, |var, key, value| Figment::from(env_layer(var, key, value)))?
        }
    };
    let figment = stapes_env(figment, env)?;
    if let Ok(Value::Dict(_, incus)) = figment.find_value("incus") {
        let mut known = incus_keys();
        known.extend(
            ALIASES.split_whitespace().chain(UNSUPPORTED.split_whitespace()).map(Into::into),
        );
        refuse_unknown(&incus, &known, "incus.", name)?;
    }
    let read = |figment: &Figment| -> Result<Config, ConfigError> {
        let mut config: Config = figment.extract().map_err(|e| from_figment(e, name))?;
        required(figment)?;
        let extract = |e| from_figment(e, name);
        let Incus { incus: push } = figment.extract().map_err(extract)?;
        let Incus::<PushKeys> { incus: mut keys } = figment.extract().map_err(extract)?;
        config.incus.push = push;
        for (build, keys) in APNS_BUILDS.iter().zip(&mut keys.builds) {
            for (value, field) in keys.iter_mut().zip(BUILD_FIELDS) {
                *value = text_at(figment, &format!("incus.apns_{build}_{field}"))?;
            }
        }
        config.incus.unsupported = unsupported(figment)?;
        keys.resolve(&mut config.incus.push)?;
        Ok(config)
    };
    let config = read(&figment).map_err(|e| attribute(e, &figment))?;
    validate(&config).map_err(|e| attribute(e, &figment))?;
    Ok(config)
}

/// One part of the `incus:` section, which [`IncusConfig`], [`PushConfig`]
/// and [`PushKeys`] share.
#[derive(Deserialize)]
struct Incus<T> {
    #[serde(default)]
    incus: T,
}

/// Every key of `incus:` with a `STAPES_INCUS_*` variable.
fn incus_keys() -> Vec<String> {
    let keys = [IncusConfig::KEYS, PushConfig::KEYS, PushKeys::KEYS].concat();
    let builds = APNS_BUILDS.iter().flat_map(|b| BUILD_FIELDS.map(|f| format!("apns_{b}_{f}")));
    keys.iter().map(|&k| k.to_owned()).chain(builds).collect()
}

/// The text at `key` (a dotted path), if set; empty counts as unset.
fn text_at(figment: &Figment, key: &str) -> Result<Option<String>, ConfigError> {
    let Ok(value) = figment.find_value(key) else { return Ok(None) };
    let Text(text) =
        value.deserialize().map_err(|e| ConfigError::invalid(key, e.kind.to_string()))?;
    Ok(Some(text.trim().to_owned()).filter(|t| !t.is_empty()))
}

/// Every (variable, key) pair the environment may set, for documentation.
pub fn env_vars() -> Vec<(String, String)> {
    let stapes = stapes_sections().into_iter().flat_map(|(section, prefix, keys)| {
        keys.into_iter()
            .map(move |k| (format!("{prefix}{}", k.to_uppercase()), format!("{section}.{k}")))
    });
    stapes.chain(incus_readme()).collect()
}

fn stapes_sections() -> [(&'static str, &'static str, Vec<String>); 4] {
    let owned = |keys: &[&str]| keys.iter().map(|&k| k.to_owned()).collect();
    [
        ("server", "STAPES_", owned(ServerConfig::KEYS)),
        ("tls", "STAPES_TLS_", owned(TlsConfig::KEYS)),
        ("redis", "STAPES_REDIS_", owned(RedisConfig::KEYS)),
        ("incus", "STAPES_INCUS_", incus_keys()),
    ]
}

/// The `STAPES_*` variables, above everything else. Without a `tls:`
/// section the three `STAPES_TLS_*` make one together; without a
/// `redis:` section `STAPES_REDIS_URL` makes one.
fn stapes_env(mut figment: Figment, env: &Env) -> Result<Figment, ConfigError> {
    for (section, prefix, keys) in stapes_sections() {
        let vars: Vec<(String, &str)> =
            keys.iter().map(|k| (format!("{prefix}{}", k.to_uppercase()), k.as_str())).collect();
        let (given, missing): (Vec<&str>, Vec<&str>) =
            vars.iter().map(|(v, _)| v.as_str()).partition(|v| set(env, v).is_some());
        let seeds = ["STAPES_REDIS_URL", "STAPES_REDIS_NODES"];
        let (needed, message) = match section {
            "tls" => (
                missing.join(", "),
                "without a tls section in the file, STAPES_TLS_PORT, STAPES_TLS_CERT_FILE and STAPES_TLS_KEY_FILE must be set together",
            ),
            "redis" if !given.iter().any(|v| seeds.contains(v)) => (
                "STAPES_REDIS_URL".to_owned(),
                "without a redis section in the file, STAPES_REDIS_URL enables the bridge",
            ),
            _ => (String::new(), ""),
        };
        if !given.is_empty() && !needed.is_empty() && !on(&figment, section) {
            bail!(section, "{} is set but {needed} is not; {message}", given.join(", "));
        }
        for (var, key) in &vars {
            if let Some(value) = set(env, var) {
                figment = figment.zipmerge(env_layer(var, &format!("{section}.{key}"), value));
            }
        }
    }
    Ok(figment)
}

/// The `tls:` section that Incus's `tls_enabled` makes where there is none.
fn incus_tls() -> Value {
    let tls = [("port", "443"), ("cert_file", "cert.pem"), ("key_file", "key.pem")];
    Dict::from(tls.map(|(key, value)| (key.to_owned(), value.into()))).into()
}

/// Incus's README variables that set keys of other sections, as
/// (variable, key): below `STAPES_*`, and those of `tls` and `redis` only
/// when that section is on.
const INCUS_README_ENV: [(&str, &str); 6] = [
    ("LISTENING_PORT", "server.port"),
    ("LOG_LEVEL", "server.log"),
    ("TLS_PORT", "tls.port"),
    ("CERT_FILE", "tls.cert_file"),
    ("KEY_FILE", "tls.key_file"),
    ("REDIS_MESSAGE_CHANNEL", "redis.incus_channel"),
];

/// `incus:` keys with a variable in Incus's README: the key in upper case.
const INCUS_README_KEYS: &str = "client_broadcasts connection_timeout longpoll_killswitch \
    apns_enabled ios_push_sound gcm_enabled gcm_api_key android_error_queue";

/// Incus's README variables, as (variable, key).
fn incus_readme() -> impl Iterator<Item = (String, String)> {
    let other = INCUS_README_ENV.iter().map(|&(var, key)| (var.to_owned(), key.to_owned()));
    other.chain(
        INCUS_README_KEYS.split_whitespace().map(|k| (k.to_uppercase(), format!("incus.{k}"))),
    )
}

/// Incus's README variables, above the file and below `STAPES_*`.
/// `TLS_ENABLED=true` adds a `tls:` section if there is none (port 443,
/// `cert.pem`, `key.pem`), `false` removes it; `REDIS_PORT_6379_TCP_ADDR`
/// and `_PORT` replace the host and port of `redis.url` unless
/// `STAPES_REDIS_URL` is set. None of them turns the bridge on.
fn incus_env(mut figment: Figment, env: &Env) -> Result<Figment, ConfigError> {
    if let Some(value) = set(env, "TLS_ENABLED") {
        let var = "TLS_ENABLED";
        let on_now =
            bool::read(value).map_err(|m| ConfigError::invalid("tls", m).with_origin(var))?;
        if !on_now {
            figment = figment.merge(env_layer(var, "tls", Empty::None));
        } else if !on(&figment, "tls") {
            figment = figment.merge(env_layer(var, "tls", incus_tls()));
        }
    }
    let redis_on = on(&figment, "redis")
        || set(env, "STAPES_REDIS_URL").is_some()
        || set(env, "STAPES_REDIS_NODES").is_some();
    let (tls_on, url_from_env) = (on(&figment, "tls"), set(env, "STAPES_REDIS_URL").is_some());
    for (var, key) in incus_readme() {
        let Some(value) = set(env, &var) else { continue };
        let value = if var == "LOG_LEVEL" { incus_log_level(value) } else { value.to_owned() };
        if (key.starts_with("tls.") && !tls_on) || (key.starts_with("redis.") && !redis_on) {
            continue;
        }
        figment = figment.merge(env_layer(&var, &key, value));
    }
    for var in ["REDIS_PORT_6379_TCP_ADDR", "REDIS_PORT_6379_TCP_PORT"] {
        let (Some(value), false) = (set(env, var), url_from_env) else { continue };
        let Ok(url) = figment.extract_inner::<String>("redis.url") else { continue };
        let url = url_with(&url, var, value).map_err(|e| e.with_origin(var))?;
        figment = figment.merge(env_layer(var, "redis.url", url));
    }
    Ok(figment)
}

/// Incus logs verbosely only for exactly `debug`.
fn incus_log_level(level: &str) -> String {
    if level.trim() == "debug" { "debug" } else { "info" }.to_owned()
}

/// `url` with its host (`…_ADDR`) or port (`…_PORT`) replaced by `value`.
fn url_with(url: &str, var: &str, value: &str) -> Result<String, ConfigError> {
    let invalid = |message: String| ConfigError::invalid("redis.url", message);
    let mut parsed =
        url::Url::parse(url).map_err(|e| invalid(format!("cannot apply {var} to {url:?}: {e}")))?;
    if !matches!(parsed.scheme(), "redis" | "rediss") {
        return Err(invalid(format!("{var} needs a redis:// URL, got {url:?}")));
    }
    if var.ends_with("_PORT") {
        let port = u16::read(value)
            .map_err(|_| invalid(format!("expected a port from 1 to 65535, got {value:?}")))?;
        parsed
            .set_port(Some(port))
            .map_err(|()| invalid(format!("cannot set the port of {url:?}")))?;
    } else {
        parsed
            .set_host(Some(value.trim()))
            .map_err(|e| invalid(format!("expected a host name or address, got {value:?}: {e}")))?;
    }
    Ok(parsed.into())
}

/// Incus keys of `incus:` that stand for other sections ([`incus_aliases`]),
/// then those that stapes accepts without effect ([`UNSUPPORTED`]).
const ALIASES: &str = "listening_port log_level tls_enabled tls_port cert_file key_file \
    redis_enabled redis_port_6379_tcp_addr redis_port_6379_tcp_port redis_message_channel \
    redis_message_queue";
/// Incus keys accepted without effect: type-checked (`redis_*`), or
/// warned about when set.
const UNSUPPORTED: &str = "redis_activity_consumers redis_connection_pool_size apns_store_url \
    apns_enterprise_url apns_beta_url apns_development_url apns_production_url apns_sandbox_url \
    gcm_api_key";

/// The keys other sections get from the file's Incus keys, below the
/// file: `listening_port` and `log_level` set the server's port and log;
/// `tls_enabled` with its keys makes a `tls:` section and `redis_enabled`
/// with its keys a `redis:` section, each only where the file has none.
fn incus_aliases(file: &Dict) -> Result<Vec<(&'static str, Value)>, ConfigError> {
    let incus = Figment::from(Serialized::defaults(file.clone()));
    let get = |name: &str| text_at(&incus, &format!("incus.{name}"));
    let invalid = |name: &str, message| ConfigError::invalid(format!("incus.{name}"), message);
    let port = |name: &str, value: &str| {
        let why = format!("expected a port from 1 to 65535, got {value:?}");
        u16::read(value).map_err(|_| invalid(name, why))
    };
    let enabled =
        |name: &str| get(name)?.map_or(Ok(false), |v| bool::read(&v).map_err(|m| invalid(name, m)));
    let tls = enabled("tls_enabled")? && !file.contains_key("tls");
    let redis = enabled("redis_enabled")? && !file.contains_key("redis");
    let mut layer = Vec::new();
    if tls {
        layer.push(("tls", incus_tls()));
    }
    if redis {
        let host = get("redis_port_6379_tcp_addr")?.unwrap_or("127.0.0.1".into());
        let redis_port = get("redis_port_6379_tcp_port")?.unwrap_or("6379".into());
        let redis_port = port("redis_port_6379_tcp_port", &redis_port)?;
        layer.push(("redis.url", format!("redis://{}:{redis_port}", host.trim()).into()));
    }
    // Incus's README variables are its keys in upper case; the queue has none.
    let aliases = INCUS_README_ENV.iter().chain(&[("REDIS_MESSAGE_QUEUE", "redis.incus_queue")]);
    let on = |key: &str| (tls || !key.starts_with("tls.")) && (redis || !key.starts_with("redis."));
    for &(var, key) in aliases.filter(|(_, key)| on(key)) {
        let name = var.to_lowercase();
        let Some(value) = get(&name)? else { continue };
        let value = match key {
            "server.port" | "tls.port" => port(&name, &value)?.into(),
            "server.log" => incus_log_level(&value).into(),
            _ => value.into(),
        };
        layer.push((key, value));
    }
    Ok(layer)
}

/// The Incus keys set that have no effect, each with why, for the start-up
/// warning; `redis_activity_consumers` and `redis_connection_pool_size`
/// are only type-checked.
fn unsupported(figment: &Figment) -> Result<Vec<String>, ConfigError> {
    let mut found = Vec::new();
    for name in UNSUPPORTED.split_whitespace() {
        let key = format!("incus.{name}");
        let Some(text) = text_at(figment, &key)? else { continue };
        let why = match name {
            "gcm_api_key" => "the legacy GCM/FCM API is gone; set fcm_service_account_file",
            _ if name.starts_with("apns_") => {
                "the legacy binary gateway is gone; stapes uses APNs HTTP/2"
            }
            _ => {
                usize::read(&text).map_err(|m| ConfigError::invalid(&key, m))?;
                continue;
            }
        };
        found.push(format!("{name} ({why})"));
    }
    Ok(found)
}

/// Refuses a key of `dict` that is not one of `keys`; `prefix` is the
/// dict's path in the file.
pub(crate) fn refuse_unknown<K: AsRef<str>>(
    dict: &Dict,
    keys: &[K],
    prefix: &str,
    file: &str,
) -> Result<(), ConfigError> {
    match dict.keys().find(|k| !keys.iter().any(|known| known.as_ref() == k.as_str())) {
        Some(key) => {
            Err(ConfigError::UnknownKey { file: file.to_owned(), key: format!("{prefix}{key}") })
        }
        None => Ok(()),
    }
}

/// Keys without a default: a section or entry that is there must have them.
fn required(figment: &Figment) -> Result<(), ConfigError> {
    let missing = |value: &Value, keys: &[&str]| {
        keys.iter().copied().find(|k| value.find_ref(k).is_none()).map(str::to_owned)
    };
    // Cluster and sentinel modes may do without a url; validate() checks them.
    let standalone = text_at(figment, "redis.mode")?.is_none_or(|m| m == "standalone");
    let redis: &[&str] = if standalone { &["url"] } else { &[] };
    for (section, keys) in [("tls", &["cert_file", "key_file"][..]), ("redis", redis)] {
        let Ok(value) = figment.find_value(section) else { continue };
        if let Some(key) = missing(&value, keys) {
            bail!(format!("{section}.{key}"), "is required when the {section} section is present");
        }
    }
    let Ok(Value::Array(_, apps)) = figment.find_value("apps") else { return Ok(()) };
    for (index, app) in apps.iter().enumerate().filter(|(_, a)| matches!(a, Value::Dict(..))) {
        if let Some(key) = missing(app, &["id", "key", "secret"]) {
            bail!(app_key(index, &key), "is required");
        }
        let Some(Value::Array(_, hooks)) = app.find_ref("webhooks") else { continue };
        for (n, hook) in hooks.iter().enumerate().filter(|(_, h)| matches!(h, Value::Dict(..))) {
            if missing(hook, &["url"]).is_some() {
                bail!(app_key(index, &format!("webhooks[{n}].url")), "is required");
            }
        }
    }
    Ok(())
}

/// Whether `section` is there (a mapping, not `null`).
fn on(figment: &Figment, section: &str) -> bool {
    matches!(figment.find_value(section), Ok(Value::Dict(..)))
}

/// `var`, unless unset or empty.
fn set<'a>(env: &'a Env, var: &str) -> Option<&'a str> {
    env.get(var).map(String::as_str).filter(|v| !v.is_empty())
}

/// What a variable's source is named, before the variable: figment names
/// each value's source, and a name is all that [`Named`] can set.
const VAR: &str = "environment variable ";

/// A source setting `key` (a dotted path) to `value`, named in errors.
fn layer(name: String, key: &str, value: impl Into<Value>) -> Named<Serialized<Value>> {
    Named::new(name, Serialized::default(key, value.into()))
}

/// The file (or what stands for it), as a source.
fn file_layer(name: &str, dict: Dict) -> Named<Serialized<Dict>> {
    Named::new(name.to_owned(), Serialized::defaults(dict))
}

/// The variable `var`, as a source setting `key` to `value`.
fn env_layer(var: &str, key: &str, value: impl Into<Value>) -> Named<Serialized<Value>> {
    layer(format!("{VAR}{var}"), key, value)
}

/// The variable a value came from, if it came from one.
fn variable(metadata: &Metadata) -> Option<String> {
    metadata.name.strip_prefix(VAR).map(str::to_owned)
}

/// A figment error as a [`ConfigError`]: the path as `apps[1].secret`, and
/// the variable the value came from.
fn from_figment(err: figment2::Error, file: &str) -> ConfigError {
    let key = err.path.iter().fold(String::new(), |key, part| match part.parse::<usize>() {
        Ok(index) => format!("{key}[{index}]"),
        Err(_) if key.is_empty() => part.clone(),
        Err(_) => format!("{key}.{part}"),
    });
    let origin = err.metadata.as_ref().and_then(variable);
    let message = match err.kind {
        Kind::UnknownField(..) => return ConfigError::UnknownKey { file: file.to_owned(), key },
        Kind::Message(message) => message,
        Kind::InvalidType(Actual::Map, expected) => format!("expected {expected}, got a mapping"),
        Kind::InvalidType(Actual::Seq, expected) => format!("expected {expected}, got a list"),
        Kind::InvalidType(_, expected) => format!("expected {expected}, got a single value"),
        kind => kind.to_string(),
    };
    ConfigError::Invalid { key, message, origin }
}

/// Names the variable behind a checked key's value, if there is one.
fn attribute(err: ConfigError, figment: &Figment) -> ConfigError {
    let ConfigError::Invalid { key, origin: None, .. } = &err else { return err };
    let path = key.replace('[', ".").replace(']', "");
    match figment.find_metadata(&path).and_then(variable) {
        Some(var) => err.with_origin(&var),
        None => err,
    }
}

/// A serde-saphyr error as a [`ConfigError`], naming the key on the line it
/// points at. The line is read from the file as written, so that no
/// expanded value, which may be a secret, is shown.
fn yaml_error(text: &str, file: &str, err: &serde_saphyr::Error) -> ConfigError {
    let err = err.without_snippet();
    let line = err.location().and_then(|at| usize::try_from(at.line()).ok()).unwrap_or(0);
    if let serde_saphyr::Error::DuplicateMappingKey { key: Some(key), location: at } = err {
        let message =
            format!("duplicate key \"{key}\" at line {}, column {}", at.line(), at.column());
        return ConfigError::Yaml { file: file.to_owned(), message };
    }
    let rendered = err.to_string();
    let mut message = rendered.strip_prefix("error: ").unwrap_or(&rendered).to_owned();
    if let Some(key) = line.checked_sub(1).and_then(|l| text.lines().nth(l)).and_then(key_on_line) {
        message = format!("{message} (at key \"{key}\")");
    }
    ConfigError::Yaml { file: file.to_owned(), message }
}

/// The mapping key a line starts with, if it looks like `key: value`.
fn key_on_line(line: &str) -> Option<&str> {
    let line = line.trim_start().trim_start_matches("- ").trim_start();
    let (key, _) = line.split_once(':')?;
    let simple = !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    simple.then_some(key)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::{net::IpAddr, time::Duration};

    use super::*;
    use crate::config::{AppConfig, RedisMode};

    pub(crate) const MINIMAL: &str = "apps:\n  - id: \"1\"\n    key: k\n    secret: s\n";

    pub(crate) fn env_of(vars: &[(&str, &str)]) -> Env {
        vars.iter().map(|&(k, v)| (k.to_owned(), v.to_owned())).collect()
    }

    pub(crate) fn load(text: &str, env: &Env) -> Result<Config, ConfigError> {
        load_str(Format::Yaml, text, "config.yml", env)
    }

    /// `text` loaded without variables.
    pub(crate) fn ok(text: &str) -> Config {
        load(text, &Env::new()).expect("loads")
    }

    /// The error loading `text` with `vars`.
    pub(crate) fn err(text: &str, vars: &[(&str, &str)]) -> String {
        match load(text, &env_of(vars)) {
            Ok(config) => panic!("expected an error, got {config:?}"),
            Err(err) => err.to_string(),
        }
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn repo_config_yml() -> (Config, String) {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.yml");
        let text = std::fs::read_to_string(&path).expect("config.yml readable");
        (load_file(&path, &Env::new()).expect("config.yml loads"), text)
    }

    fn assert_server_defaults(s: &ServerConfig) {
        let d = ServerConfig::default();
        assert_eq!((s.host, s.port, s.shards, s.log.as_str()), (d.host, d.port, d.shards, "info"));
        assert_eq!((s.activity_timeout, s.pong_timeout), (d.activity_timeout, d.pong_timeout));
        assert_eq!(
            (s.http_idle_timeout, s.shutdown_grace),
            (d.http_idle_timeout, d.shutdown_grace)
        );
        assert_eq!(
            (s.max_connections, s.max_message_bytes),
            (d.max_connections, d.max_message_bytes)
        );
        assert_eq!(
            (s.max_outbox_bytes, s.max_header_bytes),
            (d.max_outbox_bytes, d.max_header_bytes)
        );
        assert_eq!((s.max_body_bytes, s.allow_missing_protocol), (d.max_body_bytes, true));
        assert_eq!((&s.webhook_ca_file, s.metrics), (&d.webhook_ca_file, d.metrics));
    }

    fn assert_app_defaults(a: &AppConfig) {
        let d = AppConfig::new(&a.id, &a.key, &a.secret);
        assert_eq!(
            (a.enabled, a.client_events, a.only_ssl),
            (d.enabled, d.client_events, d.only_ssl)
        );
        assert_eq!((a.max_connections, a.max_event_bytes), (d.max_connections, d.max_event_bytes));
        assert_eq!(a.max_presence_members, d.max_presence_members);
        assert_eq!(a.max_presence_user_info_bytes, d.max_presence_user_info_bytes);
        assert_eq!(a.max_presence_user_id_chars, d.max_presence_user_id_chars);
        assert_eq!(a.client_event_rate, d.client_event_rate);
        assert_eq!(a.max_channel_name_chars, d.max_channel_name_chars);
        assert_eq!(a.max_event_name_chars, d.max_event_name_chars);
        assert_eq!((a.subscription_count, a.cache_ttl), (d.subscription_count, d.cache_ttl));
        assert_eq!((a.authorized_timeout, &a.webhooks), (d.authorized_timeout, &d.webhooks));
        assert_eq!((a.webhook_delay, a.webhook_batch), (d.webhook_delay, d.webhook_batch));
        assert_eq!(a.webhook_batch_max, d.webhook_batch_max);
    }

    #[test]
    fn repo_config_yml_loads_and_equals_the_defaults() {
        let (config, _) = repo_config_yml();
        assert_server_defaults(&config.server);
        assert!(config.tls.is_none() && config.redis.is_none());
        assert_eq!(config.incus, IncusConfig::default(), "config.yml shows the incus defaults");
        assert_eq!(config.apps.len(), 1);
        let app = &config.apps[0];
        assert_eq!(
            (app.id.as_str(), app.key.as_str(), app.secret.as_str()),
            ("1", "app-key", "app-secret")
        );
        assert_app_defaults(app);
    }

    /// The file documents every key and every variable.
    #[test]
    fn repo_config_yml_sets_every_key() {
        let (_, text) = repo_config_yml();
        for (var, path) in env_vars() {
            assert!(text.contains(&var), "config.yml does not mention {var}");
            let (section, name) = path.split_once('.').expect("section.key");
            if matches!(section, "server" | "incus") && var.starts_with("STAPES_") {
                assert!(text.contains(&format!("\n  {name}: ")), "config.yml lacks {path}");
            }
        }
    }

    /// Each variable is named after its key: `STAPES_<KEY>` for `server:`,
    /// `STAPES_<SECTION>_<KEY>` for the others, and Incus's README names
    /// are the key's in upper case.
    #[test]
    fn variables_are_named_after_their_key() {
        let vars = env_vars();
        for (var, path) in &vars {
            let upper = path.replace("server.", "").replace('.', "_").to_uppercase();
            let readme = INCUS_README_ENV.iter().any(|(v, _)| v == var);
            assert!(
                readme || *var == format!("STAPES_{upper}") || *var == upper["INCUS_".len()..],
                "{var}"
            );
        }
        for key in [
            "apns_enabled",
            "apns_store_topic",
            "apns_enterprise_key_file",
            "apns_beta_key_id",
            "apns_development_team_id",
            "fcm_enabled",
            "pushormessage_connected",
        ] {
            let var = format!("STAPES_INCUS_{}", key.to_uppercase());
            assert!(vars.iter().any(|(v, _)| *v == var), "{var}");
        }
    }

    #[test]
    fn minimal_file_gets_defaults() {
        let config = ok(MINIMAL);
        assert_server_defaults(&config.server);
        assert!(config.tls.is_none());
        assert_app_defaults(&config.apps[0]);
    }

    #[test]
    fn every_key_is_read() {
        let c = ok(
            "server:\n  host: 0.0.0.0\n  port: 7001\n  shards: 3\n  activity_timeout_secs: 60\n  \
            pong_timeout_secs: 10\n  max_connections: 5\n  max_message_bytes: 2048\n  max_outbox_bytes: 4096\n  \
            max_header_bytes: 2048\n  max_body_bytes: 20000\n  http_idle_timeout_secs: 7\n  shutdown_grace_secs: 0\n  \
            allow_missing_protocol: false\n  log: stapes=debug\ntls:\n  port: 7002\n  cert_file: /c.pem\n  \
            key_file: /k.pem\napps:\n  - id: 42\n    key: k\n    secret: s\n    enabled: false\n    \
            client_events: true\n    only_ssl: true\n    max_connections: 9\n    max_event_bytes: 11\n    \
            max_presence_members: 12\n    max_presence_user_info_bytes: 13\n    max_presence_user_id_chars: 14\n    \
            client_event_rate: 15\n    max_channel_name_chars: 16\n    max_event_name_chars: 17\n    \
            subscription_count: true\n    cache_ttl_secs: 18\n    authorized_timeout_secs: 19\n",
        );
        let s = &c.server;
        assert_eq!(
            (s.host, s.port, s.shards),
            ("0.0.0.0".parse::<IpAddr>().expect("ip"), 7001, Some(3))
        );
        assert_eq!(
            (s.activity_timeout, s.pong_timeout, s.max_connections),
            (secs(60), secs(10), 5)
        );
        assert_eq!(
            (s.max_message_bytes, s.max_outbox_bytes, s.max_header_bytes),
            (2048, 4096, 2048)
        );
        assert_eq!(
            (s.max_body_bytes, s.http_idle_timeout, s.shutdown_grace),
            (20000, secs(7), secs(0))
        );
        assert_eq!((s.allow_missing_protocol, s.log.as_str()), (false, "stapes=debug"));
        let tls = c.tls.as_ref().expect("tls");
        assert_eq!(
            (tls.port, tls.cert_file.to_str(), tls.key_file.to_str()),
            (7002, Some("/c.pem"), Some("/k.pem"))
        );
        let a = &c.apps[0];
        assert_eq!(a.id, "42");
        assert!(!a.enabled && a.client_events && a.only_ssl && a.subscription_count);
        assert_eq!(
            (a.max_connections, a.max_event_bytes, a.max_presence_members),
            (Some(9), 11, 12)
        );
        assert_eq!((a.max_presence_user_info_bytes, a.max_presence_user_id_chars), (13, 14));
        assert_eq!(
            (a.client_event_rate, a.max_channel_name_chars, a.max_event_name_chars),
            (15, 16, 17)
        );
        assert_eq!((a.cache_ttl, a.authorized_timeout), (secs(18), Some(secs(19))));
    }

    #[test]
    fn webhooks_are_read_with_their_filters() {
        use crate::core::{HookKind, HookKinds};
        let app = &ok(&format!(
            "{MINIMAL}    webhook_delay_ms: 250\n    webhook_batch_ms: 40\n    webhook_batch_max: 7\n    \
             webhooks:\n      - url: http://127.0.0.1:9000/hooks\n      \
             - url: http://localhost/x\n        event_types: [channel_vacated, client_event]\n"
        ))
        .apps[0];
        let ms = Duration::from_millis;
        assert_eq!(
            (app.webhook_delay, app.webhook_batch, app.webhook_batch_max),
            (ms(250), ms(40), 7)
        );
        assert_eq!(app.webhooks.len(), 2);
        assert_eq!(app.webhooks[0].url, "http://127.0.0.1:9000/hooks");
        assert_eq!(app.webhooks[0].event_types, HookKinds::ALL);
        let second: HookKinds =
            [HookKind::ChannelVacated, HookKind::ClientEvent].into_iter().collect();
        assert_eq!(app.webhooks[1].event_types, second);
        assert_eq!(app.webhook_kinds(), HookKinds::ALL);
    }

    #[test]
    fn https_webhooks_and_their_ca_file_are_read() {
        let text = format!(
            "server:\n  webhook_ca_file: /etc/private-ca.pem\n{MINIMAL}    webhooks:\n      \
             - url: https://hooks.example.com/pusher\n"
        );
        let config = ok(&text);
        assert_eq!(config.server.webhook_ca_file, Some("/etc/private-ca.pem".into()));
        assert_eq!(config.apps[0].webhooks[0].url, "https://hooks.example.com/pusher");
        let env = env_of(&[("STAPES_WEBHOOK_CA_FILE", "/run/ca.pem")]);
        let config = load(&text, &env).expect("loads");
        assert_eq!(config.server.webhook_ca_file, Some("/run/ca.pem".into()));
    }

    #[test]
    fn webhook_errors_name_their_key() {
        let hooks = |h: &str| format!("{MINIMAL}    webhooks:\n{h}");
        let cases = [
            (
                "      - url: http://127.0.0.1/\n        event_types: [channel_occupied, channel_exists]\n",
                "apps[0].webhooks[0].event_types: unknown event type \"channel_exists\"; expected one of \
              channel_occupied, channel_vacated, member_added, member_removed, client_event, cache_miss, \
              subscription_count",
            ),
            (
                "      - url: http://127.0.0.1/\n      - url: \"not a url\"\n",
                "apps[0].webhooks[1].url: not a URL (relative URL without a base): \"not a url\"",
            ),
            (
                "      - url: ftp://127.0.0.1/\n",
                "apps[0].webhooks[0].url: expected an http:// or https:// URL, got scheme \"ftp\"",
            ),
            ("      - event_types: [cache_miss]\n", "apps[0].webhooks[0].url: is required"),
            (
                "      - url: http://127.0.0.1/\n        event_types: []\n",
                "apps[0].webhooks[0].event_types: names no event type; leave the key out to receive all of them",
            ),
            (
                "      - url: http://127.0.0.1/\n        evnt_types: [cache_miss]\n",
                "config.yml: unknown key \"apps[0].webhooks[0].evnt_types\"",
            ),
        ];
        for (h, message) in cases {
            assert_eq!(err(&hooks(h), &[]), message);
        }
        assert_eq!(
            err(&format!("{MINIMAL}    webhook_delay_ms: 60001\n"), &[]),
            "apps[0].webhook_delay_ms: must be from 0 to 60000, got 60001"
        );
    }

    #[test]
    fn shards_zero_means_one_per_core() {
        assert_eq!(ok(&format!("server:\n  shards: 0\n{MINIMAL}")).server.shards, None);
        let text = format!("server:\n  shards: 4\n{MINIMAL}");
        assert_eq!(
            load(&text, &env_of(&[("STAPES_SHARDS", "0")])).expect("loads").server.shards,
            None
        );
    }

    #[test]
    fn integer_and_string_app_ids() {
        let c = ok("apps:\n  - {id: 7, key: a, secret: s}\n  - {id: \"8\", key: b, secret: s}\n  \
                    - {id: 0123, key: c, secret: s}\n");
        let ids: Vec<&str> = c.apps.iter().map(|a| a.id.as_str()).collect();
        assert_eq!(ids, ["7", "8", "0123"]);
    }

    #[test]
    fn null_means_default() {
        let config = ok(&format!("server:\n  port: ~\n  log:\ntls: null\n{MINIMAL}"));
        assert_eq!((config.server.port, config.server.log.as_str()), (6001, "info"));
        assert!(config.tls.is_none());
    }

    #[test]
    fn tls_port_defaults_and_files_are_required() {
        let tls = ok(&format!("tls:\n  cert_file: c\n  key_file: k\n{MINIMAL}")).tls.expect("tls");
        assert_eq!(tls.port, 6002);
        let text = format!("tls:\n  cert_file: c\n{MINIMAL}");
        assert_eq!(err(&text, &[]), "tls.key_file: is required when the tls section is present");
        let text = format!("tls:\n  cert_file: \"\"\n  key_file: k\n{MINIMAL}");
        assert_eq!(err(&text, &[]), "tls.cert_file: must not be empty");
    }

    #[test]
    fn unknown_keys_name_their_path() {
        for (text, key) in [
            ("server:\n  prot: 1\n", "server.prot"),
            ("sever:\n  port: 1\n", "sever"),
            ("tls:\n  cert: x\n", "tls.cert"),
            (
                "apps:\n  - {id: 1, key: a, secret: s}\n  - {id: 2, key: b, secret: s, secrte: x}\n",
                "apps[1].secrte",
            ),
            ("incus:\n  nope: 1\n", "incus.nope"),
        ] {
            assert_eq!(err(text, &[]), format!("config.yml: unknown key \"{key}\""));
        }
    }

    #[test]
    fn type_errors_name_their_key() {
        for (text, message) in [
            (
                "server:\n  port: abc\n",
                r#"server.port: expected an integer from 0 to 65535, got "abc""#,
            ),
            (
                "server:\n  port: 70000\n",
                r#"server.port: expected an integer from 0 to 65535, got "70000""#,
            ),
            ("tls:\n  port: 0\n", r#"tls.port: expected an integer from 1 to 65535, got "0""#),
            (
                "server:\n  max_connections: -1\n",
                r#"server.max_connections: expected an integer of at least 0, got "-1""#,
            ),
            (
                "server:\n  pong_timeout_secs: 1.5\n",
                r#"server.pong_timeout_secs: expected an integer of at least 0, got "1.5""#,
            ),
            (
                "server:\n  host: localhost\n",
                r#"server.host: expected an IP address such as 127.0.0.1, 0.0.0.0 or ::, got "localhost""#,
            ),
            (
                "server:\n  allow_missing_protocol: maybe\n",
                r#"server.allow_missing_protocol: expected true or false, got "maybe""#,
            ),
        ] {
            assert_eq!(err(&format!("{text}{MINIMAL}"), &[]), message);
        }
        assert_eq!(
            err("apps:\n  - {id: 1, key: a, secret: s, client_event_rate: 5000000000}\n", &[]),
            r#"apps[0].client_event_rate: expected an integer from 0 to 4294967295, got "5000000000""#
        );
        assert_eq!(
            err("apps:\n  - {id: 1, key: a, secret: s, only_ssl: 1}\n", &[]),
            r#"apps[0].only_ssl: expected true or false, got "1""#
        );
    }

    #[test]
    fn missing_required_app_keys() {
        assert_eq!(err("apps:\n  - {id: 1, key: a}\n", &[]), "apps[0].secret: is required");
        assert_eq!(err("apps:\n  - {id: ~, key: a, secret: s}\n", &[]), "apps[0].id: is required");
    }

    #[test]
    fn apps_are_required() {
        for text in ["", "# nothing\n", "server:\n  port: 6001\n", "apps: []\n", "apps:\n"] {
            assert_eq!(err(text, &[]), "apps: at least one app is required", "{text:?}");
        }
    }

    /// YAML errors point at the line (and name the key on it); a section
    /// or value of the wrong shape names its key.
    #[test]
    fn malformed_yaml_and_wrong_section_shapes() {
        for (text, expected) in [
            (
                "server: [\n".to_owned(),
                "config.yml: unclosed bracket '[' at line 1, column 9 (at key \"server\")",
            ),
            (
                format!("server: 5\n{MINIMAL}"),
                "server: expected a mapping for the server section, got a single value",
            ),
            (
                format!("server:\n  port: {{a: 1}}\n{MINIMAL}"),
                "server.port: expected a single value, not a mapping or a list",
            ),
            ("apps:\n  id: 1\n".to_owned(), "apps: expected a sequence, got a mapping"),
            (
                format!("{MINIMAL}    key: again\n"),
                "config.yml: duplicate key \"key\" at line 5, column 5",
            ),
        ] {
            assert_eq!(err(&text, &[]), expected, "{text:?}");
        }
    }

    #[test]
    fn unreadable_file() {
        let err =
            load_file(Path::new("/nonexistent/stapes.yml"), &Env::new()).expect_err("missing file");
        assert!(err.to_string().starts_with("cannot read /nonexistent/stapes.yml: "), "{err}");
    }

    #[test]
    fn variables_expand_before_parsing() {
        let text = "server:\n  port: ${PORT}\n  log: ${LOG:-warn}\n\
                    apps:\n  - {id: 1, key: \"${KEY}\", secret: \"${SECRET:-dflt}\"}\n";
        let c = load(text, &env_of(&[("PORT", "7000"), ("KEY", "from-env")])).expect("loads");
        assert_eq!((c.server.port, c.server.log.as_str()), (7000, "warn"));
        assert_eq!((c.apps[0].key.as_str(), c.apps[0].secret.as_str()), ("from-env", "dflt"));
        let e = err(&format!("server:\n  port: ${{NOPE}}\n{MINIMAL}"), &[]);
        assert!(e.starts_with("config.yml:2: environment variable NOPE is not set"), "{e}");
    }

    #[test]
    fn expansion_of_each_form() {
        let env = env_of(&[("A", "alpha"), ("EMPTY", ""), ("MULTI", "x\ny")]);
        let ok = |text: &str| expand(text, "f.yml", &env).expect("expands");
        let err = |text: &str| expand(text, "f.yml", &env).expect_err("fails").to_string();
        assert_eq!(ok("k: ${A}\n"), "k: alpha\n");
        assert_eq!(ok("k: ${A:-other}"), "k: alpha");
        assert_eq!(ok("k: ${UNSET:-dflt}"), "k: dflt");
        assert_eq!(ok("k: ${UNSET:-}"), "k: ");
        assert_eq!(ok("k: ${EMPTY:-dflt}"), "k: dflt", "empty counts as unset for :-");
        assert_eq!(ok("k: ${EMPTY}"), "k: ", "empty is still set");
        assert_eq!(ok("k: ${A}-${A}"), "k: alpha-alpha");
        assert_eq!(ok("k: \"pre${A}post\""), "k: \"prealphapost\"");
        // Other dollars and comment lines are left alone.
        assert_eq!(ok("k: a$b$ $"), "k: a$b$ $");
        assert_eq!(ok("k: $${A}"), "k: ${A}");
        assert_eq!(ok("  # see ${UNSET}\nk: 1\n"), "  # see ${UNSET}\nk: 1\n");
        assert_eq!(ok("k: ${A:-${B}"), "k: alpha", "default ends at the first }}");
        assert_eq!(
            err("a: 1\nk: ${MISSING}\n"),
            "f.yml:2: environment variable MISSING is not set \
             (write ${MISSING:-default} to give it a default)"
        );
        assert!(err("k: ${A").starts_with("f.yml:1: unterminated ${"));
        assert!(err("k: ${}").contains("invalid variable name \"\""));
        assert!(err("k: ${1X}").contains("invalid variable name \"1X\""));
        assert!(err("k: ${A B}").contains("invalid variable name \"A B\""));
        assert_eq!(err("k: ${MULTI}"), "f.yml:1: the value of MULTI contains a line break");
    }

    #[test]
    fn env_overrides_beat_file_and_defaults() {
        let text = format!("server:\n  port: 7000\n  log: debug\n{MINIMAL}");
        let env = env_of(&[
            ("STAPES_PORT", "8000"),
            ("STAPES_HOST", "::"),
            ("STAPES_ACTIVITY_TIMEOUT_SECS", "99"),
            ("STAPES_ALLOW_MISSING_PROTOCOL", "false"),
            ("STAPES_LOG", ""),
        ]);
        let s = load(&text, &env).expect("loads").server;
        assert_eq!(s.port, 8000, "env beats file");
        assert_eq!(s.host, "::".parse::<IpAddr>().expect("ip"), "env beats default");
        assert_eq!((s.activity_timeout, s.allow_missing_protocol), (secs(99), false));
        assert_eq!(s.log, "debug", "empty variable counts as unset");
        assert_eq!(s.max_connections, 100_000, "default stays");
    }

    #[test]
    fn every_override_applies() {
        let vars: Vec<(String, String)> = env_vars()
            .into_iter()
            .filter(|(v, k)| v.starts_with("STAPES_") && !k.starts_with("incus."))
            .collect();
        let values: Vec<(&str, &str)> = vars
            .iter()
            .map(|(var, path)| {
                let value = match path.as_str() {
                    "server.host" => "0.0.0.0",
                    "server.log" => "trace",
                    "server.allow_missing_protocol"
                    | "server.metrics"
                    | "server.defer_accept"
                    | "server.batch_scheduling" => "false",
                    "server.console" => "true",
                    "server.port" => "7000",
                    "tls.port" => "7443",
                    "tls.cert_file" => "/c",
                    "tls.key_file" => "/k",
                    "server.max_body_bytes" => "99999",
                    "server.shards" => "8",
                    "redis.url" => "redis://127.0.0.1:7379/2",
                    "redis.pusher_channel" => "p",
                    "redis.incus_channel" => "i",
                    "redis.incus_queue" => "q",
                    "redis.instance" => "me",
                    "redis.mode" => "standalone",
                    "redis.nodes" => "a:1, b:2",
                    "redis.tls" => "true",
                    "redis.tls_ca_file" => {
                        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/localhost.crt")
                    }
                    _ => "2222",
                };
                (var.as_str(), value)
            })
            .collect();
        let config = load(MINIMAL, &env_of(&values)).expect("loads");
        let s = &config.server;
        assert_eq!(
            (s.shards, s.activity_timeout, s.pong_timeout),
            (Some(8), secs(2222), secs(2222))
        );
        assert_eq!(
            (s.max_connections, s.max_message_bytes, s.max_outbox_bytes),
            (2222, 2222, 2222)
        );
        assert_eq!(
            (s.max_header_bytes, s.max_body_bytes, s.http_idle_timeout),
            (2222, 99999, secs(2222))
        );
        assert_eq!((s.shutdown_grace, s.log.as_str(), s.metrics), (secs(2222), "trace", false));
        assert!(s.console, "STAPES_CONSOLE applies");
        assert!(!s.defer_accept, "STAPES_DEFER_ACCEPT applies");
        assert!(!s.batch_scheduling, "STAPES_BATCH_SCHEDULING applies");
        let tls = config.tls.expect("tls from env");
        assert_eq!(
            (tls.port, tls.cert_file.to_str(), tls.key_file.to_str()),
            (7443, Some("/c"), Some("/k"))
        );
        let expected = RedisConfig {
            url: "redis://127.0.0.1:7379/2".into(),
            pusher_channel: "p".into(),
            incus_channel: "i".into(),
            incus_queue: "q".into(),
            instance: Some("me".into()),
            reconnect_max: Duration::from_millis(2222),
            mode: super::super::RedisMode::Standalone,
            nodes: vec!["a:1".into(), "b:2".into()],
            sentinel_master: Some("2222".into()),
            password: Some("2222".into()),
            tls: Some(true),
            tls_ca_file: Some(
                concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/localhost.crt").into(),
            ),
        };
        assert_eq!(config.redis.expect("redis from env"), expected);
    }

    #[test]
    fn redis_is_off_by_default_and_configurable() {
        assert!(ok(MINIMAL).redis.is_none());
        assert!(repo_config_yml().0.redis.is_none());
        assert!(embedded_default(&Env::new()).expect("loads").redis.is_none());
        let redis =
            ok(&format!("redis:\n  url: redis://127.0.0.1:6390\n{MINIMAL}")).redis.expect("redis");
        assert_eq!(redis, RedisConfig::new("redis://127.0.0.1:6390"));
        assert_eq!(redis.pusher_channel, "stapes:pusher");
        assert_eq!(
            (redis.incus_channel.as_str(), redis.incus_queue.as_str()),
            ("Incus", "Incus_Queue")
        );
        assert_eq!(redis.reconnect_max, secs(10));
        let text = format!("redis:\n  incus_queue: q\n{MINIMAL}");
        assert_eq!(err(&text, &[]), "redis.url: is required when the redis section is present");
        let text = format!("redis:\n  url: redis://h\n  queue: q\n{MINIMAL}");
        assert_eq!(err(&text, &[]), "config.yml: unknown key \"redis.queue\"");
    }

    #[test]
    fn port_zero_and_write_timeout() {
        let config = ok(&format!("server:\n  port: 0\n  write_timeout_secs: 5\n{MINIMAL}"));
        assert_eq!((config.server.port, config.server.write_timeout), (0, secs(5)));
        assert_eq!(ok(MINIMAL).server.write_timeout, secs(30));
        let vars = [("STAPES_WRITE_TIMEOUT_SECS", "0")];
        assert_eq!(
            err(MINIMAL, &vars),
            "server.write_timeout_secs: must be from 1 to 3600 seconds, got 0 \
             (from STAPES_WRITE_TIMEOUT_SECS)"
        );
        let text = format!("server:\n  write_timeout_secs: 3601\n{MINIMAL}");
        assert_eq!(
            err(&text, &[]),
            "server.write_timeout_secs: must be from 1 to 3600 seconds, got 3601"
        );
    }

    #[test]
    fn redis_modes_nodes_and_tls() {
        let redis = |section: &str, vars: &[(&str, &str)]| {
            load(&format!("redis:\n{section}{MINIMAL}"), &env_of(vars))
                .map(|c| c.redis.expect("on"))
        };
        let fail = |section: &str, vars: &[(&str, &str)]| match redis(section, vars) {
            Ok(r) => panic!("expected an error, got {r:?}"),
            Err(e) => e.to_string(),
        };
        let r = redis("  url: redis://h:1\n", &[]).expect("loads");
        assert_eq!(
            (r.mode, r.nodes.len(), r.tls, r.uses_tls()),
            (RedisMode::Standalone, 0, None, false)
        );
        assert!(redis("  url: rediss://h:1\n", &[]).expect("loads").uses_tls());
        let r = redis("  mode: cluster\n  nodes: [a:7000, \"b:7001\"]\n  tls: true\n", &[])
            .expect("cluster without url");
        assert_eq!(
            (r.mode, r.nodes.clone(), r.uses_tls()),
            (RedisMode::Cluster, vec!["a:7000".into(), "b:7001".into()], true)
        );
        let r = redis(
            "  url: redis://h\n",
            &[
                ("STAPES_REDIS_MODE", "sentinel"),
                ("STAPES_REDIS_NODES", "s1:26379,s2:26379"),
                ("STAPES_REDIS_SENTINEL_MASTER", "mymaster"),
            ],
        )
        .expect("sentinel");
        assert_eq!(
            (r.mode, r.nodes.len(), r.sentinel_master.as_deref()),
            (RedisMode::Sentinel, 2, Some("mymaster"))
        );
        let env_only = load(
            MINIMAL,
            &env_of(&[("STAPES_REDIS_MODE", "cluster"), ("STAPES_REDIS_NODES", "a:1")]),
        );
        assert_eq!(
            env_only.expect("nodes alone enable redis").redis.expect("on").mode,
            RedisMode::Cluster
        );
        for (section, vars, message) in [
            (
                "  mode: ring\n  url: redis://h\n",
                &[][..],
                r#"redis.mode: expected standalone, cluster or sentinel, got "ring""#,
            ),
            (
                "  mode: cluster\n",
                &[],
                "redis.nodes: is required with mode cluster (the seed nodes), unless url is set",
            ),
            (
                "  mode: cluster\n  url: redis://h:1/3\n",
                &[],
                "redis.url: names a database other than 0, which Redis Cluster does not have",
            ),
            (
                "  url: redis://h\n",
                &[("STAPES_REDIS_MODE", "cluster"), ("STAPES_REDIS_URL", "redis://h/2")],
                "redis.url: names a database other than 0, which Redis Cluster does not have (from STAPES_REDIS_URL)",
            ),
            (
                "  mode: sentinel\n  sentinel_master: m\n",
                &[],
                "redis.nodes: is required with mode sentinel (the sentinels' host:port)",
            ),
            (
                "  mode: sentinel\n  nodes: [s:26379]\n",
                &[],
                "redis.sentinel_master: is required with mode sentinel (the master's name)",
            ),
            ("  mode: cluster\n  nodes: [a]\n", &[], r#"redis.nodes: expected host:port, got "a""#),
            (
                "  url: redis://h\n",
                &[("STAPES_REDIS_NODES", "a:1,:2")],
                r#"redis.nodes: expected host:port, got ":2" (from STAPES_REDIS_NODES)"#,
            ),
            (
                "  url: rediss://h\n  tls: false\n",
                &[],
                "redis.tls: is false but redis.url is rediss://, which is TLS",
            ),
            (
                "  url: redis://h\n  tls: maybe\n",
                &[],
                r#"redis.tls: expected true or false, got "maybe""#,
            ),
            (
                "  url: redis://h\n  tls_ca_file: /nonexistent/ca.pem\n",
                &[],
                "redis.tls_ca_file: cannot read /nonexistent/ca.pem: ",
            ),
            (
                "  url: redis://h\n",
                &[("STAPES_REDIS_TLS_CA_FILE", concat!(env!("CARGO_MANIFEST_DIR"), "/config.yml"))],
                "redis.tls_ca_file: ",
            ),
        ] {
            let e = fail(section, vars);
            assert!(e.starts_with(message), "{e}\n  does not start with\n{message}");
        }
        let e = fail(
            "  url: redis://h\n",
            &[("STAPES_REDIS_TLS_CA_FILE", concat!(env!("CARGO_MANIFEST_DIR"), "/config.yml"))],
        );
        assert!(e.ends_with("holds no CERTIFICATE block (from STAPES_REDIS_TLS_CA_FILE)"), "{e}");
        let ca = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/localhost.crt");
        let r = redis(&format!("  url: rediss://h\n  tls_ca_file: {ca}\n"), &[]).expect("a PEM CA");
        assert_eq!(r.tls_ca_file.as_deref(), Some(Path::new(ca)));
    }

    #[test]
    fn redis_env_enables_and_overrides() {
        let redis =
            |text: &str, vars: &[(&str, &str)]| load(text, &env_of(vars)).expect("loads").redis;
        let env = env_of(&[("STAPES_REDIS_URL", "redis://127.0.0.1:6390")]);
        let from_env = embedded_default(&env).expect("loads").redis.expect("redis from env");
        assert_eq!(from_env.url, "redis://127.0.0.1:6390");
        let e = err(MINIMAL, &[("STAPES_REDIS_INCUS_QUEUE", "q")]);
        assert!(
            e.starts_with("redis: STAPES_REDIS_INCUS_QUEUE is set but STAPES_REDIS_URL is not"),
            "{e}"
        );
        // Incus's own variable applies only with the bridge on, below STAPES_*.
        assert!(redis(MINIMAL, &[("REDIS_MESSAGE_CHANNEL", "Chan")]).is_none());
        let text = format!("redis:\n  url: redis://h\n  incus_channel: File\n{MINIMAL}");
        assert_eq!(
            redis(&text, &[("REDIS_MESSAGE_CHANNEL", "Chan")]).expect("on").incus_channel,
            "Chan"
        );
        let vars = [("REDIS_MESSAGE_CHANNEL", "Chan"), ("STAPES_REDIS_INCUS_CHANNEL", "Mine")];
        assert_eq!(redis(&text, &vars).expect("on").incus_channel, "Mine");
        assert_eq!(
            err(&text, &[("STAPES_REDIS_RECONNECT_MAX_MS", "1")]),
            "redis.reconnect_max_ms: expected 100 to 600000 ms, got 1 (from STAPES_REDIS_RECONNECT_MAX_MS)"
        );
        // Incus's Docker-link address variables move redis.url, keeping the rest.
        let text = format!("redis:\n  url: redis://:pw@old:1/3\n{MINIMAL}");
        let vars = [("REDIS_PORT_6379_TCP_ADDR", "10.1.2.3"), ("REDIS_PORT_6379_TCP_PORT", "6380")];
        assert_eq!(redis(&text, &vars).expect("on").url, "redis://:pw@10.1.2.3:6380/3");
        assert!(redis(MINIMAL, &vars).is_none(), "they never enable it");
        let vars =
            [("REDIS_PORT_6379_TCP_ADDR", "10.1.2.3"), ("STAPES_REDIS_URL", "redis://env:7/0")];
        assert_eq!(redis(&text, &vars).expect("on").url, "redis://env:7/0");
        assert_eq!(
            err(&text, &[("REDIS_PORT_6379_TCP_PORT", "http")]),
            "redis.url: expected a port from 1 to 65535, got \"http\" (from REDIS_PORT_6379_TCP_PORT)"
        );
        let e = err(
            &format!("redis:\n  url: unix:///tmp/r.sock\n{MINIMAL}"),
            &[("REDIS_PORT_6379_TCP_ADDR", "h")],
        );
        assert!(e.contains("needs a redis:// URL"), "{e}");
    }

    #[test]
    fn malformed_override_names_variable() {
        assert_eq!(
            err(MINIMAL, &[("STAPES_PORT", "abc")]),
            r#"server.port: expected an integer from 0 to 65535, got "abc" (from STAPES_PORT)"#
        );
        assert_eq!(
            err(MINIMAL, &[("STAPES_MAX_MESSAGE_BYTES", "10")]),
            "server.max_message_bytes: must be at least 1024, got 10 (from STAPES_MAX_MESSAGE_BYTES)"
        );
        assert_eq!(
            err(MINIMAL, &[("STAPES_MAX_MESSAGE_BYTES", "4294967296")]),
            "server.max_message_bytes: must be at most 4294967295, got 4294967296 \
             (from STAPES_MAX_MESSAGE_BYTES)"
        );
    }

    #[test]
    fn tls_env_needs_all_three_without_a_section_and_overrides_one() {
        let e = err(MINIMAL, &[("STAPES_TLS_PORT", "7443")]);
        assert!(
            e.starts_with(
                "tls: STAPES_TLS_PORT is set but STAPES_TLS_CERT_FILE, STAPES_TLS_KEY_FILE is not"
            ),
            "{e}"
        );
        let text = format!("tls:\n  port: 7443\n  cert_file: /a\n  key_file: /b\n{MINIMAL}");
        let tls = load(&text, &env_of(&[("STAPES_TLS_CERT_FILE", "/env.pem")]))
            .expect("loads")
            .tls
            .expect("tls");
        assert_eq!(
            (tls.port, tls.cert_file.to_str(), tls.key_file.to_str()),
            (7443, Some("/env.pem"), Some("/b"))
        );
        assert_eq!(
            err(&text, &[("STAPES_TLS_PORT", "6001")]),
            "tls.port: must differ from server.port, both are 6001 (from STAPES_TLS_PORT)"
        );
    }

    #[test]
    fn embedded_default_with_and_without_env() {
        let config = embedded_default(&Env::new()).expect("valid");
        assert_server_defaults(&config.server);
        assert_eq!(config.server.host, IpAddr::from([127, 0, 0, 1]));
        assert!(config.tls.is_none());
        let app = &config.apps[0];
        assert_eq!(
            (app.id.as_str(), app.key.as_str(), app.secret.as_str()),
            ("1", "app-key", "app-secret")
        );
        assert!(!app.client_events);
        assert_app_defaults(app);
        assert_eq!(config.incus.push, PushConfig::default());
        let env = env_of(&[
            ("STAPES_APP_ID", "123"),
            ("STAPES_APP_KEY", "k"),
            ("STAPES_APP_SECRET", "s"),
            ("STAPES_APP_CLIENT_EVENTS", "true"),
            ("STAPES_HOST", "0.0.0.0"),
            ("STAPES_PORT", "9000"),
        ]);
        let config = embedded_default(&env).expect("valid");
        let app = &config.apps[0];
        assert_eq!(
            (app.id.as_str(), app.key.as_str(), app.secret.as_str(), app.client_events),
            ("123", "k", "s", true)
        );
        assert_eq!((config.server.port, config.server.host), (9000, IpAddr::from([0, 0, 0, 0])));
        let e = |vars| embedded_default(&env_of(vars)).expect_err("invalid").to_string();
        assert_eq!(
            e(&[("STAPES_APP_ID", "abc")]),
            r#"apps[0].id: must be digits only, got "abc" (from STAPES_APP_ID)"#
        );
        assert_eq!(
            e(&[("STAPES_APP_CLIENT_EVENTS", "yes")]),
            r#"apps[0].client_events: expected true or false, got "yes" (from STAPES_APP_CLIENT_EVENTS)"#
        );
    }

    #[test]
    fn incus_section_defaults_and_every_key() {
        let i = ok(MINIMAL).incus;
        assert_eq!(i, IncusConfig::default());
        assert!(i.client_broadcasts);
        assert_eq!(i.connection_timeout, secs(60));
        let i = ok(&format!(
            "incus:\n  client_broadcasts: false\n  connection_timeout: 5\n  longpoll_killswitch: ks\n  \
             mailbox_messages: 7\n  mailbox_ttl_secs: 8\n  presence_window_secs: 9\n  auth_timeout_secs: 10\n  \
             ping_interval_secs: 11\n  client_commands_per_sec: 12\n  client_commands_burst: 13\n  \
             max_lp_sessions: 14\n{MINIMAL}"
        ))
        .incus;
        assert!(!i.client_broadcasts);
        assert_eq!(
            (i.connection_timeout, i.longpoll_killswitch.as_str(), i.mailbox_messages),
            (secs(5), "ks", 7)
        );
        assert_eq!(
            (i.mailbox_ttl, i.presence_window, i.auth_timeout),
            (secs(8), secs(9), secs(10))
        );
        assert_eq!(
            (i.ping_interval, i.client_commands_per_sec, i.client_commands_burst),
            (secs(11), 12, 13)
        );
        assert_eq!(i.max_lp_sessions, 14);
    }

    #[test]
    fn incus_keys_of_an_incus_config_carry_over() {
        let c = ok(&format!(
            "incus:\n  listening_port: \"4000\"\n  log_level: debug\n  redis_enabled: true\n  \
             redis_port_6379_tcp_addr: localhost\n  redis_port_6379_tcp_port: 6380\n  \
             redis_message_channel: Chan\n  redis_message_queue: Q\n  tls_enabled: true\n  \
             tls_port: \"8443\"\n  cert_file: c.pem\n  key_file: k.pem\n  datadog_enabled: false\n  \
             datadog_host: 127.0.0.1\n  redis_activity_consumers: 8\n  redis_connection_pool_size: 20\n  \
             apns_enabled: false\n  apns_store_cert: a.pem\n  apns_store_private_key: b.pem\n  \
             apns_store_url: gateway.push.apple.com:2195\n  apns_production_url: x:1\n  \
             apns_sandbox_url: \"\"\n  ios_push_sound: ding.aiff\n  gcm_enabled: false\n  \
             gcm_api_key: k\n  android_error_queue: q\n{MINIMAL}"
        ));
        assert_eq!((c.server.port, c.server.log.as_str()), (4000, "debug"));
        let redis = c.redis.expect("redis from redis_enabled");
        assert_eq!(redis.url, "redis://localhost:6380");
        assert_eq!((redis.incus_channel.as_str(), redis.incus_queue.as_str()), ("Chan", "Q"));
        let tls = c.tls.expect("tls from tls_enabled");
        assert_eq!(
            (tls.port, tls.cert_file.to_str(), tls.key_file.to_str()),
            (8443, Some("c.pem"), Some("k.pem"))
        );
        // Push keys apply (both platforms off here, so the files are not
        // read); the legacy gateway URLs and the GCM key are warned about.
        assert_eq!((&c.incus.push.apns, &c.incus.push.fcm), (&None, &None));
        assert_eq!(
            (c.incus.push.ios_push_sound.as_str(), c.incus.push.android_error_queue.as_str()),
            ("ding.aiff", "q")
        );
        assert_eq!(
            c.incus.unsupported,
            [
                "apns_store_url (the legacy binary gateway is gone; stapes uses APNs HTTP/2)",
                "apns_production_url (the legacy binary gateway is gone; stapes uses APNs HTTP/2)",
                "gcm_api_key (the legacy GCM/FCM API is gone; set fcm_service_account_file)",
            ]
        );
        // The stapes sections win over the aliases.
        let c = ok(&format!(
            "server:\n  port: 7000\nincus:\n  listening_port: 4000\n  log_level: error\n{MINIMAL}"
        ));
        assert_eq!((c.server.port, c.server.log.as_str()), (7000, "info"));
    }

    #[test]
    fn incus_errors_name_their_key() {
        for (section, expected) in [
            ("incus:\n  connection_timeout: 0\n", "incus.connection_timeout: must be from 1"),
            (
                "incus:\n  client_broadcasts: yes\n",
                "incus.client_broadcasts: expected true or false",
            ),
            ("incus:\n  mailbox_messages: -1\n", "incus.mailbox_messages: expected an integer"),
            ("incus:\n  redis_enabled: 1\n", "incus.redis_enabled: expected true or false"),
            ("incus:\n  listening_port: 0\n", "incus.listening_port: expected a port"),
            ("incus:\n  redis_activity_consumers: x\n", "incus.redis_activity_consumers"),
            ("incus:\n  nope: 1\n", "incus.nope"),
            (
                "incus:\n  client_commands_per_sec: 0\n",
                "incus.client_commands_per_sec: must be from 1",
            ),
            ("incus:\n  client_commands_burst: 0\n", "incus.client_commands_burst: must be from 1"),
            ("incus:\n  max_lp_sessions: 0\n", "incus.max_lp_sessions: must be from 1"),
        ] {
            let e = err(&format!("{section}{MINIMAL}"), &[]);
            assert!(e.contains(expected), "{section}: {e}");
        }
    }

    #[test]
    fn incus_environment_over_file_over_default() {
        let text = format!("incus:\n  client_broadcasts: true\n  connection_timeout: 5\n{MINIMAL}");
        let env = env_of(&[
            ("CLIENT_BROADCASTS", "false"),
            ("CONNECTION_TIMEOUT", "7"),
            ("STAPES_INCUS_CONNECTION_TIMEOUT", "9"),
            ("LISTENING_PORT", "4000"),
            ("LOG_LEVEL", "debug"),
        ]);
        let c = load(&text, &env).expect("loads");
        assert!(!c.incus.client_broadcasts);
        assert_eq!(c.incus.connection_timeout, secs(9), "STAPES_ wins");
        assert_eq!((c.server.port, c.server.log.as_str()), (4000, "debug"));
        let env = env_of(&[("LISTENING_PORT", "4000"), ("STAPES_PORT", "4001")]);
        assert_eq!(load(MINIMAL, &env).expect("loads").server.port, 4001);
        let env = env_of(&[("TLS_ENABLED", "true"), ("TLS_PORT", "8443")]);
        let tls = load(MINIMAL, &env).expect("loads").tls.expect("tls");
        assert_eq!((tls.port, tls.cert_file.to_str()), (8443, Some("cert.pem")));
        assert_eq!(
            err(MINIMAL, &[("CONNECTION_TIMEOUT", "0")]),
            "incus.connection_timeout: must be from 1 to 86400 seconds, got 0 (from CONNECTION_TIMEOUT)"
        );
        assert!(
            err(MINIMAL, &[("CLIENT_BROADCASTS", "maybe")]).ends_with("(from CLIENT_BROADCASTS)")
        );
    }

    #[test]
    fn metrics_keys_have_defaults_and_name_themselves_in_errors() {
        let c = ok(MINIMAL);
        assert!(c.server.metrics && !c.incus.datadog_enabled);
        let i = &c.incus;
        assert_eq!(
            (i.datadog_host.as_str(), i.datadog_port, i.datadog_interval),
            ("127.0.0.1", 8125, secs(10))
        );
        let c = ok(&format!(
            "server:\n  metrics: false\nincus:\n  datadog_enabled: true\n  datadog_host: statsd.local\n  \
             datadog_port: 9125\n  datadog_interval_secs: 2\n{MINIMAL}"
        ));
        assert!(!c.server.metrics && c.incus.datadog_enabled && c.incus.unsupported.is_empty());
        let i = &c.incus;
        assert_eq!(
            (i.datadog_host.as_str(), i.datadog_port, i.datadog_interval),
            ("statsd.local", 9125, secs(2))
        );
        for (text, message) in [
            ("server:\n  metrics: yes\n", r#"server.metrics: expected true or false, got "yes""#),
            (
                "incus:\n  datadog_port: 0\n",
                r#"incus.datadog_port: expected an integer from 1 to 65535, got "0""#,
            ),
            (
                "incus:\n  datadog_enabled: true\n  datadog_interval_secs: 0\n",
                "incus.datadog_interval_secs: must be from 1 to 86400 seconds, got 0",
            ),
            (
                "incus:\n  datadog_enabled: true\n  datadog_host: \"\"\n",
                "incus.datadog_host: must not be empty when datadog_enabled is true",
            ),
        ] {
            assert_eq!(err(&format!("{text}{MINIMAL}"), &[]), message);
        }
        let env = env_of(&[
            ("STAPES_METRICS", "false"),
            ("STAPES_INCUS_DATADOG_ENABLED", "true"),
            ("STAPES_INCUS_DATADOG_PORT", "9999"),
        ]);
        let c = load(MINIMAL, &env).expect("loads");
        assert!(!c.server.metrics && c.incus.datadog_enabled);
        assert_eq!(c.incus.datadog_port, 9999);
        assert!(
            err(MINIMAL, &[("STAPES_INCUS_DATADOG_PORT", "x")])
                .ends_with("(from STAPES_INCUS_DATADOG_PORT)")
        );
    }
}
