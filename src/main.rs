//! The `stapes` binary: reads the configuration, starts the shards, waits
//! for a signal. Everything else lives in the library.

// The command line's answers (--help, --version, --check-config) belong on stdout.
#![allow(clippy::print_stdout)]

use std::{path::PathBuf, process::ExitCode};

use stapes::{config, server};

const USAGE: &str = "\
usage: stapes [--config FILE]
       stapes --check-config FILE
       stapes --help | --version

Without --config, stapes serves one app from STAPES_APP_ID, STAPES_APP_KEY,
STAPES_APP_SECRET and STAPES_APP_CLIENT_EVENTS on STAPES_HOST:STAPES_PORT
(default 127.0.0.1:6001). See config.yml for every setting.";

enum Mode {
    Run(Option<PathBuf>),
    Check(PathBuf),
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
        Mode::Run(Some(path)) | Mode::Check(path) => config::load_file(path, &env),
        Mode::Run(None) => config::embedded_default(&env),
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
    if let Err(e) = stapes::io::logging::init(&config.server.log) {
        eprintln!("stapes: invalid configuration: server.log: {e}");
        return ExitCode::from(78);
    }
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
                mode = Mode::Run(Some(path.into()));
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
