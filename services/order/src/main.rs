use order::{Application, OrderConfig};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    common::telemetry::init("order");
    common::telemetry::exit_code(run().await)
}

async fn run() -> anyhow::Result<()> {
    let app = Application::build(OrderConfig::from_env()?).await?;
    tracing::info!(addr = %app.local_addr(), "order service listening");
    app.run_until_stopped(common::http::shutdown_signal()).await
}
