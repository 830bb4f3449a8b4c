//! The `stapes` binary: reads the configuration, starts the shards, waits
//! for a signal. Everything else lives in the library.

// The command line's answers (--help, --version, --check-config) belong on stdout.
#![allow(clippy::print_stdout)]

use std::{path::PathBuf, process::ExitCode};

use clap::{Arg, Command, value_parser};
use signal_hook::{
    consts::{SIGINT, SIGTERM},
    iterator::Signals,
};
use stapes::{config, server};

/// IPÊ's command line, Go's flags with one dash: `-config FILE` (or
/// `-config=FILE`) becomes `--config`, and glog's logging flags, which a
/// unit file for IPÊ may pass, are dropped with a note (stapes logs to
/// stderr at `server.log`). Without this, clap would read `-config` as
/// `-c onfig`.
fn go_flags(args: impl Iterator<Item = std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    const GLOG_SWITCHES: [&str; 2] = ["-logtostderr", "-alsologtostderr"];
    const GLOG_VALUES: [&str; 5] =
        ["-log_dir", "-v", "-stderrthreshold", "-vmodule", "-log_backtrace_at"];
    let mut out = Vec::new();
    let mut args = args.peekable();
    while let Some(arg) = args.next() {
        let Some(text) = arg.to_str() else {
            out.push(arg);
            continue;
        };
        let (flag, value) = text.split_once('=').map_or((text, None), |(f, v)| (f, Some(v)));
        if flag == "-config" {
            out.push(match value {
                Some(value) => format!("--config={value}").into(),
                None => "--config".into(),
            });
        } else if GLOG_SWITCHES.contains(&flag) || GLOG_VALUES.contains(&flag) {
            eprintln!(
                "stapes: ignoring IPÊ's logging flag {flag}; stapes logs to stderr (server.log)"
            );
            if value.is_none() && GLOG_VALUES.contains(&flag) {
                args.next();
            }
        } else {
            out.push(arg);
        }
    }
    out
}

/// The command line.
fn command() -> Command {
    let file = || Arg::new("").value_name("FILE").value_parser(value_parser!(PathBuf));
    Command::new("stapes")
        .version(env!("CARGO_PKG_VERSION"))
        .about("A realtime messaging server: Pusher Channels protocol 7 and Incus")
        .override_usage(
            "stapes [--config FILE | -config FILE]\n       stapes --check-config FILE\n       \
             stapes doctor [--config FILE]\n       stapes --help | --version",
        )
        .subcommand(
            Command::new("doctor")
                .about(
                    "Check that this host can hold server.max_connections, and say how to fix it",
                )
                .arg(
                    file()
                        .id("config")
                        .short('c')
                        .long("config")
                        .help("The config to check against"),
                ),
        )
        .arg(file().id("config").short('c').long("config").help("Serve with this config file"))
        .arg(
            file()
                .id("check-config")
                .long("check-config")
                .conflicts_with("config")
                .help("Load and check this config file, then exit (78 if it is invalid)"),
        )
        .after_help(
            "Without --config, stapes serves one app from STAPES_APP_ID, STAPES_APP_KEY,\n\
             STAPES_APP_SECRET and STAPES_APP_CLIENT_EVENTS on STAPES_HOST:STAPES_PORT\n\
             (default 127.0.0.1:6001). See config.yml for every setting; an IPÊ\n\
             config file is read as it stands.",
        )
}

fn main() -> ExitCode {
    // Exits 2 on a bad command line, 0 after --help and --version.
    let args = command().get_matches_from(go_flags(std::env::args_os()));
    // Variables whose name or value is not UTF-8 cannot name or set a key.
    let env: config::Env = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();
    let doctor = args.subcommand_matches("doctor");
    let check = args.get_one::<PathBuf>("check-config");
    let config_file = doctor.map_or_else(
        || check.or(args.get_one::<PathBuf>("config")),
        |d| d.get_one::<PathBuf>("config"),
    );
    let loaded = match config_file {
        Some(path) => config::load_file(path, &env),
        None => config::embedded_default(&env),
    };
    let config = match loaded {
        Ok(config) => config,
        Err(e) => {
            eprintln!("stapes: invalid configuration: {e}");
            return ExitCode::from(78);
        }
    };
    if let Some(path) = check {
        println!("{}: OK ({} apps)", path.display(), config.apps.len());
        return ExitCode::SUCCESS;
    }
    let driver = match server::IoDriver::from_env(env.get("STAPES_IO_DRIVER").map(String::as_str)) {
        Ok(driver) => driver,
        Err(e) => {
            eprintln!("stapes: {e}");
            return ExitCode::from(78);
        }
    };
    if doctor.is_some() {
        let (report, ok) = stapes::io::doctor::run(&config, driver);
        print!("{report}");
        return if ok { ExitCode::SUCCESS } else { ExitCode::from(1) };
    }
    if let Err(e) = stapes::io::logging::init(&config.server.log) {
        eprintln!("stapes: invalid configuration: server.log: {e}");
        return ExitCode::from(78);
    }
    match serve(config, driver) {
        Ok(()) => ExitCode::SUCCESS,
        // The TLS files are read only here, but they are configuration.
        Err(e @ server::RunError::Tls(_)) => {
            tracing::error!("{e}");
            eprintln!("stapes: invalid configuration: {e}");
            ExitCode::from(78)
        }
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("stapes: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Binds, turns SIGTERM and SIGINT into a graceful shutdown, and serves.
fn serve(config: config::Config, driver: server::IoDriver) -> Result<(), server::RunError> {
    // Registered before anything starts, so a signal during start-up is
    // not fatal by default.
    let mut signals = Signals::new([SIGTERM, SIGINT])?;
    let shutdown = server::Shutdown::new();
    let trigger = shutdown.clone();
    std::thread::Builder::new().name("stapes-signals".to_owned()).spawn(move || {
        if let Some(signal) = signals.forever().next() {
            tracing::info!(signal, "signal received");
            trigger.trigger();
        }
    })?;
    let listeners = server::Listeners::bind(&config)?.with_driver(driver);
    server::run(listeners, config, shutdown)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_consistent() {
        super::command().debug_assert();
    }
}
