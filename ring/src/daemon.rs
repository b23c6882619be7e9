//! What the daemons (agent, backend, proxy) do between `main` and their own
//! work, in one place so they behave alike: log set-up, the configuration,
//! `--check`, the runtime, the signal handlers and the exit status.
//!
//! A daemon that stops prints one line, `<program>: <error>`, and exits with
//! [`EXIT_CONFIG`] for a configuration it refuses, 1 for anything else.

use std::fmt::Display;
use std::future::Future;
use std::process::ExitCode;

use crate::signal::Shutdown;

/// The exit status for a configuration error (LSB's "invalid argument").
pub const EXIT_CONFIG: u8 = 2;

/// The command-line options every daemon has; `#[command(flatten)]` them.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct Options {
    /// Check the configuration and exit.
    #[arg(long)]
    pub check: bool,
    /// Log filter (tracing's env-filter syntax); overrides XENVT_LOG.
    #[arg(long)]
    pub log: Option<String>,
    /// Print the manual page (roff) and exit: the packages are built with it.
    #[arg(long, hide = true)]
    pub print_man: bool,
}

/// Prints `cmd`'s manual page (roff, section 1) on stdout, as the packages
/// install it; a program's page is made from its clap definition so it cannot
/// drift from `--help`.
pub fn print_man(cmd: clap::Command) -> ExitCode {
    let mut out = std::io::stdout().lock();
    match clap_mangen::Man::new(cmd).render(&mut out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cannot write the manual page: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr (journald under systemd), filtered by `filter` (`--log`), else
/// by `XENVT_LOG`, else at `info`. Colours only on a terminal. A second call
/// keeps the first set-up.
pub fn init_logging(filter: Option<&str>) {
    use tracing_subscriber::EnvFilter;
    let filter = filter
        .map(EnvFilter::new)
        .or_else(|| EnvFilter::try_from_env("XENVT_LOG").ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// A daemon's whole `main`: logging, `load` (its error exits with
/// [`EXIT_CONFIG`]), `--check`, a runtime, then `body` with the configuration
/// and the signal handlers. `cmd` (the daemon's clap command) names the program
/// in messages and makes `--print-man`'s page.
///
/// SIGTERM and SIGINT are registered before `body` starts, so nothing the body
/// prints (its ready line) can come before them: a signal right after "ready"
/// stops the daemon through [`Shutdown`], never by the default action.
pub fn run<C, E, B, F, R>(
    cmd: clap::Command,
    opts: &Options,
    load: impl FnOnce() -> Result<C, E>,
    body: B,
) -> ExitCode
where
    E: Display,
    B: FnOnce(C, Shutdown) -> F,
    F: Future<Output = Result<(), R>>,
    R: Display,
{
    if opts.print_man {
        return print_man(cmd);
    }
    let prog = cmd.get_name();
    init_logging(opts.log.as_deref());
    let cfg = match load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{prog}: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if opts.check {
        println!("configuration ok");
        return ExitCode::SUCCESS;
    }
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{prog}: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let r = rt.block_on(async {
        let shutdown = Shutdown::register().map_err(|e| format!("signal handlers: {e}"))?;
        body(cfg, shutdown).await.map_err(|e| e.to_string())
    });
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{prog}: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(check: bool) -> Options {
        Options {
            check,
            ..Options::default()
        }
    }

    fn cmd() -> clap::Command {
        clap::Command::new("t")
    }

    #[test]
    fn a_config_error_exits_2_before_anything_runs() {
        let r = run(
            cmd(),
            &opts(false),
            || Err::<(), _>("bad"),
            |_, _| async { panic!("the body must not run") as Result<(), String> },
        );
        assert_eq!(r, ExitCode::from(EXIT_CONFIG));
    }

    #[test]
    fn check_stops_after_the_config() {
        let r = run(
            cmd(),
            &opts(true),
            || Ok::<_, String>(()),
            |_, _| async { panic!("the body must not run") as Result<(), String> },
        );
        assert_eq!(r, ExitCode::SUCCESS);
    }

    #[test]
    fn a_body_error_exits_1() {
        let r = run(
            cmd(),
            &opts(false),
            || Ok::<_, String>(7),
            |n, _| async move { Err(format!("failed with {n}")) },
        );
        assert_eq!(r, ExitCode::FAILURE);
    }

    /// The CI failure this module guards against: a signal as soon as the body
    /// runs (where a daemon says "ready") ends the wait, not the process.
    #[test]
    fn the_handlers_are_in_place_when_the_body_starts() {
        let r = run(
            cmd(),
            &opts(false),
            || Ok::<_, String>(()),
            |(), shutdown| async move {
                nix::sys::signal::raise(nix::sys::signal::Signal::SIGINT)
                    .map_err(|e| e.to_string())?;
                shutdown.wait().await;
                Ok::<_, String>(())
            },
        );
        assert_eq!(r, ExitCode::SUCCESS);
    }
}
