use common::config::Settings;
use order::{Application, OrderSettings};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let settings = OrderSettings::load();
    common::telemetry::init("order", &settings.log);
    common::telemetry::exit_code(run(settings).await)
}

async fn run(settings: OrderSettings) -> anyhow::Result<()> {
    let reconciler = settings.reconciler_config();
    let app = Application::build_with_reconciler(settings.into_config(), reconciler).await?;
    tracing::info!(addr = %app.local_addr(), "order service listening");
    app.run_until_stopped(common::http::shutdown_signal()).await
}
