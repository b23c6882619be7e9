//! `xenvt-proxy`: the command line around [`xenvt_proxy::daemon::run`].

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use xenvt_proxy::config::Config;
use xenvt_ring::config::{ConfigError, Load};
use xenvt_ring::daemon::{self, Options};

/// The console-and-desktop VNC proxy of xenvt.
#[derive(Parser, Debug)]
#[command(name = "xenvt-proxy", version)]
struct Cli {
    /// The configuration file (TOML).
    #[arg(short, long, required_unless_present = "print_man")]
    config: Option<PathBuf>,
    /// Control socket for metrics and status (overrides control.socket).
    #[arg(long)]
    control: Option<PathBuf>,
    #[command(flatten)]
    daemon: Options,
}

fn load(cli: &Cli) -> xenvt_proxy::Result<Config> {
    // Only `--print-man` goes without --config, and it never loads one.
    let Some(file) = &cli.config else {
        return Err(ConfigError::new(None, "no --config", "give --config FILE").into());
    };
    let mut cfg = Config::load(file)?;
    if let Some(c) = &cli.control {
        cfg.control = Some(c.clone());
    }
    Ok(cfg)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    daemon::run(
        Cli::command(),
        &cli.daemon,
        || load(&cli),
        |cfg, shutdown| xenvt_proxy::daemon::run(cfg, shutdown.wait()),
    )
}
