use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use xenvt_backend::{Backend, Config, Error};
use xenvt_ring::config::Load;
use xenvt_ring::daemon::{self, Options};
use xenvt_ring::xenstore::Xs;

/// The xenvt dom0 backend: maps guests' channels and carries their streams to
/// dom0 services, and dom0 connections into the guests.
#[derive(Parser)]
#[command(name = "xenvt-backend", version)]
struct Args {
    /// TOML configuration; without it, /etc/xenvt/backend.toml if present, else
    /// the defaults (every domain, no services).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Socket directory root (overrides run_dir).
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// Control socket for metrics and status (overrides control.socket).
    #[arg(long)]
    control: Option<PathBuf>,
    /// Serve only this domain (name or id); repeatable; overrides `domains`.
    #[arg(long = "domain")]
    domains: Vec<String>,
    #[command(flatten)]
    daemon: Options,
}

const DEFAULT_CONFIG: &str = "/etc/xenvt/backend.toml";

fn load(args: &Args) -> Result<Config, Error> {
    let mut cfg = Config::load_or_default(args.config.as_deref(), DEFAULT_CONFIG.as_ref())?;
    cfg.apply_flags(
        args.run_dir.as_deref(),
        args.control.as_deref(),
        &args.domains,
    )?;
    Ok(cfg)
}

fn main() -> ExitCode {
    let args = Args::parse();
    daemon::run(
        Args::command(),
        &args.daemon,
        || load(&args),
        |cfg, shutdown| async {
            let platform = xenvt_ring::platform::from_env()?;
            let backend = Backend::new(cfg, platform, Xs::connect().await?).await?;
            backend.run(shutdown.wait()).await
        },
    )
}
