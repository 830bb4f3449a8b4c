//! The `stapes` binary: reads the configuration, starts the shards, waits
//! for a signal. Everything else lives in the library.

// The command line's answers (--help, --version, --check-config) belong on stdout.
#![allow(clippy::print_stdout)]

use std::{path::PathBuf, process::ExitCode, str::FromStr};

use stapes::{config, server};
use tracing_subscriber::filter::Targets;

const USAGE: &str = "\
usage: stapes [--config FILE]
       stapes --check-config FILE
       stapes doctor [--config FILE]
       stapes --help | --version

Without --config, stapes serves one app from STAPES_APP_ID, STAPES_APP_KEY,
STAPES_APP_SECRET and STAPES_APP_CLIENT_EVENTS on STAPES_HOST:STAPES_PORT
(default 127.0.0.1:6001). See config.yml for every setting.
`stapes doctor` checks that this host can hold server.max_connections.";

enum Mode {
    Run(Option<PathBuf>),
    Check(PathBuf),
    Doctor(Option<PathBuf>),
}

fn main() -> ExitCode {
    let mode = match parse_args(std::env::args().skip(1)) {
        Ok(Some(mode)) => mode,
        Ok(None) => return ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("stapes: {msg}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let env = |key: &str| std::env::var(key).ok();
    let loaded = match &mode {
        Mode::Run(Some(path)) | Mode::Check(path) | Mode::Doctor(Some(path)) => {
            config::load_file(path, &env)
        }
        Mode::Run(None) | Mode::Doctor(None) => config::embedded_default(&env),
    };
    let config = match loaded {
        Ok(config) => config,
        Err(e) => {
            eprintln!("stapes: invalid configuration: {e}");
            return ExitCode::from(78);
        }
    };
    if let Mode::Check(path) = &mode {
        println!("{}: OK ({} apps)", path.display(), config.apps.len());
        return ExitCode::SUCCESS;
    }
    if let Mode::Doctor(_) = &mode {
        let driver = match server::Runtime::from_env(env("STAPES_IO_DRIVER").as_deref()) {
            Ok(driver) => driver,
            Err(e) => {
                eprintln!("stapes: {e}");
                return ExitCode::from(78);
            }
        };
        let (report, ok) = stapes::io::doctor::run(&config, driver);
        print!("{report}");
        return if ok { ExitCode::SUCCESS } else { ExitCode::from(1) };
    }
    let filter = match Targets::from_str(&config.server.log) {
        Ok(filter) => filter,
        Err(e) => {
            eprintln!("stapes: invalid configuration: server.log: {e}");
            return ExitCode::from(78);
        }
    };
    use tracing_subscriber::{layer::SubscriberExt as _, util::SubscriberInitExt as _};
    tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(false))
        .with(filter)
        .init();
    let driver = match server::Runtime::from_env(env("STAPES_IO_DRIVER").as_deref()) {
        Ok(driver) => driver,
        Err(e) => {
            eprintln!("stapes: {e}");
            return ExitCode::from(78);
        }
    };
    match server::run(config, driver) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("stapes: {e}");
            ExitCode::FAILURE
        }
    }
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Option<Mode>, String> {
    let mut mode = Mode::Run(None);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--config" | "-c" => {
                let path = args.next().ok_or("--config needs a file")?;
                mode = match mode {
                    Mode::Doctor(_) => Mode::Doctor(Some(path.into())),
                    _ => Mode::Run(Some(path.into())),
                };
            }
            "doctor" => {
                let path = match mode {
                    Mode::Run(path) | Mode::Doctor(path) => path,
                    Mode::Check(path) => Some(path),
                };
                mode = Mode::Doctor(path);
            }
            "--check-config" => {
                let path = args.next().ok_or("--check-config needs a file")?;
                mode = Mode::Check(path.into());
            }
            "--help" | "-h" => {
                println!("{USAGE}");
                return Ok(None);
            }
            "--version" | "-V" => {
                println!("stapes {}", env!("CARGO_PKG_VERSION"));
                return Ok(None);
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Some(mode))
}
