use common::config::Settings;
use order::OrderSettings;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let settings = OrderSettings::load();
    let _telemetry = common::telemetry::init("order", &settings.log);
    common::telemetry::exit_code(run(settings).await)
}

async fn run(settings: OrderSettings) -> anyhow::Result<()> {
    let reconciler = settings.reconciler_config();
    let app = order::build(settings.into_config(), Some(reconciler)).await?;
    tracing::info!(addr = %app.local_addr(), "order service listening");
    app.run_until_stopped(common::http::shutdown_signal()).await
}
