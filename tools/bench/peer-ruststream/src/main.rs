//! `peer-ruststream order|pay`: one side of the peer as its own process, configured by the
//! environment (`Config::from_env`). The role is the first argument, or `PEER_ROLE` when there
//! is none (test-kit's `ServiceProcess` starts a binary without arguments).

use std::process::ExitCode;

use anyhow::Context as _;
use peer_ruststream::{Config, Role};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    match start().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn start() -> anyhow::Result<()> {
    let role: Role = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("PEER_ROLE").ok())
        .context("usage: peer-ruststream order|pay (or PEER_ROLE=order|pay)")?
        .parse()?;
    let cfg = Config::from_env()?;
    peer_ruststream::run(role, cfg).await
}
