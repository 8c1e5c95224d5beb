use common::config::Settings;
use gateway::{Application, GatewaySettings};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let settings = GatewaySettings::load();
    let _telemetry = common::telemetry::init("gateway", &settings.log);
    common::telemetry::exit_code(run(settings).await)
}

async fn run(settings: GatewaySettings) -> anyhow::Result<()> {
    let app = Application::build(settings.into_config()?).await?;
    tracing::info!(addr = %app.local_addr(), "gateway listening");
    app.run_until_stopped(common::http::shutdown_signal()).await
}
