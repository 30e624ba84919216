use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    devctl_proto::process::init_tracing();
    devctl_proto::pki::install_crypto_provider();
    let config = devctl_agent::Config::parse();
    match devctl_agent::run(config, devctl_proto::process::shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "devctl-agent failed");
            eprintln!("devctl-agent: {e}");
            ExitCode::FAILURE
        }
    }
}
