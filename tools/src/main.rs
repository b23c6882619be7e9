//! `xenvt`: the simulated Xen host, the smoke run and the benchmarks.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use xenvt::sim::control::{DomainRef, Reply, Request};

#[derive(Parser)]
#[command(
    name = "xenvt",
    version,
    about = "xenvt: Xen guest consoles and desktops over shared memory"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The simulated Xen host.
    Sim {
        /// Host directory (default: $XENVT_SIM_DIR, /run/xenvt-sim for root, else per user).
        #[arg(long, global = true)]
        dir: Option<PathBuf>,
        #[command(subcommand)]
        cmd: SimCmd,
    },
    /// One end of a checked channel transfer (run inside a domain).
    Chan(xenvt::chan::ChanArgs),
    /// Starts a private simulated host and moves checked data both ways between a
    /// guest process and a dom0 process.
    Smoke(xenvt::smoke::SmokeArgs),
    /// The whole chain on a private simulated host: two guests with consoles and
    /// desktops, the backend and the proxy, for viewers to look at.
    Demo(xenvt::demo::DemoArgs),
    /// Per-domain state from the backend's and the proxy's control sockets.
    Status(xenvt::status::StatusArgs),
    /// The whole chain under churn and kill -9 faults, with checked transfers
    /// throughout; prints a table and fails on any mismatch or leak.
    Soak(xenvt::soak::SoakArgs),
    /// Reads screenshots of the proxy's views (for the lab's host side).
    Screen {
        #[command(subcommand)]
        cmd: ScreenCmd,
    },
    /// Benchmarks; each prints `ratio NAME VALUE` lines.
    Bench {
        #[command(subcommand)]
        cmd: BenchCmd,
    },
    /// Prints the manual page (roff); the packages are built with it.
    #[command(hide = true)]
    PrintMan,
}

#[derive(Subcommand)]
enum ScreenCmd {
    /// Prints the text of a console-view screenshot (PPM), cell by cell.
    Text(xenvt::screen::TextArgs),
}

#[derive(Subcommand)]
enum SimCmd {
    /// Runs the host in the foreground until SIGINT/SIGTERM.
    Run {
        /// Pages each domain may grant at once (Linux gntalloc's default is 1024).
        #[arg(long, default_value_t = 1024)]
        grant_limit: usize,
        /// The program each guest runs on its console, published as `console/tty`.
        #[arg(long, default_value = "/bin/sh -i", conflicts_with = "no_console")]
        console: String,
        /// Give guests no console.
        #[arg(long)]
        no_console: bool,
    },
    /// Creates a domain and prints its id.
    Create { name: String },
    /// Destroys a domain (by name or id): kills its processes, invalidates its
    /// grants and fires @releaseDomain.
    Destroy {
        domain: DomainRef,
        /// Leave the domain's processes running.
        #[arg(long)]
        keep_processes: bool,
    },
    /// Lists the domains.
    List,
    /// Prints the host's counters (grants, mappings, ports, xenstore nodes) as JSON.
    Stats,
    /// Runs a command inside a domain.
    Exec {
        domain: DomainRef,
        #[arg(trailing_var_arg = true, required = true)]
        command: Vec<std::ffi::OsString>,
    },
    /// Prints the environment that puts a shell inside a domain.
    Env { domain: DomainRef },
    /// Stops the host.
    Shutdown,
}

