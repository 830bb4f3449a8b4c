//! IPÊ's config file (github.com/dimiro1/ipe), read as it stands into
//! stapes's keys, so that an IPÊ deployment changes only its binary.
//!
//! The file's keys become stapes's ([`convert`]); errors about them are
//! given back under IPÊ's names ([`ipe_key`]). `$VAR` and `${VAR}` expand
//! as IPÊ expands them, Go's `os.ExpandEnv`: an unset variable is empty,
//! not an error ([`expand`]). The Redis variables of IPÊ deployments set
//! the redis section ([`env()`]). Keys stapes has and IPÊ lacks keep their
//! defaults, and still take their `STAPES_*` variables.

use figment2::{
    Figment,
    value::{Dict, Value},
};

use super::{
    ConfigError,
    de::Text,
    load::{Env, refuse_unknown},
};

/// Whether `text` is an IPÊ config: a top-level `host`, `ssl` or
/// `profiling`, or an app with `app_id` or `user_events`. No stapes file
/// has any of them (stapes has `server`, `tls`, and `id`, `client_events`).
pub(crate) fn detect(text: &str) -> bool {
    text.lines().any(|line| {
        let top = !line.starts_with([' ', '\t', '-', '#']);
        let key = line.trim_start().trim_start_matches("- ").trim_start();
        let key = key.split_once(':').map_or("", |(k, _)| k.trim_matches(['"', '\'']));
        (top && matches!(key, "host" | "ssl" | "profiling"))
            || (!top && matches!(key, "app_id" | "user_events"))
    })
}

/// `text` with `$NAME` and `${NAME}` replaced by the variable's value, or
/// nothing if it is unset, as Go's `os.ExpandEnv` does: `$` before
/// anything else stays, and a malformed `${` or `${}` is dropped.
pub(crate) fn expand(text: &str, env: &Env) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(dollar) = rest.find('$') {
        out.push_str(&rest[..dollar]);
        let after = &rest[dollar + 1..];
        let (name, used) = go_name(after);
        match name {
            Some(name) => out.push_str(env.get(name).map_or("", String::as_str)),
            None if used == 0 => out.push('$'),
            None => {}
        }
        rest = &after[used..];
    }
    out.push_str(rest);
    out
}

/// The variable name at the start of `s` (just after a `$`), and how many
/// bytes the reference takes, by Go's rules.
fn go_name(s: &str) -> (Option<&str>, usize) {
    let special = |b: u8| b"*#$@!?-".contains(&b) || b.is_ascii_digit();
    let bytes = s.as_bytes();
    match bytes.first() {
        Some(b'{') if bytes.len() > 2 && special(bytes[1]) && bytes[2] == b'}' => {
            (Some(&s[1..2]), 3)
        }
        Some(b'{') => match s.find('}') {
            Some(1) => (None, 2),
            Some(end) => (Some(&s[1..end]), end + 1),
            None => (None, 1),
        },
        Some(&b) if special(b) => (Some(&s[..1]), 1),
        _ => {
            let n = bytes.iter().take_while(|b| b.is_ascii_alphanumeric() || **b == b'_').count();
            ((n > 0).then(|| &s[..n]), n)
        }
    }
}

/// IPÊ's keys of each mapping, for unknown-key errors.
const TOP: &[&str] = &["host", "profiling", "ssl", "apps"];
const SSL: &[&str] = &["enabled", "host", "key_file", "cert_file"];
const APP: &[&str] =
    &["name", "enabled", "only_ssl", "key", "secret", "app_id", "user_events", "webhooks"];
const HOOK: &[&str] = &["enabled", "url"];

