use gateway::{Application, GatewayConfig};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    common::telemetry::init("gateway");
    common::telemetry::exit_code(run().await)
}

async fn run() -> anyhow::Result<()> {
    let app = Application::build(GatewayConfig::from_env()?).await?;
    tracing::info!(addr = %app.local_addr(), "gateway listening");
    app.run_until_stopped(common::http::shutdown_signal()).await
}
