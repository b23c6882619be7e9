use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use xenvt_backend::config::{DomainSel, CONTROL_NAME};
use xenvt_backend::xs::{Xs, XS_TIMEOUT};
use xenvt_backend::{Backend, Config, Error};

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
    /// Check the configuration and exit.
    #[arg(long)]
    check: bool,
    /// Log filter (tracing's env-filter syntax); overrides XENVT_LOG.
    #[arg(long)]
    log: Option<String>,
}

const DEFAULT_CONFIG: &str = "/etc/xenvt/backend.toml";

fn load(args: &Args) -> Result<Config, Error> {
    let mut cfg = match &args.config {
        Some(f) => Config::load(f)?,
        None if std::path::Path::new(DEFAULT_CONFIG).exists() => {
            Config::load(DEFAULT_CONFIG.as_ref())?
        }
        None => Config::default(),
    };
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
    let backend = Backend::new(cfg, platform, Xs::new(client)).await?;
    backend.run(shutdown.wait()).await
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
            eprintln!("xenvt-backend: {e}");
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
            eprintln!("xenvt-backend: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xenvt-backend: {e}");
            ExitCode::FAILURE
        }
    }
}
