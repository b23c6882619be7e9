use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use xenvt_agent::xs::{Xs, XS_TIMEOUT};
use xenvt_agent::{Agent, Config, Error};

/// The xenvt domU agent: carries local connections to dom0 over a shared-memory
/// channel, and dom0's connections to allowed guest-local services.
#[derive(Parser)]
#[command(name = "xenvt-agent", version)]
struct Args {
    /// TOML configuration; without it, /etc/xenvt/agent.toml if present, else
    /// the defaults (listen on 127.0.0.1:5500 as service `vnc`).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Check the configuration and exit.
    #[arg(long)]
    check: bool,
    /// Log filter (tracing's env-filter syntax); overrides XENVT_LOG.
    #[arg(long)]
    log: Option<String>,
}

const DEFAULT_CONFIG: &str = "/etc/xenvt/agent.toml";

fn load(args: &Args) -> Result<Config, Error> {
    match &args.config {
        Some(f) => Config::load(f),
        None if std::path::Path::new(DEFAULT_CONFIG).exists() => {
            Config::load(DEFAULT_CONFIG.as_ref())
        }
        None => Ok(Config::default()),
    }
}

async fn run(cfg: Config) -> Result<(), Error> {
    // Before anything can say ready: a signal from then on must stop us cleanly.
    let shutdown = xenvt_ring::signal::Shutdown::register()?;
    let platform = xenvt_ring::platform::from_env()?;
    let client = tokio::time::timeout(XS_TIMEOUT, xenvt_ring::xenstore::XsClient::connect())
        .await
        .map_err(|_| Error::XsTimeout {
            op: "connect",
            path: String::new(),
        })??;
    let agent = Agent::new(cfg, platform, Xs::new(client)).await?;
    agent.run(shutdown.wait()).await
}

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = args
        .log
        .as_deref()
        .map(tracing_subscriber::EnvFilter::new)
        .or_else(|| tracing_subscriber::EnvFilter::try_from_env("XENVT_LOG").ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cfg = match load(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("xenvt-agent: {e}");
            return ExitCode::from(2);
        }
    };
    if args.check {
        println!("configuration ok");
        return ExitCode::SUCCESS;
    }
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("xenvt-agent: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xenvt-agent: {e}");
            ExitCode::FAILURE
        }
    }
}