/// The stapes key tree for IPÊ's `file`, and the notes for the start-up
/// log about what IPÊ had and stapes ignores.
///
/// `host` (a Go listen address, `[host]:port`) sets `server.host` and
/// `server.port`; `ssl` with `enabled: true` makes the `tls` section on
/// `ssl.host`'s port; each app's keys map one to one, except `name`
/// (dropped), `app_id` (`id`), `user_events` (`client_events`) and
/// `webhooks` (`{enabled, url}`, one URL or none). An IPÊ key left out
/// takes IPÊ's default, Go's zero value: an app without `enabled` is off.
pub(crate) fn convert(file: &Dict, name: &str) -> Result<(Dict, Vec<String>), ConfigError> {
    refuse_unknown(file, TOP, "", name)?;
    let mut notes = Vec::new();
    if flag(file, "profiling", "profiling")? {
        notes.push("profiling (IPÊ's pprof endpoints; stapes serves GET /metrics)".to_owned());
    }
    let (host, port) = listen(text(file, "host", "host")?.as_deref().unwrap_or(""), "host", 80)?;
    let mut out = Dict::new();
    let server = Dict::from([("host".into(), host.clone().into()), ("port".into(), port.into())]);
    out.insert("server".into(), server.into());
    if let Some(ssl) = section(file, "ssl")? {
        refuse_unknown(ssl, SSL, "ssl.", name)?;
        if flag(ssl, "enabled", "ssl.enabled")? {
            let (ssl_host, port) =
                listen(text(ssl, "host", "ssl.host")?.as_deref().unwrap_or(""), "ssl.host", 443)?;
            if ssl_host != host {
                bail!(
                    "ssl.host",
                    "must listen on the same address as host ({host}): stapes serves TLS \
                         on a second port of it, got {ssl_host}"
                );
            }
            let mut tls = Dict::from([("port".into(), port.into())]);
            for key in ["cert_file", "key_file"] {
                if let Some(value) = ssl.get(key) {
                    tls.insert(key.into(), value.clone());
                }
            }
            out.insert("tls".into(), tls.into());
        }
    }
    let apps = match file.get("apps") {
        None => Vec::new(),
        Some(Value::Array(_, apps)) => apps.clone(),
        Some(_) => bail!("apps", "expected a list of apps"),
    };
    let mut converted = Vec::new();
    for (index, app) in apps.iter().enumerate() {
        let at = format!("apps[{index}]");
        let Value::Dict(_, app) = app else {
            bail!(at, "expected a mapping for an app");
        };
        refuse_unknown(app, APP, &format!("{at}."), name)?;
        // Go's zero values for IPÊ's own keys; stapes's defaults for the rest.
        let mut keys = Dict::from([
            ("enabled".into(), false.into()),
            ("only_ssl".into(), false.into()),
            ("client_events".into(), false.into()),
        ]);
        for (from, to) in [
            ("enabled", "enabled"),
            ("only_ssl", "only_ssl"),
            ("key", "key"),
            ("secret", "secret"),
            ("app_id", "id"),
            ("user_events", "client_events"),
        ] {
            if let Some(value) = app.get(from) {
                keys.insert(to.into(), value.clone());
            }
        }
        let mut hooks = Vec::new();
        if let Some(hook) = section(app, "webhooks").map_err(|e| rename(e, &at))? {
            refuse_unknown(hook, HOOK, &format!("{at}.webhooks."), name)?;
            if flag(hook, "enabled", &format!("{at}.webhooks.enabled"))? {
                let url = hook.get("url").cloned().unwrap_or_else(|| "".into());
                hooks.push(Value::from(Dict::from([("url".into(), url)])));
            }
        }
        keys.insert("webhooks".into(), hooks.into());
        converted.push(Value::from(keys));
    }
    out.insert("apps".into(), converted.into());
    Ok((out, notes))
}

/// `section` of `dict`, if it is a mapping (IPÊ's `ssl`, `webhooks`).
fn section<'a>(dict: &'a Dict, section: &str) -> Result<Option<&'a Dict>, ConfigError> {
    match dict.get(section) {
        None => Ok(None),
        Some(Value::Dict(_, inner)) => Ok(Some(inner)),
        Some(_) => Err(ConfigError::invalid(section, "expected a mapping")),
    }
}

fn rename(err: ConfigError, prefix: &str) -> ConfigError {
    match err {
        ConfigError::Invalid { key, message, origin } => {
            ConfigError::Invalid { key: format!("{prefix}.{key}"), message, origin }
        }
        other => other,
    }
}

