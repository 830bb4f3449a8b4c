//! Where a [`Config`] comes from: a YAML file, or the embedded default.
//!
//! Both paths end the same way: environment overrides
//! ([`ENV_OVERRIDES`](super::ENV_OVERRIDES)), then the push keys are
//! resolved (credentials paired with builds, files read), then
//! [`validate()`]. Errors that these find in a value set from the
//! environment name the variable too.

use std::{path::Path, sync::Arc};

use super::{
    AppConfig, Config, ConfigError, IncusConfig, ServerConfig,
    env::{
        EMBEDDED_APP_ENV, Origins, apply_incus_overrides, apply_incus_readme_env, apply_overrides,
        apply_redis_overrides, expand, lookup,
    },
    file::{self, set_app},
    push::PushKeys,
    validate::validate,
};

/// Loads, expands, overrides and validates the YAML config at `path`.
///
/// `env` looks up environment variables; `main` passes
/// `|k| std::env::var(k).ok()`, tests pass a fixed table.
///
/// # Errors
///
/// A [`ConfigError`] naming the file, variable or key path: unreadable file,
/// unset `${VAR}`, malformed YAML, unknown key, ill-typed value, malformed
/// override, or a failed [`validate()`] check.
pub fn load_file(path: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
    let name = path.display().to_string();
    load_str(&text, &name, env)
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
pub fn embedded_default(env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
    let mut origins = Origins::new();
    let mut app = AppConfig::new("", "", "");
    for &(var, path, default) in EMBEDDED_APP_ENV {
        let name = path.rsplit('.').next().unwrap_or(path);
        let value = match lookup(env, var) {
            Some(value) => {
                origins.push((path.to_owned(), var));
                value
            }
            None => default.to_owned(),
        };
        set_app(&mut app, 0, name, &value).map_err(|err| err.with_origin(var))?;
    }
    let config = Config {
        server: ServerConfig::default(),
        tls: None,
        apps: vec![Arc::new(app)],
        redis: None,
        incus: IncusConfig::default(),
    };
    finish(config, PushKeys::default(), env, origins)
}

/// [`load_file`] on text already read; `name` stands for the file in errors.
pub(crate) fn load_str(
    text: &str,
    name: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let expanded = expand(text, name, env)?;
    let raw = file::parse(&expanded, text, name)?;
    let (config, push) = file::to_config(raw)?;
    finish(config, push, env, Origins::new())
}

/// Applies the environment, resolves the push keys and validates.
fn finish(
    mut config: Config,
    mut push: PushKeys,
    env: &dyn Fn(&str) -> Option<String>,
    mut origins: Origins,
) -> Result<Config, ConfigError> {
    apply_incus_readme_env(
        &mut config.server,
        &mut config.tls,
        &mut config.incus,
        &mut push,
        env,
        &mut origins,
    )?;
    apply_overrides(&mut config.server, &mut config.tls, env, &mut origins)?;
    apply_redis_overrides(&mut config.redis, env, &mut origins)?;
    apply_incus_overrides(&mut config.incus, &mut push, env, &mut origins)?;
    push.resolve(&mut config.incus.push).map_err(|err| attribute(err, &origins))?;
    validate(&config).map_err(|err| attribute(err, &origins))?;
    Ok(config)
}

/// Names the environment variable behind a validation error's key, if any.
fn attribute(err: ConfigError, origins: &Origins) -> ConfigError {
    let ConfigError::Invalid { key, .. } = &err else { return err };
    match origins.iter().find(|(path, _)| path == key) {
        Some(&(_, var)) => err.with_origin(var),
        None => err,
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, net::IpAddr, time::Duration};

    use super::*;
    use crate::config::{ENV_OVERRIDES, RedisConfig, TlsConfig};

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: HashMap<String, String> =
            vars.iter().map(|&(k, v)| (k.to_owned(), v.to_owned())).collect();
        move |k| vars.get(k).cloned()
    }

    fn load(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        load_str(text, "config.yml", env)
    }

    fn load_err(text: &str, env: &dyn Fn(&str) -> Option<String>) -> String {
        match load(text, env) {
            Ok(config) => panic!("expected an error, got {config:?}"),
            Err(err) => err.to_string(),
        }
    }

    const MINIMAL: &str = "apps:\n  - id: \"1\"\n    key: k\n    secret: s\n";

    fn assert_server_defaults(server: &ServerConfig) {
        let d = ServerConfig::default();
        assert_eq!(server.host, d.host);
        assert_eq!(server.port, d.port);
        assert_eq!(server.shards, d.shards);
        assert_eq!(server.activity_timeout, d.activity_timeout);
        assert_eq!(server.pong_timeout, d.pong_timeout);
        assert_eq!(server.max_connections, d.max_connections);
        assert_eq!(server.max_message_bytes, d.max_message_bytes);
        assert_eq!(server.max_outbox_bytes, d.max_outbox_bytes);
        assert_eq!(server.max_header_bytes, d.max_header_bytes);
        assert_eq!(server.max_body_bytes, d.max_body_bytes);
        assert_eq!(server.http_idle_timeout, d.http_idle_timeout);
        assert_eq!(server.shutdown_grace, d.shutdown_grace);
        assert_eq!(server.allow_missing_protocol, d.allow_missing_protocol);
        assert_eq!(server.log, d.log);
        assert_eq!(server.webhook_ca_file, d.webhook_ca_file);
        assert_eq!(server.metrics, d.metrics);
    }

    fn assert_app_defaults(app: &AppConfig) {
        let d = AppConfig::new(&app.id, &app.key, &app.secret);
        assert_eq!(app.enabled, d.enabled);
        assert_eq!(app.client_events, d.client_events);
        assert_eq!(app.only_ssl, d.only_ssl);
        assert_eq!(app.max_connections, d.max_connections);
        assert_eq!(app.max_event_bytes, d.max_event_bytes);
        assert_eq!(app.max_presence_members, d.max_presence_members);
        assert_eq!(app.max_presence_user_info_bytes, d.max_presence_user_info_bytes);
        assert_eq!(app.max_presence_user_id_chars, d.max_presence_user_id_chars);
        assert_eq!(app.client_event_rate, d.client_event_rate);
        assert_eq!(app.max_channel_name_chars, d.max_channel_name_chars);
        assert_eq!(app.max_event_name_chars, d.max_event_name_chars);
        assert_eq!(app.subscription_count, d.subscription_count);
        assert_eq!(app.cache_ttl, d.cache_ttl);
        assert_eq!(app.authorized_timeout, d.authorized_timeout);
        assert_eq!(app.webhooks, d.webhooks);
        assert_eq!(app.webhook_delay, d.webhook_delay);
        assert_eq!(app.webhook_batch, d.webhook_batch);
        assert_eq!(app.webhook_batch_max, d.webhook_batch_max);
    }

    #[test]
    fn webhooks_are_read_with_their_filters() {
        use crate::core::{HookKind, HookKinds};
        let text = format!(
            "{MINIMAL}    webhook_delay_ms: 250\n    webhook_batch_ms: 40\n    webhook_batch_max: 7\n    \
             webhooks:\n      - url: http://127.0.0.1:9000/hooks\n      \
             - url: http://localhost/x\n        event_types: [channel_vacated, client_event]\n"
        );
        let config = load(&text, &no_env).expect("loads");
        let app = &config.apps[0];
        assert_eq!(app.webhook_delay, Duration::from_millis(250));
        assert_eq!(app.webhook_batch, Duration::from_millis(40));
        assert_eq!(app.webhook_batch_max, 7);
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
        let config = load(&text, &no_env).expect("loads");
        assert_eq!(config.server.webhook_ca_file, Some("/etc/private-ca.pem".into()));
        assert_eq!(config.apps[0].webhooks[0].url, "https://hooks.example.com/pusher");
        let env = |var: &str| (var == "STAPES_WEBHOOK_CA_FILE").then(|| "/run/ca.pem".to_owned());
        let config = load(&text, &env).expect("loads");
        assert_eq!(config.server.webhook_ca_file, Some("/run/ca.pem".into()));
    }

    #[test]
    fn webhook_errors_name_their_key() {
        let cases = [
            (
                "      - url: http://127.0.0.1/\n        event_types: [channel_occupied, channel_exists]\n",
                "apps[0].webhooks[0].event_types: unknown event type \"channel_exists\"; expected \
                 one of channel_occupied, channel_vacated, member_added, member_removed, \
                 client_event, cache_miss, subscription_count",
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
                "apps[0].webhooks[0].event_types: names no event type; leave the key out to \
                 receive all of them",
            ),
            (
                "      - url: http://127.0.0.1/\n        evnt_types: [cache_miss]\n",
                "config.yml: unknown key \"apps[].webhooks[].evnt_types\"",
            ),
        ];
        for (hooks, message) in cases {
            let text = format!("{MINIMAL}    webhooks:\n{hooks}");
            assert_eq!(load_err(&text, &no_env), message);
        }
        let text = format!("{MINIMAL}    webhook_delay_ms: 60001\n");
        assert_eq!(
            load_err(&text, &no_env),
            "apps[0].webhook_delay_ms: must be from 0 to 60000, got 60001"
        );
    }

    #[test]
    fn repo_config_yml_loads_and_equals_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.yml");
        let config = load_file(&path, &no_env).expect("config.yml loads");
        assert_server_defaults(&config.server);
        assert!(config.tls.is_none());
        assert_eq!(config.incus, IncusConfig::default(), "config.yml shows the incus defaults");
        assert_eq!(config.apps.len(), 1);
        let app = &config.apps[0];
        assert_eq!(
            (app.id.as_str(), app.key.as_str(), app.secret.as_str()),
            ("1", "app-key", "app-secret")
        );
        assert_app_defaults(app);
    }

    #[test]
    fn repo_config_yml_sets_every_key() {
        // The file documents every key, so each must appear uncommented.
        let text =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config.yml"))
                .expect("config.yml readable");
        for (_, path) in ENV_OVERRIDES.iter().filter(|(_, p)| p.starts_with("server.")) {
            let name = path.trim_start_matches("server.");
            assert!(text.contains(&format!("\n  {name}: ")), "config.yml lacks {path}");
        }
        for (var, _) in ENV_OVERRIDES {
            assert!(text.contains(var), "config.yml does not mention {var}");
        }
        for (var, path) in crate::config::INCUS_SECTION_ENV {
            assert!(text.contains(var), "config.yml does not mention {var}");
            let name = path.trim_start_matches("incus.");
            assert!(text.contains(&format!("\n  {name}: ")), "config.yml lacks {path}");
        }
    }

    #[test]
    fn minimal_file_gets_defaults() {
        let config = load(MINIMAL, &no_env).expect("loads");
        assert_server_defaults(&config.server);
        assert!(config.tls.is_none());
        assert_app_defaults(&config.apps[0]);
    }

    #[test]
    fn every_key_is_read() {
        let text = "\
server:
  host: 0.0.0.0
  port: 7001
  shards: 3
  activity_timeout_secs: 60
  pong_timeout_secs: 10
  max_connections: 5
  max_message_bytes: 2048
  max_outbox_bytes: 4096
  max_header_bytes: 2048
  max_body_bytes: 20000
  http_idle_timeout_secs: 7
  shutdown_grace_secs: 0
  allow_missing_protocol: false
  log: stapes=debug
tls:
  port: 7002
  cert_file: /c.pem
  key_file: /k.pem
apps:
  - id: 42
    key: k
    secret: s
    enabled: false
    client_events: true
    only_ssl: true
    max_connections: 9
    max_event_bytes: 11
    max_presence_members: 12
    max_presence_user_info_bytes: 13
    max_presence_user_id_chars: 14
    client_event_rate: 15
    max_channel_name_chars: 16
    max_event_name_chars: 17
    subscription_count: true
    cache_ttl_secs: 18
    authorized_timeout_secs: 19
";
        let c = load(text, &no_env).expect("loads");
        let s = &c.server;
        assert_eq!(s.host, "0.0.0.0".parse::<IpAddr>().expect("ip"));
        assert_eq!(s.port, 7001);
        assert_eq!(s.shards, Some(3));
        assert_eq!(s.activity_timeout, Duration::from_secs(60));
        assert_eq!(s.pong_timeout, Duration::from_secs(10));
        assert_eq!(s.max_connections, 5);
        assert_eq!(s.max_message_bytes, 2048);
        assert_eq!(s.max_outbox_bytes, 4096);
        assert_eq!(s.max_header_bytes, 2048);
        assert_eq!(s.max_body_bytes, 20000);
        assert_eq!(s.http_idle_timeout, Duration::from_secs(7));
        assert_eq!(s.shutdown_grace, Duration::ZERO);
        assert!(!s.allow_missing_protocol);
        assert_eq!(s.log, "stapes=debug");
        let tls = c.tls.as_ref().expect("tls");
        assert_eq!(tls.port, 7002);
        assert_eq!(tls.cert_file, Path::new("/c.pem"));
        assert_eq!(tls.key_file, Path::new("/k.pem"));
        let a = &c.apps[0];
        assert_eq!(a.id, "42");
        assert!(!a.enabled && a.client_events && a.only_ssl);
        assert_eq!(a.max_connections, Some(9));
        assert_eq!(a.max_event_bytes, 11);
        assert_eq!(a.max_presence_members, 12);
        assert_eq!(a.max_presence_user_info_bytes, 13);
        assert_eq!(a.max_presence_user_id_chars, 14);
        assert_eq!(a.client_event_rate, 15);
        assert_eq!(a.max_channel_name_chars, 16);
        assert_eq!(a.max_event_name_chars, 17);
        assert!(a.subscription_count);
        assert_eq!(a.cache_ttl, Duration::from_secs(18));
        assert_eq!(a.authorized_timeout, Some(Duration::from_secs(19)));
    }

    #[test]
    fn shards_zero_means_one_per_core() {
        let config = load(&format!("server:\n  shards: 0\n{MINIMAL}"), &no_env).expect("loads");
        assert_eq!(config.server.shards, None);
        let env = env_of(&[("STAPES_SHARDS", "0")]);
        let text = format!("server:\n  shards: 4\n{MINIMAL}");
        assert_eq!(load(&text, &env).expect("loads").server.shards, None);
    }

    #[test]
    fn integer_and_string_app_ids() {
        let text = "apps:\n  - {id: 7, key: a, secret: s}\n  - {id: \"8\", key: b, secret: s}\n  - {id: 0123, key: c, secret: s}\n";
        let config = load(text, &no_env).expect("loads");
        assert_eq!(config.apps[0].id, "7");
        assert_eq!(config.apps[1].id, "8");
        assert_eq!(config.apps[2].id, "0123");
    }

    #[test]
    fn null_means_default() {
        let text = format!("server:\n  port: ~\n  log:\ntls: null\n{MINIMAL}");
        let config = load(&text, &no_env).expect("loads");
        assert_eq!(config.server.port, 6001);
        assert_eq!(config.server.log, "info");
        assert!(config.tls.is_none());
    }

    #[test]
    fn tls_port_defaults_and_files_are_required() {
        let text = format!("tls:\n  cert_file: c\n  key_file: k\n{MINIMAL}");
        let tls = load(&text, &no_env).expect("loads").tls.expect("tls");
        assert_eq!(tls.port, 6002);
        let text = format!("tls:\n  cert_file: c\n{MINIMAL}");
        assert_eq!(
            load_err(&text, &no_env),
            "tls.key_file: is required when the tls section is present"
        );
        let text = format!("tls:\n  cert_file: \"\"\n  key_file: k\n{MINIMAL}");
        assert_eq!(load_err(&text, &no_env), "tls.cert_file: must not be empty");
    }

    #[test]
    fn unknown_keys_name_their_path() {
        let cases = [
            ("server:\n  prot: 1\n", "server.prot"),
            ("sever:\n  port: 1\n", "sever"),
            ("tls:\n  cert: x\n", "tls.cert"),
            (
                "apps:\n  - {id: 1, key: a, secret: s}\n  - {id: 2, key: b, secret: s, secrte: x}\n",
                "apps[1].secrte",
            ),
        ];
        for (text, key) in cases {
            assert_eq!(load_err(text, &no_env), format!("config.yml: unknown key \"{key}\""));
        }
    }

    #[test]
    fn type_errors_name_their_key() {
        let cases = [
            (
                "server:\n  port: abc\n",
                r#"server.port: expected an integer from 1 to 65535, got "abc""#,
            ),
            (
                "server:\n  port: 70000\n",
                r#"server.port: expected an integer from 1 to 65535, got "70000""#,
            ),
            (
                "server:\n  port: 0\n",
                r#"server.port: expected an integer from 1 to 65535, got "0""#,
            ),
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
        ];
        for (text, message) in cases {
            assert_eq!(load_err(&format!("{text}{MINIMAL}"), &no_env), message);
        }
        assert_eq!(
            load_err(
                "apps:\n  - {id: 1, key: a, secret: s, client_event_rate: 5000000000}\n",
                &no_env
            ),
            r#"apps[0].client_event_rate: expected an integer from 0 to 4294967295, got "5000000000""#
        );
        assert_eq!(
            load_err("apps:\n  - {id: 1, key: a, secret: s, only_ssl: 1}\n", &no_env),
            r#"apps[0].only_ssl: expected true or false, got "1""#
        );
    }

    #[test]
    fn missing_required_app_keys() {
        assert_eq!(
            load_err("apps:\n  - {id: 1, key: a}\n", &no_env),
            "apps[0].secret: is required"
        );
        assert_eq!(
            load_err("apps:\n  - {id: ~, key: a, secret: s}\n", &no_env),
            "apps[0].id: is required"
        );
    }

    #[test]
    fn apps_are_required() {
        for text in ["", "# nothing\n", "server:\n  port: 6001\n", "apps: []\n", "apps:\n"] {
            assert_eq!(load_err(text, &no_env), "apps: at least one app is required", "{text:?}");
        }
    }

    #[test]
    fn malformed_yaml_and_wrong_section_shapes() {
        let cases = [
            "server: [\n".to_owned(),
            format!("server: 5\n{MINIMAL}"),
            format!("server:\n  port: {{a: 1}}\n{MINIMAL}"),
            "apps:\n  id: 1\n".to_owned(),
            format!("{MINIMAL}    key: again\n"),
        ];
        let expected = [
            "config.yml: expected mapping start at line 1, column 9 (at key \"server\")",
            "config.yml: expected mapping start at line 1, column 9 (at key \"server\")",
            "config.yml: expected string scalar at line 2, column 9 (at key \"port\")",
            "config.yml: expected sequence start at line 2, column 3 (at key \"id\")",
            "config.yml: duplicate key \"key\" at line 5, column 5",
        ];
        for (text, expected) in cases.iter().zip(expected) {
            assert_eq!(load_err(text, &no_env), expected, "{text:?}");
        }
    }

    #[test]
    fn unreadable_file() {
        let err = load_file(Path::new("/nonexistent/stapes.yml"), &no_env)
            .expect_err("missing file")
            .to_string();
        assert!(err.starts_with("cannot read /nonexistent/stapes.yml: "), "{err}");
    }

    #[test]
    fn variables_expand_before_parsing() {
        let text = "server:\n  port: ${PORT}\n  log: ${LOG:-warn}\n\
                    apps:\n  - {id: 1, key: \"${KEY}\", secret: \"${SECRET:-dflt}\"}\n";
        let env = env_of(&[("PORT", "7000"), ("KEY", "from-env")]);
        let config = load(text, &env).expect("loads");
        assert_eq!(config.server.port, 7000);
        assert_eq!(config.server.log, "warn");
        assert_eq!(config.apps[0].key, "from-env");
        assert_eq!(config.apps[0].secret, "dflt");
    }

    #[test]
    fn unset_variable_is_named() {
        let err = load_err(&format!("server:\n  port: ${{NOPE}}\n{MINIMAL}"), &no_env);
        assert!(err.starts_with("config.yml:2: environment variable NOPE is not set"), "{err}");
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
        let config = load(&text, &env).expect("loads");
        assert_eq!(config.server.port, 8000, "env beats file");
        assert_eq!(config.server.host, "::".parse::<IpAddr>().expect("ip"), "env beats default");
        assert_eq!(config.server.activity_timeout, Duration::from_secs(99));
        assert!(!config.server.allow_missing_protocol);
        assert_eq!(config.server.log, "debug", "empty variable counts as unset");
        assert_eq!(config.server.max_connections, 100_000, "default stays");
    }

    #[test]
    fn every_override_applies() {
        let values: Vec<(&str, &str)> = ENV_OVERRIDES
            .iter()
            .map(|&(var, path)| {
                let value = match path {
                    "server.host" => "0.0.0.0",
                    "server.log" => "trace",
                    "server.allow_missing_protocol" | "server.metrics" => "false",
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
                    _ => "2222",
                };
                (var, value)
            })
            .collect();
        let config = load(MINIMAL, &env_of(&values)).expect("loads");
        let s = &config.server;
        assert_eq!(s.shards, Some(8));
        assert_eq!(s.activity_timeout, Duration::from_secs(2222));
        assert_eq!(s.pong_timeout, Duration::from_secs(2222));
        assert_eq!(s.max_connections, 2222);
        assert_eq!(s.max_message_bytes, 2222);
        assert_eq!(s.max_outbox_bytes, 2222);
        assert_eq!(s.max_header_bytes, 2222);
        assert_eq!(s.max_body_bytes, 99999);
        assert_eq!(s.http_idle_timeout, Duration::from_secs(2222));
        assert_eq!(s.shutdown_grace, Duration::from_secs(2222));
        assert_eq!(s.log, "trace");
        assert!(!s.metrics);
        let tls = config.tls.expect("tls from env");
        assert_eq!(
            (tls.port, tls.cert_file.as_path(), tls.key_file.as_path()),
            (7443, Path::new("/c"), Path::new("/k"))
        );
        let redis = config.redis.expect("redis from env");
        assert_eq!(
            redis,
            RedisConfig {
                url: "redis://127.0.0.1:7379/2".into(),
                pusher_channel: "p".into(),
                incus_channel: "i".into(),
                incus_queue: "q".into(),
                instance: Some("me".into()),
                reconnect_max: Duration::from_millis(2222),
            }
        );
    }

    #[test]
    fn redis_is_off_by_default_and_configurable() {
        assert!(load(MINIMAL, &no_env).expect("loads").redis.is_none());
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.yml");
        assert!(load_file(&path, &no_env).expect("loads").redis.is_none());
        assert!(embedded_default(&no_env).expect("loads").redis.is_none());
        let text = format!("redis:\n  url: redis://127.0.0.1:6390\n{MINIMAL}");
        let redis = load(&text, &no_env).expect("loads").redis.expect("redis");
        assert_eq!(redis, RedisConfig::new("redis://127.0.0.1:6390"));
        assert_eq!(redis.pusher_channel, "stapes:pusher");
        assert_eq!(
            (redis.incus_channel.as_str(), redis.incus_queue.as_str()),
            ("Incus", "Incus_Queue")
        );
        assert_eq!(redis.reconnect_max, Duration::from_secs(10));
        let text = format!("redis:\n  incus_queue: q\n{MINIMAL}");
        assert_eq!(
            load_err(&text, &no_env),
            "redis.url: is required when the redis section is present"
        );
        let text = format!("redis:\n  url: redis://h\n  queue: q\n{MINIMAL}");
        assert_eq!(load_err(&text, &no_env), "config.yml: unknown key \"redis.queue\"");
    }

    #[test]
    fn redis_env_enables_and_overrides() {
        let env = env_of(&[("STAPES_REDIS_URL", "redis://127.0.0.1:6390")]);
        let redis = embedded_default(&env).expect("loads").redis.expect("redis from env");
        assert_eq!(redis.url, "redis://127.0.0.1:6390");
        let env = env_of(&[("STAPES_REDIS_INCUS_QUEUE", "q")]);
        assert!(
            load_err(MINIMAL, &env)
                .starts_with("redis: STAPES_REDIS_INCUS_QUEUE is set but STAPES_REDIS_URL is not"),
            "{}",
            load_err(MINIMAL, &env)
        );
        // Incus's own variable applies only with the bridge on, below STAPES_*.
        let env = env_of(&[("REDIS_MESSAGE_CHANNEL", "Chan")]);
        assert!(load(MINIMAL, &env).expect("loads").redis.is_none());
        let text = format!("redis:\n  url: redis://h\n  incus_channel: File\n{MINIMAL}");
        assert_eq!(load(&text, &env).expect("loads").redis.expect("on").incus_channel, "Chan");
        let env =
            env_of(&[("REDIS_MESSAGE_CHANNEL", "Chan"), ("STAPES_REDIS_INCUS_CHANNEL", "Mine")]);
        assert_eq!(load(&text, &env).expect("loads").redis.expect("on").incus_channel, "Mine");
        // Incus's Docker-link address variables move redis.url, keeping the rest.
        let text = format!("redis:\n  url: redis://:pw@old:1/3\n{MINIMAL}");
        let env = env_of(&[
            ("REDIS_PORT_6379_TCP_ADDR", "10.1.2.3"),
            ("REDIS_PORT_6379_TCP_PORT", "6380"),
        ]);
        assert_eq!(
            load(&text, &env).expect("loads").redis.expect("on").url,
            "redis://:pw@10.1.2.3:6380/3"
        );
        assert!(load(MINIMAL, &env).expect("loads").redis.is_none(), "they never enable it");
        let env = env_of(&[
            ("REDIS_PORT_6379_TCP_ADDR", "10.1.2.3"),
            ("STAPES_REDIS_URL", "redis://env:7/0"),
        ]);
        assert_eq!(load(&text, &env).expect("loads").redis.expect("on").url, "redis://env:7/0");
        let env = env_of(&[("REDIS_PORT_6379_TCP_PORT", "http")]);
        assert_eq!(
            load_err(&text, &env),
            "redis.url: expected a port from 1 to 65535, got \"http\" (from REDIS_PORT_6379_TCP_PORT)"
        );
        let text = format!("redis:\n  url: unix:///tmp/r.sock\n{MINIMAL}");
        let env = env_of(&[("REDIS_PORT_6379_TCP_ADDR", "h")]);
        assert!(
            load_err(&text, &env).contains("needs a redis:// URL"),
            "{}",
            load_err(&text, &env)
        );
        let text = format!("redis:\n  url: redis://h\n  incus_channel: File\n{MINIMAL}");
        let env = env_of(&[("STAPES_REDIS_RECONNECT_MAX_MS", "1")]);
        assert_eq!(
            load_err(&text, &env),
            "redis.reconnect_max_ms: expected 100 to 600000 ms, got 1 \
             (from STAPES_REDIS_RECONNECT_MAX_MS)"
        );
    }

    #[test]
    fn malformed_override_names_variable() {
        let env = env_of(&[("STAPES_PORT", "abc")]);
        assert_eq!(
            load_err(MINIMAL, &env),
            r#"server.port: expected an integer from 1 to 65535, got "abc" (from STAPES_PORT)"#
        );
        let env = env_of(&[("STAPES_MAX_MESSAGE_BYTES", "10")]);
        assert_eq!(
            load_err(MINIMAL, &env),
            "server.max_message_bytes: must be at least 1024, got 10 (from STAPES_MAX_MESSAGE_BYTES)"
        );
    }

    #[test]
    fn tls_env_needs_all_three_without_a_section() {
        let env = env_of(&[("STAPES_TLS_PORT", "7443")]);
        let err = load_err(MINIMAL, &env);
        assert!(
            err.starts_with(
                "tls: STAPES_TLS_PORT is set but STAPES_TLS_CERT_FILE, STAPES_TLS_KEY_FILE is not"
            ),
            "{err}"
        );
    }

    #[test]
    fn tls_env_overrides_section_fields() {
        let text = format!("tls:\n  port: 7443\n  cert_file: /a\n  key_file: /b\n{MINIMAL}");
        let env = env_of(&[("STAPES_TLS_CERT_FILE", "/env.pem")]);
        let tls: TlsConfig = load(&text, &env).expect("loads").tls.expect("tls");
        assert_eq!(tls.port, 7443);
        assert_eq!(tls.cert_file, Path::new("/env.pem"));
        assert_eq!(tls.key_file, Path::new("/b"));
        let env = env_of(&[("STAPES_TLS_PORT", "6001")]);
        assert_eq!(
            load_err(&text, &env),
            "tls.port: must differ from server.port, both are 6001 (from STAPES_TLS_PORT)"
        );
    }

    #[test]
    fn embedded_default_without_env() {
        let config = embedded_default(&no_env).expect("valid");
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
    }

    #[test]
    fn embedded_default_from_env() {
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
        assert_eq!((app.id.as_str(), app.key.as_str(), app.secret.as_str()), ("123", "k", "s"));
        assert!(app.client_events);
        assert_eq!(config.server.port, 9000);
        assert_eq!(config.server.host, IpAddr::from([0, 0, 0, 0]));
    }

    #[test]
    fn embedded_default_errors_name_variable() {
        let env = env_of(&[("STAPES_APP_ID", "abc")]);
        assert_eq!(
            embedded_default(&env).expect_err("invalid").to_string(),
            r#"apps[0].id: must be digits only, got "abc" (from STAPES_APP_ID)"#
        );
        let env = env_of(&[("STAPES_APP_CLIENT_EVENTS", "yes")]);
        assert_eq!(
            embedded_default(&env).expect_err("invalid").to_string(),
            r#"apps[0].client_events: expected true or false, got "yes" (from STAPES_APP_CLIENT_EVENTS)"#
        );
    }

    #[test]
    fn incus_section_defaults_and_every_key() {
        let config = load(MINIMAL, &no_env).expect("loads");
        assert_eq!(config.incus, IncusConfig::default());
        assert!(config.incus.client_broadcasts);
        assert_eq!(config.incus.connection_timeout, Duration::from_secs(60));
        let text = format!(
            "incus:\n  client_broadcasts: false\n  connection_timeout: 5\n  longpoll_killswitch: ks\n  \
             mailbox_messages: 7\n  mailbox_ttl_secs: 8\n  presence_window_secs: 9\n  \
             auth_timeout_secs: 10\n  ping_interval_secs: 11\n  client_commands_per_sec: 12\n  \
             client_commands_burst: 13\n  max_lp_sessions: 14\n{MINIMAL}"
        );
        let i = load(&text, &no_env).expect("loads").incus;
        assert!(!i.client_broadcasts);
        assert_eq!(i.connection_timeout, Duration::from_secs(5));
        assert_eq!(i.longpoll_killswitch, "ks");
        assert_eq!(i.mailbox_messages, 7);
        assert_eq!(i.mailbox_ttl, Duration::from_secs(8));
        assert_eq!(i.presence_window, Duration::from_secs(9));
        assert_eq!(i.auth_timeout, Duration::from_secs(10));
        assert_eq!(i.ping_interval, Duration::from_secs(11));
        assert_eq!(i.client_commands_per_sec, 12);
        assert_eq!(i.client_commands_burst, 13);
        assert_eq!(i.max_lp_sessions, 14);
    }

    #[test]
    fn incus_keys_of_an_incus_config_carry_over() {
        let text = format!(
            "incus:\n  listening_port: \"4000\"\n  log_level: debug\n  redis_enabled: true\n  \
             redis_port_6379_tcp_addr: localhost\n  redis_port_6379_tcp_port: 6380\n  \
             redis_message_channel: Chan\n  redis_message_queue: Q\n  tls_enabled: true\n  \
             tls_port: \"8443\"\n  cert_file: c.pem\n  key_file: k.pem\n  datadog_enabled: false\n  \
             datadog_host: 127.0.0.1\n  redis_activity_consumers: 8\n  redis_connection_pool_size: 20\n  \
             apns_enabled: false\n  apns_store_cert: a.pem\n  apns_store_private_key: b.pem\n  \
             apns_store_url: gateway.push.apple.com:2195\n  apns_production_url: x:1\n  \
             apns_sandbox_url: \"\"\n  ios_push_sound: ding.aiff\n  gcm_enabled: false\n  \
             gcm_api_key: k\n  android_error_queue: q\n{MINIMAL}"
        );
        let c = load(&text, &no_env).expect("loads");
        assert_eq!(c.server.port, 4000);
        assert_eq!(c.server.log, "debug");
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
        assert_eq!(c.incus.push.apns, None);
        assert_eq!(c.incus.push.fcm, None);
        assert_eq!(c.incus.push.ios_push_sound, "ding.aiff");
        assert_eq!(c.incus.push.android_error_queue, "q");
        assert_eq!(
            c.incus.unsupported,
            [
                "apns_store_url (the legacy binary gateway is gone; stapes uses APNs HTTP/2)",
                "apns_production_url (the legacy binary gateway is gone; stapes uses APNs HTTP/2)",
                "gcm_api_key (the legacy GCM/FCM API is gone; set fcm_service_account_file)",
            ]
        );
        // The stapes sections win over the aliases.
        let text = format!(
            "server:\n  port: 7000\nincus:\n  listening_port: 4000\n  log_level: error\n{MINIMAL}"
        );
        let c = load(&text, &no_env).expect("loads");
        assert_eq!((c.server.port, c.server.log.as_str()), (7000, "info"));
    }

    #[test]
    fn incus_errors_name_their_key() {
        let cases = [
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
        ];
        for (section, expected) in cases {
            let err = load_err(&format!("{section}{MINIMAL}"), &no_env);
            assert!(err.contains(expected), "{section}: {err}");
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
        assert_eq!(c.incus.connection_timeout, Duration::from_secs(9), "STAPES_ wins");
        assert_eq!((c.server.port, c.server.log.as_str()), (4000, "debug"));
        let env = env_of(&[("LISTENING_PORT", "4000"), ("STAPES_PORT", "4001")]);
        assert_eq!(load(MINIMAL, &env).expect("loads").server.port, 4001);
        let env = env_of(&[("TLS_ENABLED", "true"), ("TLS_PORT", "8443")]);
        let tls = load(MINIMAL, &env).expect("loads").tls.expect("tls");
        assert_eq!((tls.port, tls.cert_file.to_str()), (8443, Some("cert.pem")));
        let env = env_of(&[("CONNECTION_TIMEOUT", "0")]);
        assert_eq!(
            load_err(MINIMAL, &env),
            "incus.connection_timeout: must be from 1 to 86400 seconds, got 0 (from CONNECTION_TIMEOUT)"
        );
        let env = env_of(&[("CLIENT_BROADCASTS", "maybe")]);
        assert!(load_err(MINIMAL, &env).ends_with("(from CLIENT_BROADCASTS)"));
    }

    #[test]
    fn metrics_keys_have_defaults_and_name_themselves_in_errors() {
        let c = load(MINIMAL, &no_env).expect("loads");
        assert!(c.server.metrics);
        assert!(!c.incus.datadog_enabled);
        assert_eq!(
            (c.incus.datadog_host.as_str(), c.incus.datadog_port, c.incus.datadog_interval),
            ("127.0.0.1", 8125, Duration::from_secs(10))
        );
        let text = format!(
            "server:\n  metrics: false\nincus:\n  datadog_enabled: true\n  datadog_host: statsd.local\n  \
             datadog_port: 9125\n  datadog_interval_secs: 2\n{MINIMAL}"
        );
        let c = load(&text, &no_env).expect("loads");
        assert!(!c.server.metrics);
        assert!(c.incus.datadog_enabled && c.incus.unsupported.is_empty());
        assert_eq!(
            (c.incus.datadog_host.as_str(), c.incus.datadog_port, c.incus.datadog_interval),
            ("statsd.local", 9125, Duration::from_secs(2))
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
            assert_eq!(load_err(&format!("{text}{MINIMAL}"), &no_env), message);
        }
        let env = env_of(&[
            ("STAPES_METRICS", "false"),
            ("STAPES_INCUS_DATADOG_ENABLED", "true"),
            ("STAPES_INCUS_DATADOG_PORT", "9999"),
        ]);
        let c = load(MINIMAL, &env).expect("loads");
        assert!(!c.server.metrics && c.incus.datadog_enabled);
        assert_eq!(c.incus.datadog_port, 9999);
        let env = env_of(&[("STAPES_INCUS_DATADOG_PORT", "x")]);
        assert!(load_err(MINIMAL, &env).ends_with("(from STAPES_INCUS_DATADOG_PORT)"));
    }

    /// A file under the temp dir with a name no other test uses, removed on
    /// drop.
    struct TempFile(std::path::PathBuf);

    impl TempFile {
        fn new(tag: &str, contents: &str) -> Self {
            use std::sync::atomic::{AtomicUsize, Ordering};
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let name = format!("stapes-config-test-{}-{n}-{tag}", std::process::id());
            let path = std::env::temp_dir().join(name);
            std::fs::write(&path, contents).expect("temp file written");
            Self(path)
        }

        fn path(&self) -> &str {
            self.0.to_str().expect("UTF-8 temp path")
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    /// A fake PKCS#8 PEM body: what must never show in an error or a log.
    const FAKE_KEY: &str = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";

    fn p8() -> TempFile {
        TempFile::new("AuthKey.p8", FAKE_KEY)
    }

    fn service_account(fields: &str) -> TempFile {
        TempFile::new("service-account.json", &format!("{{{fields}}}"))
    }

    /// The fields of a service account key, with fake values.
    const ACCOUNT: &str = r#""type":"service_account","client_email":"push@demo.iam.gserviceaccount.com","private_key":"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n""#;

    /// An `incus:` section with `keys`, and Redis on (push needs it).
    fn incus(keys: &str) -> String {
        format!("incus:\n  redis_enabled: true\n{keys}{MINIMAL}")
    }

    #[test]
    fn push_defaults_and_thread_keys() {
        use crate::config::PushConfig;
        let push = load(MINIMAL, &no_env).expect("loads").incus.push;
        assert_eq!(push, PushConfig::default());
        assert_eq!((push.apns, push.fcm), (None, None));
        assert_eq!(push.ios_push_sound, "bingbong.aiff");
        assert_eq!(push.ios_error_queue, "Incus_iOS_Error_Queue");
        assert_eq!(push.android_error_queue, "Incus_Android_Error_Queue");
        assert_eq!((push.queue, push.concurrency), (10_000, 64));
        assert_eq!(
            (push.retry_for, push.timeout),
            (Duration::from_secs(60), Duration::from_secs(10))
        );
        assert!(!push.connected_is_active, "Incus's rule by default");
        assert_eq!(embedded_default(&no_env).expect("valid").incus.push, PushConfig::default());
        let text = incus(
            "  ios_push_sound: ding.aiff\n  ios_error_queue: IQ\n  android_error_queue: AQ\n  \
             push_queue: 5\n  push_concurrency: 2\n  push_retry_secs: 0\n  push_timeout_secs: 3\n  \
             pushormessage_connected: true\n",
        );
        let push = load(&text, &no_env).expect("loads").incus.push;
        assert_eq!(
            push,
            PushConfig {
                apns: None,
                fcm: None,
                ios_push_sound: "ding.aiff".into(),
                android_error_queue: "AQ".into(),
                ios_error_queue: "IQ".into(),
                queue: 5,
                concurrency: 2,
                retry_for: Duration::ZERO,
                timeout: Duration::from_secs(3),
                connected_is_active: true,
            }
        );
        for (keys, message) in [
            ("  push_queue: 0\n", "incus.push_queue: must be at least 1, got 0"),
            ("  push_concurrency: 0\n", "incus.push_concurrency: must be at least 1, got 0"),
            (
                "  push_timeout_secs: 0\n",
                "incus.push_timeout_secs: must be from 1 to 86400 seconds, got 0",
            ),
            (
                "  pushormessage_connected: 1\n",
                r#"incus.pushormessage_connected: expected true or false, got "1""#,
            ),
        ] {
            assert_eq!(load_err(&incus(keys), &no_env), message, "{keys}");
        }
        // An empty list name turns that error list off.
        for keys in ["  ios_error_queue: \"\"\n", "  android_error_queue: \"\"\n"] {
            let push = load(&incus(keys), &no_env).expect("loads").incus.push;
            assert!(push.ios_error_queue.is_empty() || push.android_error_queue.is_empty());
        }
    }

    #[test]
    fn apns_token_auth() {
        use crate::config::{ApnsAuth, ApnsBuild, ApnsConfig};
        let key = p8();
        let text = incus(&format!(
            "  apns_enabled: true\n  apns_key_file: {}\n  apns_key_id: ABC123DEFG\n  \
             apns_team_id: TEAM123456\n  apns_store_topic: com.example.app\n  \
             apns_development_topic: com.example.app.dev\n  apns_push_type: background\n  \
             apns_priority: 5\n  apns_expiration_secs: 0\n",
            key.path()
        ));
        let config = load(&text, &no_env).expect("loads");
        let token = ApnsAuth::Token {
            key_file: key.0.clone(),
            key_id: "ABC123DEFG".into(),
            team_id: "TEAM123456".into(),
            own: false,
        };
        let expected = ApnsConfig {
            builds: vec![
                ApnsBuild {
                    name: "store".into(),
                    sandbox: false,
                    topic: Some("com.example.app".into()),
                    auth: token.clone(),
                },
                ApnsBuild {
                    name: "development".into(),
                    sandbox: true,
                    topic: Some("com.example.app.dev".into()),
                    auth: token,
                },
            ],
            push_type: "background".into(),
            priority: 5,
            expiration: Duration::ZERO,
        };
        assert_eq!(config.incus.push.apns, Some(expected));
        assert_eq!(config.incus.push.fcm, None);
        assert!(config.incus.unsupported.is_empty());
        // The defaults of the APNs keys.
        let text = incus(&format!(
            "  apns_enabled: true\n  apns_key_file: {}\n  apns_key_id: ABC123DEFG\n  \
             apns_team_id: TEAM123456\n  apns_beta_topic: com.example.beta\n",
            key.path()
        ));
        let apns = load(&text, &no_env).expect("loads").incus.push.apns.expect("apns on");
        assert_eq!(
            (apns.push_type.as_str(), apns.priority, apns.expiration),
            ("alert", 10, Duration::from_secs(86_400))
        );
        assert_eq!(apns.builds.len(), 1);
        assert_eq!((apns.builds[0].name.as_str(), apns.builds[0].sandbox), ("beta", false));
        // Off: the keys are kept out of the config.
        let text = text.replace("apns_enabled: true", "apns_enabled: false");
        assert_eq!(load(&text, &no_env).expect("loads").incus.push.apns, None);
    }

    #[test]
    fn apns_certificate_auth_wins_over_token() {
        use crate::config::ApnsAuth;
        let (key, cert, cert_key) = (p8(), TempFile::new("cert.pem", "CERT"), p8());
        let dev_cert = TempFile::new("dev-cert.pem", "CERT");
        let text = incus(&format!(
            "  apns_enabled: true\n  apns_key_file: {key}\n  apns_key_id: ABC123DEFG\n  \
             apns_team_id: TEAM123456\n  apns_store_cert: {cert}\n  apns_store_private_key: {ck}\n  \
             apns_store_topic: com.example.app\n  apns_enterprise_topic: com.example.ent\n  \
             apns_development_cert: {dev}\n  apns_development_private_key: {ck}\n",
            key = key.path(),
            cert = cert.path(),
            ck = cert_key.path(),
            dev = dev_cert.path(),
        ));
        let apns = load(&text, &no_env).expect("loads").incus.push.apns.expect("apns on");
        let builds: Vec<(&str, bool, Option<&str>)> =
            apns.builds.iter().map(|b| (b.name.as_str(), b.sandbox, b.topic.as_deref())).collect();
        assert_eq!(
            builds,
            [
                ("store", false, Some("com.example.app")),
                ("enterprise", false, Some("com.example.ent")),
                ("development", true, None),
            ]
        );
        let certificate = |file: &TempFile| ApnsAuth::Certificate {
            cert_file: file.0.clone(),
            key_file: cert_key.0.clone(),
        };
        assert_eq!(apns.builds[0].auth, certificate(&cert), "a certificate wins over the token");
        assert!(
            matches!(&apns.builds[1].auth, ApnsAuth::Token { key_file, .. } if *key_file == key.0)
        );
        assert_eq!(apns.builds[2].auth, certificate(&dev_cert));
        // Certificates alone need no token keys.
        let text = incus(&format!(
            "  apns_enabled: true\n  apns_beta_cert: {}\n  apns_beta_private_key: {}\n",
            cert.path(),
            cert_key.path()
        ));
        let apns = load(&text, &no_env).expect("loads").incus.push.apns.expect("apns on");
        assert_eq!(apns.builds.len(), 1);
        assert_eq!(apns.builds[0].auth, certificate(&cert));
    }

    #[test]
    fn apns_token_key_per_build() {
        use crate::config::ApnsAuth;
        let (shared, ent, cert, cert_key) = (p8(), p8(), TempFile::new("cert.pem", "CERT"), p8());
        let own_trio = format!(
            "  apns_enterprise_key_file: {}\n  apns_enterprise_key_id: ENT4567890\n  \
             apns_enterprise_team_id: ENTTEAM999\n",
            ent.path()
        );
        let text = incus(&format!(
            "  apns_enabled: true\n  apns_key_file: {}\n  apns_key_id: ABC123DEFG\n  \
             apns_team_id: TEAM123456\n  apns_store_topic: com.example.app\n{own_trio}  \
             apns_enterprise_topic: com.example.ent\n",
            shared.path()
        ));
        let apns = load(&text, &no_env).expect("loads").incus.push.apns.expect("apns on");
        let auths: Vec<(&str, &ApnsAuth)> =
            apns.builds.iter().map(|b| (b.name.as_str(), &b.auth)).collect();
        assert_eq!(
            auths,
            [
                (
                    "store",
                    &ApnsAuth::Token {
                        key_file: shared.0.clone(),
                        key_id: "ABC123DEFG".into(),
                        team_id: "TEAM123456".into(),
                        own: false,
                    }
                ),
                (
                    "enterprise",
                    &ApnsAuth::Token {
                        key_file: ent.0.clone(),
                        key_id: "ENT4567890".into(),
                        team_id: "ENTTEAM999".into(),
                        own: true,
                    }
                ),
            ]
        );
        assert_eq!(apns.builds[0].token_key("key_id"), "apns_key_id");
        assert_eq!(apns.builds[1].token_key("key_id"), "apns_enterprise_key_id");
        // A build's own trio needs no shared one.
        let text = incus(&format!(
            "  apns_enabled: true\n{own_trio}  apns_enterprise_topic: com.example.ent\n"
        ));
        let apns = load(&text, &no_env).expect("loads").incus.push.apns.expect("apns on");
        assert_eq!(apns.builds.len(), 1);
        assert!(matches!(
            &apns.builds[0].auth,
            ApnsAuth::Token { key_file, own: true, .. } if *key_file == ent.0
        ));
        // The certificate pair beats the build's own trio.
        let text = incus(&format!(
            "  apns_enabled: true\n{own_trio}  apns_enterprise_cert: {}\n  \
             apns_enterprise_private_key: {}\n  apns_enterprise_topic: com.example.ent\n",
            cert.path(),
            cert_key.path()
        ));
        let apns = load(&text, &no_env).expect("loads").incus.push.apns.expect("apns on");
        assert_eq!(
            apns.builds[0].auth,
            ApnsAuth::Certificate { cert_file: cert.0.clone(), key_file: cert_key.0.clone() }
        );
        // STAPES_INCUS_APNS_<BUILD>_* override one key of the trio.
        let other = p8();
        let text = incus(&format!(
            "  apns_enabled: true\n{own_trio}  apns_enterprise_topic: com.example.ent\n"
        ));
        let vars = [
            ("STAPES_INCUS_APNS_ENTERPRISE_KEY_FILE", other.path()),
            ("STAPES_INCUS_APNS_ENTERPRISE_TEAM_ID", "OTHERTEAM1"),
        ];
        let env = env_of(&vars);
        let apns = load(&text, &env).expect("loads").incus.push.apns.expect("apns on");
        assert_eq!(
            apns.builds[0].auth,
            ApnsAuth::Token {
                key_file: other.0.clone(),
                key_id: "ENT4567890".into(),
                team_id: "OTHERTEAM1".into(),
                own: true,
            }
        );
        let env = env_of(&[("STAPES_INCUS_APNS_ENTERPRISE_KEY_ID", "short")]);
        assert_eq!(
            load_err(&text, &env),
            "incus.apns_enterprise_key_id: expected the 10 letters or digits Apple shows, got 5 \
             characters (from STAPES_INCUS_APNS_ENTERPRISE_KEY_ID)"
        );
        // The environment alone can give a build its trio and topic.
        let vars = [
            ("STAPES_INCUS_APNS_ENABLED", "true"),
            ("STAPES_INCUS_APNS_BETA_KEY_FILE", other.path()),
            ("STAPES_INCUS_APNS_BETA_KEY_ID", "BETA456789"),
            ("STAPES_INCUS_APNS_BETA_TEAM_ID", "BETATEAM12"),
            ("STAPES_INCUS_APNS_BETA_TOPIC", "com.example.beta"),
        ];
        let env = env_of(&vars);
        let apns = load(&incus(""), &env).expect("loads").incus.push.apns.expect("apns on");
        assert_eq!(apns.builds[0].name, "beta");
        assert!(matches!(
            &apns.builds[0].auth,
            ApnsAuth::Token { key_id, own: true, .. } if key_id == "BETA456789"
        ));
    }

    #[test]
    fn apns_per_build_token_errors_name_the_build_key() {
        let (shared, ent, cert) = (p8(), p8(), TempFile::new("cert.pem", "CERT"));
        let shared_trio = format!(
            "  apns_key_file: {}\n  apns_key_id: ABC123DEFG\n  apns_team_id: TEAM123456\n  \
             apns_store_topic: com.example.app\n",
            shared.path()
        );
        let own_trio = format!(
            "  apns_enterprise_key_file: {}\n  apns_enterprise_key_id: ENT4567890\n  \
             apns_enterprise_team_id: ENTTEAM999\n",
            ent.path()
        );
        let topic = "  apns_enterprise_topic: com.example.ent\n";
        let missing = std::env::temp_dir().join("stapes-config-test-no-such-file.p8");
        let missing = missing.to_str().expect("UTF-8 temp path");
        let cases = [
            (
                format!("{shared_trio}  apns_enterprise_key_file: {}\n{topic}", ent.path()),
                "incus.apns_enterprise_key_id: is required with apns_enterprise_key_file: token \
                 auth needs apns_enterprise_key_file, apns_enterprise_key_id and \
                 apns_enterprise_team_id"
                    .to_owned(),
            ),
            (
                format!(
                    "{shared_trio}  apns_development_key_id: DEV4567890\n  \
                     apns_development_key_file: {}\n  apns_development_topic: t\n",
                    ent.path()
                ),
                "incus.apns_development_team_id: is required with apns_development_key_file and \
                 apns_development_key_id: token auth needs apns_development_key_file, \
                 apns_development_key_id and apns_development_team_id"
                    .to_owned(),
            ),
            (
                "  apns_beta_team_id: BETATEAM12\n  apns_beta_topic: t\n".to_owned(),
                "incus.apns_beta_key_file: is required with apns_beta_team_id: token auth needs \
                 apns_beta_key_file, apns_beta_key_id and apns_beta_team_id"
                    .to_owned(),
            ),
            // A partial trio is an error even when a certificate wins.
            (
                format!(
                    "  apns_enterprise_key_id: ENT4567890\n  apns_enterprise_cert: {c}\n  \
                     apns_enterprise_private_key: {c}\n",
                    c = cert.path()
                ),
                "incus.apns_enterprise_key_file: is required with apns_enterprise_key_id: token \
                 auth needs apns_enterprise_key_file, apns_enterprise_key_id and \
                 apns_enterprise_team_id"
                    .to_owned(),
            ),
            (
                format!("{shared_trio}{own_trio}"),
                "incus.apns_enterprise_topic: is required with apns_enterprise_key_file, \
                 apns_enterprise_key_id and apns_enterprise_team_id: token auth needs the app's \
                 bundle id"
                    .to_owned(),
            ),
            (
                format!("{}{topic}", own_trio.replace("ENT4567890", "ENT45678")),
                "incus.apns_enterprise_key_id: expected the 10 letters or digits Apple shows, got \
                 8 characters"
                    .to_owned(),
            ),
            (
                format!("{shared_trio}{}{topic}", own_trio.replace("ENTTEAM999", "ENT_TEAM_9")),
                "incus.apns_enterprise_team_id: expected the 10 letters or digits Apple shows, \
                 got other characters"
                    .to_owned(),
            ),
            (
                format!("{shared_trio}{}{topic}", own_trio.replace(ent.path(), missing)),
                format!(
                    "incus.apns_enterprise_key_file: cannot read {missing}: No such file or \
                     directory (os error 2)"
                ),
            ),
        ];
        for (keys, message) in &cases {
            let text = incus(&format!("  apns_enabled: true\n{keys}"));
            assert_eq!(&load_err(&text, &no_env), message, "{keys}");
            // Only an enabled platform is checked.
            let off = text.replace("apns_enabled: true", "apns_enabled: false");
            assert_eq!(load(&off, &no_env).expect("off loads").incus.push.apns, None, "{keys}");
        }
    }

    #[test]
    fn apns_errors_name_their_key() {
        let (key, cert) = (p8(), TempFile::new("cert.pem", "CERT"));
        let empty = TempFile::new("empty.pem", "");
        let token = format!(
            "  apns_key_file: {}\n  apns_key_id: ABC123DEFG\n  apns_team_id: TEAM123456\n",
            key.path()
        );
        let missing = std::env::temp_dir().join("stapes-config-test-no-such-file.p8");
        let missing = missing.to_str().expect("UTF-8 temp path");
        let cases = [
            (
                format!("  apns_store_cert: {}\n", cert.path()),
                "incus.apns_store_private_key: is required with apns_store_cert: certificate \
                 auth needs both"
                    .to_owned(),
            ),
            (
                format!("  apns_beta_private_key: {}\n", key.path()),
                "incus.apns_beta_cert: is required with apns_beta_private_key: certificate \
                 auth needs both"
                    .to_owned(),
            ),
            (
                "  apns_store_topic: com.example.app\n".to_owned(),
                "incus.apns_key_file: is required: the store build has apns_store_topic but no \
                 credentials; set apns_key_file, apns_key_id and apns_team_id (token auth; or the \
                 build's own apns_store_key_file, apns_store_key_id and apns_store_team_id), or \
                 apns_store_cert and apns_store_private_key (certificate auth)"
                    .to_owned(),
            ),
            (
                format!(
                    "  apns_key_file: {}\n  apns_team_id: TEAM123456\n  apns_store_topic: t\n",
                    key.path()
                ),
                "incus.apns_key_id: is required with apns_key_file and apns_team_id: token auth \
                 needs apns_key_file, apns_key_id and apns_team_id"
                    .to_owned(),
            ),
            (
                "  apns_key_id: ABC123DEFG\n  apns_store_topic: t\n".to_owned(),
                "incus.apns_key_file: is required with apns_key_id: token auth needs \
                 apns_key_file, apns_key_id and apns_team_id"
                    .to_owned(),
            ),
            (
                format!("{}  apns_store_topic: t\n", token.replace("ABC123DEFG", "ABC123DEF")),
                "incus.apns_key_id: expected the 10 letters or digits Apple shows, got 9 \
                 characters"
                    .to_owned(),
            ),
            (
                format!("{}  apns_store_topic: t\n", token.replace("TEAM123456", "TEAM-12345")),
                "incus.apns_team_id: expected the 10 letters or digits Apple shows, got other \
                 characters"
                    .to_owned(),
            ),
            (String::new(), format!("incus.apns_enabled: {}", super::super::push::NO_APNS_BUILD)),
            (token.clone(), format!("incus.apns_enabled: {}", super::super::push::NO_APNS_BUILD)),
            (
                format!("{}  apns_store_topic: t\n", token.replace(key.path(), missing)),
                format!(
                    "incus.apns_key_file: cannot read {missing}: No such file or directory \
                     (os error 2)"
                ),
            ),
            (
                format!("  apns_store_cert: {missing}\n  apns_store_private_key: {}\n", key.path()),
                format!(
                    "incus.apns_store_cert: cannot read {missing}: No such file or directory \
                     (os error 2)"
                ),
            ),
            (
                format!(
                    "  apns_development_cert: {}\n  apns_development_private_key: {}\n",
                    cert.path(),
                    empty.path()
                ),
                format!(
                    "incus.apns_development_private_key: cannot read {}: the file is empty",
                    empty.path()
                ),
            ),
        ];
        for (keys, message) in &cases {
            let text = incus(&format!("  apns_enabled: true\n{keys}"));
            assert_eq!(&load_err(&text, &no_env), message, "{keys}");
            // Only an enabled platform is checked.
            let off = text.replace("apns_enabled: true", "apns_enabled: false");
            assert_eq!(load(&off, &no_env).expect("off loads").incus.push.apns, None, "{keys}");
        }
        for (keys, message) in [
            (
                "  apns_priority: 7\n",
                r#"incus.apns_priority: expected 10 (now) or 5 (power-aware), got "7""#,
            ),
            (
                "  apns_push_type: voip\n",
                r#"incus.apns_push_type: expected alert or background, got "voip""#,
            ),
            (
                "  apns_expiration_secs: -1\n",
                r#"incus.apns_expiration_secs: expected an integer of at least 0, got "-1""#,
            ),
            ("  apns_enabled: yes\n", r#"incus.apns_enabled: expected true or false, got "yes""#),
        ] {
            assert_eq!(load_err(&incus(keys), &no_env), message, "{keys}");
        }
    }

    #[test]
    fn fcm_from_a_service_account() {
        use crate::config::FcmConfig;
        let file = service_account(&format!(
            r#"{ACCOUNT},"project_id":"demo-project","token_uri":"https://oauth2.example.com/token""#
        ));
        let text =
            incus(&format!("  gcm_enabled: true\n  fcm_service_account_file: {}\n", file.path()));
        let config = load(&text, &no_env).expect("loads");
        assert_eq!(
            config.incus.push.fcm,
            Some(FcmConfig {
                project_id: "demo-project".into(),
                service_account_file: file.0.clone(),
                url: "https://fcm.googleapis.com".into(),
                token_url: Some("https://oauth2.example.com/token".into()),
            })
        );
        assert_eq!(config.incus.push.apns, None);
        let debug = format!("{config:?}");
        assert!(!debug.contains("AAAA") && !debug.contains("BEGIN PRIVATE"), "{debug}");
        // fcm_enabled is an alias; the keys win over the file.
        let text = incus(&format!(
            "  gcm_enabled: false\n  fcm_enabled: true\n  fcm_service_account_file: {}\n  \
             fcm_project_id: mine\n  fcm_url: http://127.0.0.1:9000//\n  \
             fcm_token_url: http://127.0.0.1:9001/token\n",
            file.path()
        ));
        let fcm = load(&text, &no_env).expect("loads").incus.push.fcm.expect("fcm on");
        assert_eq!(fcm.project_id, "mine");
        assert_eq!(fcm.url, "http://127.0.0.1:9000", "trailing / dropped");
        assert_eq!(fcm.token_url.as_deref(), Some("http://127.0.0.1:9001/token"));
        // Without token_uri in the file nor fcm_token_url: the push module's default.
        let bare = service_account(&format!(r#"{ACCOUNT},"project_id":"p""#));
        let text =
            incus(&format!("  fcm_enabled: true\n  fcm_service_account_file: {}\n", bare.path()));
        let fcm = load(&text, &no_env).expect("loads").incus.push.fcm.expect("fcm on");
        assert_eq!((fcm.project_id.as_str(), fcm.token_url), ("p", None));
        // Without project_id in the file, fcm_project_id is needed.
        let anonymous = service_account(ACCOUNT);
        let text = incus(&format!(
            "  fcm_enabled: true\n  fcm_service_account_file: {}\n",
            anonymous.path()
        ));
        assert_eq!(
            load_err(&text, &no_env),
            format!("incus.fcm_project_id: is required: {} has no project_id", anonymous.path())
        );
        let with_id = text.replace("  fcm_enabled", "  fcm_project_id: given\n  fcm_enabled");
        let fcm = load(&with_id, &no_env).expect("loads").incus.push.fcm.expect("fcm on");
        assert_eq!(fcm.project_id, "given");
    }

    #[test]
    fn fcm_errors_name_their_key_and_hide_the_file() {
        let not_json = TempFile::new("key.pem", FAKE_KEY);
        let no_key = service_account(r#""client_email":"a@b","project_id":"p""#);
        let number_key =
            service_account(r#""client_email":"a@b","private_key":12345678,"project_id":"p""#);
        let no_email = service_account(
            r#""private_key":"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n""#,
        );
        let list = TempFile::new("list.json", r#"["AAAA"]"#);
        let bad_uri = service_account(&format!(r#"{ACCOUNT},"project_id":"p","token_uri":"AAAA""#));
        let missing = std::env::temp_dir().join("stapes-config-test-no-such-account.json");
        let missing = missing.to_str().expect("UTF-8 temp path");
        let file_key = "incus.fcm_service_account_file";
        let cases = [
            (
                None,
                format!(
                    "{file_key}: is required when gcm_enabled or fcm_enabled is true: the JSON \
                     key of a service account of the Firebase project"
                ),
            ),
            (
                Some(missing),
                format!(
                    "{file_key}: cannot read {missing}: No such file or directory (os error 2)"
                ),
            ),
            (
                Some(not_json.path()),
                format!(
                    "{file_key}: {} is not a service account key: not JSON (line 1, column 2)",
                    not_json.path()
                ),
            ),
            (
                Some(list.path()),
                format!(
                    "{file_key}: {} is not a service account key: not a JSON object",
                    list.path()
                ),
            ),
            (
                Some(no_key.path()),
                format!(
                    "{file_key}: {} is not a service account key: it has no private_key (create \
                     one under Project settings, Service accounts in the Firebase console)",
                    no_key.path()
                ),
            ),
            (
                Some(no_email.path()),
                format!(
                    "{file_key}: {} is not a service account key: it has no client_email (create \
                     one under Project settings, Service accounts in the Firebase console)",
                    no_email.path()
                ),
            ),
            (
                Some(number_key.path()),
                format!(
                    "{file_key}: {} is not a service account key: private_key is not a string",
                    number_key.path()
                ),
            ),
            (
                Some(bad_uri.path()),
                format!(
                    "{file_key}: the token_uri of {} is not an http:// or https:// URL",
                    bad_uri.path()
                ),
            ),
        ];
        for (file, message) in cases {
            let file =
                file.map(|f| format!("  fcm_service_account_file: {f}\n")).unwrap_or_default();
            let text = incus(&format!("  gcm_enabled: true\n{file}"));
            let err = load_err(&text, &no_env);
            assert_eq!(err, message);
            assert!(!err.contains("AAAA") && !err.contains("12345678"), "{err}");
            // Only an enabled platform is checked.
            let off = text.replace("gcm_enabled: true", "gcm_enabled: false");
            assert_eq!(load(&off, &no_env).expect("off loads").incus.push.fcm, None);
        }
        for (keys, message) in [
            (
                "  fcm_url: ftp://x\n",
                r#"incus.fcm_url: expected an http:// or https:// URL, got "ftp://x""#,
            ),
            (
                "  fcm_url: fcm.googleapis.com\n",
                r#"incus.fcm_url: expected an http:// or https:// URL, got "fcm.googleapis.com""#,
            ),
            (
                "  fcm_url: https://fcm.googleapis.com/v1\n",
                "incus.fcm_url: expected a base URL without a path, like \
                 https://fcm.googleapis.com, got \"https://fcm.googleapis.com/v1\"",
            ),
            (
                "  fcm_token_url: https://\n",
                r#"incus.fcm_token_url: expected an http:// or https:// URL, got "https://""#,
            ),
            ("  fcm_enabled: on\n", r#"incus.fcm_enabled: expected true or false, got "on""#),
        ] {
            assert_eq!(load_err(&incus(keys), &no_env), message, "{keys}");
        }
    }

    #[test]
    fn push_keys_from_the_environment() {
        let key = p8();
        let account = service_account(&format!(r#"{ACCOUNT},"project_id":"p""#));
        let text = incus(&format!(
            "  apns_enabled: true\n  apns_key_file: {}\n  apns_key_id: ABC123DEFG\n  \
             apns_team_id: TEAM123456\n  apns_store_topic: t\n  apns_priority: 10\n",
            key.path()
        ));
        // STAPES_INCUS_<KEY> beats the file.
        let env = env_of(&[("STAPES_INCUS_APNS_PRIORITY", "5")]);
        let apns = load(&text, &env).expect("loads").incus.push.apns.expect("apns on");
        assert_eq!(apns.priority, 5);
        let env = env_of(&[("STAPES_INCUS_APNS_PRIORITY", "1")]);
        assert_eq!(
            load_err(&text, &env),
            r#"incus.apns_priority: expected 10 (now) or 5 (power-aware), got "1" (from STAPES_INCUS_APNS_PRIORITY)"#
        );
        let env = env_of(&[("STAPES_INCUS_APNS_KEY_ID", "short")]);
        assert_eq!(
            load_err(&text, &env),
            "incus.apns_key_id: expected the 10 letters or digits Apple shows, got 5 characters \
             (from STAPES_INCUS_APNS_KEY_ID)"
        );
        let env = env_of(&[("STAPES_INCUS_PUSH_QUEUE", "0")]);
        assert_eq!(
            load_err(MINIMAL, &env),
            "incus.push_queue: must be at least 1, got 0 (from STAPES_INCUS_PUSH_QUEUE)"
        );
        // Incus's README variables, below STAPES_*.
        let vars = [
            ("GCM_ENABLED", "true"),
            ("STAPES_INCUS_FCM_SERVICE_ACCOUNT_FILE", account.path()),
            ("IOS_PUSH_SOUND", "ding.aiff"),
            ("ANDROID_ERROR_QUEUE", "Readme_Queue"),
            ("STAPES_INCUS_ANDROID_ERROR_QUEUE", "Stapes_Queue"),
            ("GCM_API_KEY", "AIzaLegacy"),
        ];
        let env = env_of(&vars);
        let c = load(&incus(""), &env).expect("loads");
        let fcm = c.incus.push.fcm.expect("GCM_ENABLED turns FCM on");
        assert_eq!((fcm.project_id.as_str(), fcm.service_account_file), ("p", account.0.clone()));
        assert_eq!(c.incus.push.apns, None);
        assert_eq!(c.incus.push.ios_push_sound, "ding.aiff");
        assert_eq!(c.incus.push.android_error_queue, "Stapes_Queue");
        assert_eq!(
            c.incus.unsupported,
            ["gcm_api_key (the legacy GCM/FCM API is gone; set fcm_service_account_file)"]
        );
        let env = env_of(&[("GCM_ENABLED", "true")]);
        assert!(
            load_err(MINIMAL, &env).starts_with("incus.fcm_service_account_file: is required"),
            "{}",
            load_err(MINIMAL, &env)
        );
        let env = env_of(&[("GCM_ENABLED", "maybe")]);
        assert_eq!(
            load_err(MINIMAL, &env),
            r#"incus.gcm_enabled: expected true or false, got "maybe" (from GCM_ENABLED)"#
        );
        let env = env_of(&[("APNS_ENABLED", "true")]);
        assert_eq!(
            load_err(MINIMAL, &env),
            format!(
                "incus.apns_enabled: {} (from APNS_ENABLED)",
                super::super::push::NO_APNS_BUILD
            )
        );
        let env = env_of(&[("APNS_ENABLED", "true"), ("STAPES_INCUS_APNS_ENABLED", "false")]);
        assert_eq!(load(MINIMAL, &env).expect("STAPES_ wins").incus.push.apns, None);
    }
}
