//! `xenvt-proxy`: the command line around [`xenvt_proxy::daemon::run`].

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// The console-and-desktop VNC proxy of xenvt.
#[derive(Parser, Debug)]
#[command(version)]
struct Cli {
    /// The configuration file (TOML).
    #[arg(short, long)]
    config: PathBuf,
    /// Check the configuration and exit.
    #[arg(long)]
    check: bool,
    /// Control socket for metrics and status (overrides control.socket).
    #[arg(long)]
    control: Option<PathBuf>,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("XENVT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let mut cfg = match xenvt_proxy::config::Config::load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("xenvt-proxy: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(c) = cli.control {
        cfg.control = Some(c);
    }
    if cli.check {
        println!("xenvt-proxy: configuration ok");
        return ExitCode::SUCCESS;
    }
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("xenvt-proxy: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(async {
        // Before anything can say ready: a signal from then on must stop us cleanly.
        let shutdown = xenvt_ring::signal::Shutdown::register()
            .map_err(|e| xenvt_proxy::Error::io("signal handlers", e))?;
        xenvt_proxy::daemon::run(cfg, shutdown.wait()).await
    }) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xenvt-proxy: {e}");
            ExitCode::FAILURE
        }
    }
}
