//! Logging set-up. Services log to stdout; `RUST_LOG` filters (default
//! `info,sqlx=warn,lapin=warn`), and `LOG_FORMAT=json` switches to one JSON object a line
//! for log shippers. Both are [`LogSettings`], part of every service's settings.

use std::io::IsTerminal;

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Logging")]
pub struct LogSettings {
    /// Log filter (tracing-subscriber's `EnvFilter` directives).
    #[arg(long, env = "RUST_LOG", default_value = "info,sqlx=warn,lapin=warn", value_parser = log_filter)]
    pub rust_log: String,
    /// `text`, or `json` for one JSON object per line.
    #[arg(long, env = "LOG_FORMAT", value_enum, ignore_case = true, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// A filter that does not parse is refused (it used to fall back to the default silently).
fn log_filter(directives: &str) -> Result<String, String> {
    EnvFilter::try_new(directives)
        .map(|_| directives.to_string())
        .map_err(|e| e.to_string())
}

pub fn init(service: &'static str, settings: &LogSettings) {
    // Checked when the settings were parsed; the default is only for settings built in code.
    let filter = EnvFilter::try_new(&settings.rust_log)
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,lapin=warn"));
    let registry = tracing_subscriber::registry().with(filter);
    let result = match settings.log_format {
        LogFormat::Json => registry.with(fmt::layer().json()).try_init(),
        LogFormat::Text => {
            // Colours only on a terminal: log files stay plain text.
            let ansi = std::io::stdout().is_terminal();
            registry.with(fmt::layer().with_ansi(ansi)).try_init()
        }
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