/// The text at `dict[key]`, if set; `path` names it in errors.
fn text(dict: &Dict, key: &str, path: &str) -> Result<Option<String>, ConfigError> {
    let Some(value) = dict.get(key) else { return Ok(None) };
    let Text(text) =
        value.deserialize().map_err(|e| ConfigError::invalid(path, e.kind.to_string()))?;
    Ok(Some(text))
}

/// A boolean as IPÊ's YAML reads it; unset is false.
fn flag(dict: &Dict, key: &str, path: &str) -> Result<bool, ConfigError> {
    match text(dict, key, path)?.as_deref().map(str::trim) {
        None => Ok(false),
        Some("true") => Ok(true),
        Some("false") => Ok(false),
        Some(other) => {
            Err(ConfigError::invalid(path, format!("expected true or false, got {other:?}")))
        }
    }
}

/// A Go listen address, `[host]:port`, as an IP address and a port. An
/// empty host is every interface (0.0.0.0: IPv6 needs `[::]:port`);
/// `localhost` is 127.0.0.1; an empty address is Go's default, port
/// `default_port` (80 for HTTP, 443 for TLS) on every interface.
fn listen(addr: &str, key: &str, default_port: u16) -> Result<(String, u16), ConfigError> {
    let bad = || {
        ConfigError::invalid(
            key,
            format!(
                "expected [address]:port such as \":8080\" or \"127.0.0.1:8080\", got {addr:?}"
            ),
        )
    };
    let addr = addr.trim();
    if addr.is_empty() {
        return Ok(("0.0.0.0".to_owned(), default_port));
    }
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    let port = port.parse::<u16>().map_err(|_| bad())?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let ip = match host {
        "" => "0.0.0.0".to_owned(),
        "localhost" => "127.0.0.1".to_owned(),
        host => host.parse::<std::net::IpAddr>().map_err(|_| bad())?.to_string(),
    };
    Ok((ip, port))
}

/// Under an IPÊ file: the IPÊ variables, below `STAPES_*`, as (variable,
/// key). [`env()`] reads them; the README's "Coming from IPÊ" lists them.
pub const IPE_ENV: [(&str, &str); 8] = [
    ("REDIS_HOST", "redis.url"),
    ("REDIS_PORT", "redis.url"),
    ("REDIS_DB", "redis.url"),
    ("REDIS_PASSWORD", "redis.password"),
    ("REDIS_CLUSTER_MODE", "redis.mode"),
    ("REDIS_ADDRS", "redis.nodes"),
    ("REDIS_TLS_ENABLED", "redis.tls"),
    ("IPE_INSTANCE_ID", "redis.instance"),
];

