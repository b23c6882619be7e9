//! `xenvt-proxy`: the command line around [`xenvt_proxy::daemon::run`].

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use xenvt_proxy::config::Config;
use xenvt_ring::config::Load;
use xenvt_ring::daemon::{self, Options};

/// The console-and-desktop VNC proxy of xenvt.
#[derive(Parser, Debug)]
#[command(name = "xenvt-proxy", version)]
struct Cli {
    /// The configuration file (TOML).
    #[arg(short, long)]
    config: PathBuf,
    /// Control socket for metrics and status (overrides control.socket).
    #[arg(long)]
    control: Option<PathBuf>,
    #[command(flatten)]
    daemon: Options,
}

fn load(cli: &Cli) -> xenvt_proxy::Result<Config> {
    let mut cfg = Config::load(&cli.config)?;
    if let Some(c) = &cli.control {
        cfg.control = Some(c.clone());
    }
    Ok(cfg)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    daemon::run(
        "xenvt-proxy",
        &cli.daemon,
        || load(&cli),
        |cfg, shutdown| xenvt_proxy::daemon::run(cfg, shutdown.wait()),
    )
}
