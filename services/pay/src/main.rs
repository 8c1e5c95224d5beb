use common::config::Settings;
use pay::PaySettings;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let settings = PaySettings::load();
    let _telemetry = common::telemetry::init("pay", &settings.log);
    common::telemetry::exit_code(run(settings).await)
}

async fn run(settings: PaySettings) -> anyhow::Result<()> {
    let app = pay::build(settings.into_config()).await?;
    tracing::info!(addr = %app.local_addr(), "pay service listening");
    app.run_until_stopped(common::http::shutdown_signal()).await
}