/// The IPÊ variables as layers of `figment`. `REDIS_HOST` or `REDIS_ADDRS`
/// turns Redis on; without either, there is no Redis (`IPE_INSTANCE_ID`,
/// which only names this instance, is then ignored) and another Redis
/// variable is an error naming it.
pub(crate) fn env(
    mut figment: Figment,
    env: &Env,
    layer: impl Fn(&str, &str, Value) -> Figment,
) -> Result<Figment, ConfigError> {
    let set = |var: &str| env.get(var).map(|v| v.trim()).filter(|v| !v.is_empty());
    let (host, addrs) = (set("REDIS_HOST"), set("REDIS_ADDRS"));
    if host.is_none() && addrs.is_none() {
        let stray = "REDIS_PORT REDIS_DB REDIS_PASSWORD REDIS_CLUSTER_MODE REDIS_TLS_ENABLED";
        if let Some(var) = stray.split(' ').find(|v| set(v).is_some()) {
            let why = "one of them turns Redis on";
            bail!("redis", "{var} is set but neither REDIS_HOST nor REDIS_ADDRS is; {why}");
        }
        return Ok(figment);
    }
    let invalid =
        |key: &str, var: &str, message: String| ConfigError::invalid(key, message).with_origin(var);
    if let Some(host) = host {
        let port = set("REDIS_PORT").unwrap_or("6379");
        let why = || format!("expected a port from 1 to 65535, got {port:?}");
        let port = port.parse::<u16>().ok().filter(|&p| p != 0);
        let port = port.ok_or_else(|| invalid("redis.url", "REDIS_PORT", why()))?;
        let db = set("REDIS_DB").unwrap_or("0");
        let db = db.parse::<u32>().map_err(|_| {
            invalid("redis.url", "REDIS_DB", format!("expected a database number, got {db:?}"))
        })?;
        let bracket = host.contains(':') && !host.starts_with('[');
        let host = if bracket { format!("[{host}]") } else { host.to_owned() };
        let vars =
            ["REDIS_HOST", "REDIS_PORT", "REDIS_DB"].into_iter().filter(|v| set(v).is_some());
        let source = vars.collect::<Vec<_>>().join(", ");
        let url = format!("redis://{host}:{port}/{db}");
        figment = figment.merge(layer(&source, "redis.url", url.into()));
    }
    for (var, key) in [("REDIS_CLUSTER_MODE", "redis.mode"), ("REDIS_TLS_ENABLED", "redis.tls")] {
        let Some(text) = set(var) else { continue };
        let why = || invalid(key, var, format!("expected true or false, got {text:?}"));
        let on = go_bool(text).ok_or_else(why)?;
        let value = match key {
            "redis.mode" => Value::from(if on { "cluster" } else { "standalone" }),
            _ => on.into(),
        };
        figment = figment.merge(layer(var, key, value));
    }
    for (var, key) in [
        ("REDIS_ADDRS", "redis.nodes"),
        ("REDIS_PASSWORD", "redis.password"),
        ("IPE_INSTANCE_ID", "redis.instance"),
    ] {
        if let Some(value) = set(var) {
            figment = figment.merge(layer(var, key, value.into()));
        }
    }
    Ok(figment)
}

/// A boolean as Go's `strconv.ParseBool` reads it.
fn go_bool(text: &str) -> Option<bool> {
    match text {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// An error about a stapes key that came from an IPÊ key, under the IPÊ
/// key's name; keys set by a variable keep theirs.
pub(crate) fn ipe_key(err: ConfigError) -> ConfigError {
    let ConfigError::Invalid { key, message, origin: None } = err else { return err };
    let key = match key.as_str() {
        "server.host" | "server.port" => "host".to_owned(),
        "tls.port" => "ssl.host".to_owned(),
        "tls.cert_file" | "tls.key_file" => key.replacen("tls.", "ssl.", 1),
        _ => match key.split_once("].") {
            Some((app, field)) if app.starts_with("apps[") => {
                let field = match field {
                    "id" => "app_id".to_owned(),
                    "client_events" => "user_events".to_owned(),
                    f => f.replacen("webhooks[0].", "webhooks.", 1),
                };
                format!("{app}].{field}")
            }
            _ => key,
        },
    };
    ConfigError::Invalid { key, message, origin: None }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load::tests::env_of;

    /// IPÊ's README sample, verbatim. Where its keys and the variables
    /// land, and the errors naming them, are in `tests/ipe.rs`.
    const SAMPLE: &str = include_str!("../../tests/fixtures/ipe-readme.yml");

    #[test]
    fn detects_ipe_files_only() {
        assert!(detect(SAMPLE));
        assert!(detect("apps:\n  - app_id: \"1\"\n"));
        assert!(!detect(include_str!("../../config.yml")));
        assert!(!detect("server:\n  host: 127.0.0.1\napps:\n  - id: \"1\"\n"));
    }

    #[test]
    fn expands_as_go_does() {
        let env = env_of(&[("A", "x"), ("B_2", "y")]);
        for (text, out) in [
            ("${A}-$A-$B_2.${B_2}", "x-x-y.y"),
            ("${UNSET}|$UNSET|", "||"),
            ("cost: $ 5, $", "cost: $ 5, $"),
            ("a${}b ${A", "ab A"),
            ("${A:-d}", ""),
            ("$1$$", ""),
        ] {
            assert_eq!(expand(text, &env), out, "{text}");
        }
    }
}
