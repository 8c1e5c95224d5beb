use order::{Application, OrderConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    common::telemetry::init("order");
    let app = Application::build(OrderConfig::from_env()?).await?;
    tracing::info!(addr = %app.local_addr(), "order service listening");
    app.run_until_stopped(common::http::shutdown_signal()).await
}
