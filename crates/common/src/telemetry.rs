//! Logging set-up. Services log to stdout; `RUST_LOG` filters (default
//! `info,sqlx=warn,lapin=warn`), and `LOG_FORMAT=json` switches to one JSON object a line
//! for log shippers. Both are [`LogSettings`], part of every service's settings.
//!
//! Spans also go to OpenTelemetry (see [`crate::trace`]): always, so that every span has a
//! trace id to log, and to an OTLP collector when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.

use std::io::IsTerminal;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::{Resource, trace::SdkTracerProvider};
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
    /// OTLP/HTTP (protobuf) collector base URL, e.g. `http://127.0.0.1:4318`: spans are
    /// exported to `<url>/v1/traces`. Empty: nothing is exported.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", default_value = "")]
    pub otel_exporter_otlp_endpoint: String,
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

/// Exports the spans still buffered when dropped: keep it until `main` returns.
#[must_use = "dropping it stops the span export"]
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        let _ = self.provider.shutdown();
    }
}

pub fn init(service: &'static str, settings: &LogSettings) -> Telemetry {
    // Checked when the settings were parsed; the default is only for settings built in code.
    let filter = EnvFilter::try_new(&settings.rust_log)
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,lapin=warn"));
    let (provider, export_error) = tracer_provider(service, &settings.otel_exporter_otlp_endpoint);
    let otel = tracing_opentelemetry::layer().with_tracer(provider.tracer(service));
    let registry = tracing_subscriber::registry().with(filter).with(otel);
    let result = match settings.log_format {
        // The spans' fields (trace_id, order_id, message_id…) on every line.
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_span_list(true),
            )
            .try_init(),
        LogFormat::Text => {
            // Colours only on a terminal: log files stay plain text.
            let ansi = std::io::stdout().is_terminal();
            registry.with(fmt::layer().with_ansi(ansi)).try_init()
        }
    };
    if result.is_ok() {
        tracing::info!(service, version = env!("CARGO_PKG_VERSION"), "starting");
        if let Some(error) = export_error {
            tracing::warn!(%error, "spans are not exported");
        }
    }
    Telemetry { provider }
}

/// Spans get their ids from the SDK in any case; an exporter only with an endpoint. An
/// exporter that cannot be built is reported, not fatal: tracing is not the service's job.
fn tracer_provider(service: &'static str, endpoint: &str) -> (SdkTracerProvider, Option<String>) {
    let builder = SdkTracerProvider::builder()
        .with_resource(Resource::builder().with_service_name(service).build());
    let endpoint = endpoint.trim().trim_end_matches('/');
    if endpoint.is_empty() {
        return (builder.build(), None);
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(format!("{endpoint}/v1/traces"))
        .build();
    match exporter {
        Ok(exporter) => (builder.with_batch_exporter(exporter).build(), None),
        Err(e) => (builder.build(), Some(e.to_string())),
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