#[derive(Subcommand)]
enum BenchCmd {
    /// The channel between two processes against memcpy and a unix socket pair.
    Ring(xenvt::bench::ring::RingArgs),
    /// The transport end to end (TCP -> agent -> channel -> backend -> unix)
    /// against loopback TCP and a relay chain.
    Tunnel(xenvt::bench::tunnel::TunnelArgs),
    /// A plain relay process (internal, for `bench tunnel`).
    #[command(hide = true)]
    Relay(xenvt::bench::tunnel::relay::RelayArgs),
    /// A viewer straight on Xvnc against the same viewer through xenvt-proxy.
    Proxy(xenvt::bench::proxy::ProxyArgs),
    /// A frame meter: one RFB viewer that asks for the next update as soon as one
    /// ends, for a while; prints a JSON line (frames, bytes, seconds, fps).
    Fps(xenvt::bench::fps::FpsArgs),
    /// A process end of a benchmark (internal).
    #[command(hide = true)]
    Peer(xenvt::bench::peer::PeerArgs),
    /// A test peer that publishes a channel like an agent and breaks the stream
    /// protocol on purpose (internal, for tests).
    #[command(hide = true)]
    HostileAgent(xenvt::bench::tunnel::hostile::HostileArgs),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("XENVT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if let Cmd::PrintMan = cli.cmd {
        return xenvt_ring::daemon::print_man(Cli::command());
    }
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("xenvt: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xenvt: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Sim { dir, cmd } => sim(dir.unwrap_or_else(xenvt::sim::default_dir), cmd).await,
        Cmd::Chan(a) => xenvt::chan::run(a).await,
        Cmd::Smoke(a) => xenvt::smoke::run(a).await,
        Cmd::Demo(a) => xenvt::demo::run(a).await,
        Cmd::Status(a) => xenvt::status::run(a).await,
        Cmd::Soak(a) => xenvt::soak::run(a).await,
        Cmd::Screen {
            cmd: ScreenCmd::Text(a),
        } => xenvt::screen::run_text(a),
        Cmd::PrintMan => unreachable!("handled before the runtime starts"),
        Cmd::Bench { cmd } => match cmd {
            BenchCmd::Ring(a) => xenvt::bench::ring::run(a).await,
            BenchCmd::Proxy(a) => xenvt::bench::proxy::run(a).await,
            BenchCmd::Fps(a) => xenvt::bench::fps::run(a).await,
            BenchCmd::Peer(a) => xenvt::bench::peer::run(a).await,
            BenchCmd::Tunnel(a) => xenvt::bench::tunnel::run(a).await,
            BenchCmd::Relay(a) => xenvt::bench::tunnel::relay::run(a).await,
            BenchCmd::HostileAgent(a) => xenvt::bench::tunnel::hostile::run(a).await,
        },
    }
}

async fn sim(dir: PathBuf, cmd: SimCmd) -> anyhow::Result<()> {
    use xenvt::sim::control::Client;
    let call = |req: Request| {
        let dir = dir.clone();
        async move { Client::connect(&dir).await?.call(&req).await }
    };
    match cmd {
        SimCmd::Run {
            grant_limit,
            console,
            no_console,
        } => {
            let console = (!no_console)
                .then(|| {
                    console
                        .split_whitespace()
                        .map(Into::into)
                        .collect::<Vec<_>>()
                })
                .filter(|c| !c.is_empty());
            let cfg = xenvt::sim::host::HostConfig {
                dir: dir.clone(),
                grant_limit_pages: grant_limit,
                console,
            };
            xenvt::sim::host::run(cfg, |d| println!("ready {}", d.display())).await?;
        }
        SimCmd::Create { name } => {
            if let Reply::Domain(d) = call(Request::Create { name }).await? {
                println!("{}", d.id);
            }
        }
        SimCmd::Destroy {
            domain,
            keep_processes,
        } => {
            call(Request::Destroy {
                domain,
                keep_processes,
            })
            .await?;
        }
        SimCmd::List => {
            if let Reply::Domains(list) = call(Request::List).await? {
                println!("{:>5}  NAME", "ID");
                for d in list {
                    println!("{:>5}  {}", d.id, d.name);
                }
            }
        }
        SimCmd::Stats => {
            if let Reply::Stats(v) = call(Request::Stats).await? {
                println!("{}", serde_json::to_string_pretty(&v)?);
            }
        }
        SimCmd::Exec { domain, command } => {
            use std::os::unix::process::CommandExt;
            let d = Client::connect(&dir).await?.domain(&domain).await?;
            let mut c = std::process::Command::new(&command[0]);
            c.args(&command[1..]).envs(xenvt::harness::env_for(&d));
            let err = c.exec();
            anyhow::bail!("cannot run {:?}: {err}", command[0]);
        }
        SimCmd::Env { domain } => {
            let d = Client::connect(&dir).await?.domain(&domain).await?;
            for (k, v) in xenvt::harness::env_for(&d) {
                println!("export {}={}", k.to_string_lossy(), v.to_string_lossy());
            }
        }
        SimCmd::Shutdown => {
            call(Request::Shutdown).await?;
        }
    }
    Ok(())
}
