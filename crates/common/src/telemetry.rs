//! Logging set-up. Services log to stdout; `RUST_LOG` filters (default `info`), and
//! `LOG_FORMAT=json` switches to one JSON object a line for log shippers.

use std::io::IsTerminal;

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

pub fn init(service: &'static str) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,lapin=warn"));
    let json = std::env::var("LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let registry = tracing_subscriber::registry().with(filter);
    let result = if json {
        registry.with(fmt::layer().json()).try_init()
    } else {
        // Colours only on a terminal: log files stay plain text.
        let ansi = std::io::stdout().is_terminal();
        registry.with(fmt::layer().with_ansi(ansi)).try_init()
    };
    if result.is_ok() {
        tracing::info!(service, version = env!("CARGO_PKG_VERSION"), "starting");
    }
}

/// Ends `main`: a failure is printed as one line with its causes (not a backtrace) and
/// the process exits with status 1.
pub fn exit_code(result: anyhow::Result<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "fatal");
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
