use gateway::{Application, GatewayConfig};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let config = GatewayConfig::from_env()?;
    let app = Application::build(config).await?;
    app.run_until_stopped(common::http::shutdown_signal()).await
}
