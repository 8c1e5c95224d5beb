use pay::{Application, PayConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    common::telemetry::init("pay");
    let app = Application::build(PayConfig::from_env()?).await?;
    tracing::info!(addr = %app.local_addr(), "pay service listening");
    app.run_until_stopped(common::http::shutdown_signal()).await
}
