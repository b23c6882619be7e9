use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use xenvt_backend::config::{DomainSel, CONTROL_NAME};
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
    if let Some(d) = &args.run_dir {
        if !d.is_absolute() {
            return Err(Error::Config(xenvt_ring::config::ConfigError::new(
                None,
                format!("--run-dir {} is relative", d.display()),
                "give --run-dir an absolute path",
            )));
        }
        // A control socket that followed run_dir keeps following it.
        let followed = cfg.control == cfg.run_dir.join(CONTROL_NAME);
        cfg.run_dir = d.clone();
        if followed {
            cfg.control = cfg.run_dir.join(CONTROL_NAME);
        }
    }
    if let Some(c) = &args.control {
        if !c.is_absolute() {
            return Err(Error::Config(xenvt_ring::config::ConfigError::new(
                None,
                format!("--control {} is relative", c.display()),
                "give --control an absolute path",
            )));
        }
        cfg.control = c.clone();
    }
    if !args.domains.is_empty() {
        cfg.domains = Some(
            args.domains
                .iter()
                .map(|s| match s.parse::<u16>() {
                    Ok(id) => DomainSel::Id(id),
                    Err(_) => DomainSel::Name(s.clone()),
                })
                .collect(),
        );
    }
    Ok(cfg)
}

fn main() -> ExitCode {
    let args = Args::parse();
    daemon::run(
        "xenvt-backend",
        &args.daemon,
        || load(&args),
        |cfg, shutdown| async {
            let platform = xenvt_ring::platform::from_env()?;
            let backend = Backend::new(cfg, platform, Xs::connect().await?).await?;
            backend.run(shutdown.wait()).await
        },
    )
}
