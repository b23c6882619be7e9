use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use xenvt_agent::{Agent, Config};
use xenvt_ring::config::Load;
use xenvt_ring::daemon::{self, Options};
use xenvt_ring::xenstore::Xs;

/// The xenvt domU agent: carries local connections to dom0 over a shared-memory
/// channel, and dom0's connections to allowed guest-local services.
#[derive(Parser)]
#[command(name = "xenvt-agent", version)]
struct Args {
    /// TOML configuration; without it, /etc/xenvt/agent.toml if present, else
    /// the defaults (listen on 127.0.0.1:5500 as service `vnc`).
    #[arg(long, short)]
    config: Option<PathBuf>,
    #[command(flatten)]
    daemon: Options,
}

const DEFAULT_CONFIG: &str = "/etc/xenvt/agent.toml";

fn main() -> ExitCode {
    let args = Args::parse();
    let load = || Config::load_or_default(args.config.as_deref(), DEFAULT_CONFIG.as_ref());
    daemon::run(Args::command(), &args.daemon, load, |cfg, shutdown| async {
        let platform = xenvt_ring::platform::from_env()?;
        let agent = Agent::new(cfg, platform, Xs::connect().await?).await?;
        agent.run(shutdown.wait()).await
    })
}
