use pay::{Application, PayConfig};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    common::telemetry::init("pay");
    common::telemetry::exit_code(run().await)
}

async fn run() -> anyhow::Result<()> {
    let app = Application::build(PayConfig::from_env()?).await?;
    tracing::info!(addr = %app.local_addr(), "pay service listening");
    app.run_until_stopped(common::http::shutdown_signal()).await
}
