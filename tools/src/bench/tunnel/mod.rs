//! `xenvt bench tunnel`: the whole transport (TCP client -> agent -> channel ->
//! backend -> unix service) on the simulated host, against loopback TCP and a
//! chain of plain relays of the same shape; plus the pieces the tunnel tests
//! share ([`rig`]), a hostile agent ([`hostile`]) and the relay ([`relay`]).
//!
//! Prints `ratio tunnel_vs_tcp`, `ratio tunnel_vs_socket_relay`,
//! `ratio tunnel_rtt_vs_tcp`, `ratio streams_64_vs_1`, and the idle CPU of
//! each daemon (percent of one core) with 100 open idle streams as
//! `ratio idle_cpu_agent_pct` and `ratio idle_cpu_backend_pct`.

pub mod hostile;
pub mod relay;
pub mod rig;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use clap::Args;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream, UnixListener};
use tokio::process::{Child, Command};

use super::{rate, ratio};
use crate::pattern::{Checker, Source};
use rig::Rig;

/// Arguments of `xenvt bench tunnel`.
#[derive(Args, Debug)]
pub struct TunnelArgs {
    /// A short run for CI: 64 MiB, fewer round trips, 2 s of idle.
    #[arg(long)]
    quick: bool,
    /// Bytes per throughput run (default 1 GiB; 64 MiB with --quick).
    #[arg(long)]
    bytes: Option<u64>,
    /// Repetitions of each throughput run; the best is kept.
    #[arg(long)]
    reps: Option<u32>,
}

const CHUNK: usize = 256 << 10;

/// Sends `n` pattern bytes and closes the sending side.
async fn send<W: AsyncWrite + Unpin>(mut w: W, n: u64) -> anyhow::Result<()> {
    let mut src = Source::new(1);
    let mut buf = vec![0u8; CHUNK];
    let mut left = n;
    while left > 0 {
        let k = left.min(CHUNK as u64) as usize;
        src.fill(&mut buf[..k]);
        w.write_all(&buf[..k]).await?;
        left -= k as u64;
    }
    w.shutdown().await?;
    Ok(())
}

/// Receives to the end, checking every byte; returns the sha256.
async fn receive<R: AsyncRead + Unpin>(mut r: R, n: u64) -> anyhow::Result<String> {
    let mut chk = Checker::new(1);
    let mut buf = vec![0u8; CHUNK];
    loop {
        let k = r.read(&mut buf).await?;
        if k == 0 {
            break;
        }
        chk.check(&buf[..k])?;
    }
    ensure!(chk.count() == n, "received {} of {n}", chk.count());
    Ok(chk.sha256())
}

/// Where the far end of a measured path accepts.
enum Far {
    Tcp(TcpListener),
    /// A unix socket; `proxy`: a PROXY v2 header comes first.
    Unix(UnixListener, bool),
}

impl Far {
    async fn accept(&self) -> anyhow::Result<Box<dyn AsyncReadWrite>> {
        Ok(match self {
            Far::Tcp(l) => {
                let (s, _) = l.accept().await?;
                s.set_nodelay(true)?;
                Box::new(s)
            }
            Far::Unix(l, proxy) => {
                let (mut s, _) = l.accept().await?;
                if *proxy {
                    xenvt_ring::proxyv2::read(&mut s).await?;
                }
                Box::new(s)
            }
        })
    }
}

trait AsyncReadWrite: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> AsyncReadWrite for T {}

/// `streams` concurrent transfers of `n / streams` bytes from a TCP client at
/// `to` to `far`; seconds for all of them.
async fn transfer(to: SocketAddr, far: &Far, n: u64, streams: u64) -> anyhow::Result<f64> {
    let each = n / streams;
    let start = Instant::now();
    let mut senders = Vec::new();
    for _ in 0..streams {
        let c = TcpStream::connect(to).await?;
        c.set_nodelay(true)?;
        senders.push(tokio::spawn(send(c, each)));
    }
    let mut receivers = Vec::new();
    for _ in 0..streams {
        let s = tokio::time::timeout(rig::PROMPT, far.accept())
            .await
            .context("nothing arrived")??;
        receivers.push(tokio::spawn(receive(s, each)));
    }
    for r in receivers {
        r.await??;
    }
    let secs = start.elapsed().as_secs_f64();
    for s in senders {
        s.await??;
    }
    Ok(secs)
}

async fn best_of(
    reps: u32,
    mut f: impl AsyncFnMut() -> anyhow::Result<f64>,
) -> anyhow::Result<f64> {
    let mut best = f64::INFINITY;
    for _ in 0..reps {
        best = best.min(f().await?);
    }
    Ok(best)
}

/// Median round trip of one byte, in microseconds, over `count` round trips
/// (the median, because a shared machine's scheduler adds long outliers).
async fn rtt(to: SocketAddr, count: u64) -> anyhow::Result<f64> {
    let mut c = TcpStream::connect(to).await?;
    c.set_nodelay(true)?;
    let mut b = [0u8; 1];
    // Warm up (the stream is opened lazily on the far side).
    c.write_all(b"x").await?;
    c.read_exact(&mut b).await?;
    let mut samples = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let t = Instant::now();
        c.write_all(b"x").await?;
        c.read_exact(&mut b).await?;
        samples.push(t.elapsed().as_secs_f64() * 1e6);
    }
    Ok(super::median(&mut samples))
}

/// Echoes every connection on `far`.
fn echo(far: Far) {
    tokio::spawn(async move {
        while let Ok(s) = far.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = tokio::io::split(s);
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
}

/// CPU seconds (user + system) a process has used.
fn cpu_secs(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11).context("stat")?.parse()?;
    let stime: f64 = f.get(12).context("stat")?.parse()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok((utime + stime) / hz.max(1.0))
}

/// A relay process, killed when dropped.
struct Relay {
    _child: Child,
}

async fn relay(exe: &Path, listen: &str, to: &Path) -> anyhow::Result<(Relay, String)> {
    let mut c = Command::new(exe)
        .args(["bench", "relay", "--listen", listen, "--to"])
        .arg(format!("unix:{}", to.display()))
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let out = c.stdout.take().context("relay stdout")?;
    let line = BufReader::new(out)
        .lines()
        .next_line()
        .await?
        .context("relay said nothing")?;
    let addr = line
        .strip_prefix("listening ")
        .context("relay did not start")?
        .to_owned();
    Ok((Relay { _child: c }, addr))
}

/// Runs the benchmark.
pub async fn run(a: TunnelArgs) -> anyhow::Result<()> {
    let n = a.bytes.unwrap_or(if a.quick { 64 << 20 } else { 1 << 30 });
    let reps = a.reps.unwrap_or(if a.quick { 1 } else { 3 }).max(1);
    let round_trips: u64 = if a.quick { 2_000 } else { 20_000 };
    let idle = Duration::from_secs(if a.quick { 2 } else { 10 });
    let exe = std::env::current_exe()?;
    println!(
        "bench tunnel: {} MiB per run, best of {reps}, {round_trips} round trips",
        n >> 20
    );

    let rig = Rig::new(&exe).await?;
    let vm = rig.host.create("bench").await?;
    let sink_path: PathBuf = rig.path("sink.sock");
    let echo_path: PathBuf = rig.path("echo.sock");
    let sink = Far::Unix(UnixListener::bind(&sink_path)?, true);
    echo(Far::Unix(UnixListener::bind(&echo_path)?, true));
    let backend_toml = format!(
        "{}[services.sink]\ndeliver = {:?}\n[services.echo]\ndeliver = {:?}\n[limits]\nmax_streams = 1024\n",
        rig.backend_toml(),
        sink_path.display().to_string(),
        echo_path.display().to_string()
    );
    let mut backend = rig.backend(&backend_toml).await?;
    let (mut agent, addrs) = rig
        .agent(
            &vm,
            "[[listen]]\naddress = \"127.0.0.1:0\"\nservice = \"sink\"\n\
             [[listen]]\naddress = \"127.0.0.1:0\"\nservice = \"echo\"\n\
             [limits]\nmax_streams = 1024\n",
        )
        .await?;
    backend.wait_for("agent attached").await?;
    agent.wait_for("backend connected").await?;
    ensure!(addrs.len() == 2, "agent listeners {addrs:?}");
    let (t_sink, t_echo) = (addrs[0], addrs[1]);

    // Loopback TCP, straight.
    let tcp = TcpListener::bind("127.0.0.1:0").await?;
    let tcp_addr = tcp.local_addr()?;
    let tcp_far = Far::Tcp(tcp);
    let tcp_echo = TcpListener::bind("127.0.0.1:0").await?;
    let tcp_echo_addr = tcp_echo.local_addr()?;
    echo(Far::Tcp(tcp_echo));

    // Two relays with a unix socket between them, ending at a unix server.
    let relay_far_path = rig.path("relay-far.sock");
    let relay_far = Far::Unix(UnixListener::bind(&relay_far_path)?, false);
    let mid = rig.path("relay-mid.sock");
    let (_r2, _) = relay(&exe, &format!("unix:{}", mid.display()), &relay_far_path).await?;
    let (_r1, r1_addr) = relay(&exe, "tcp:127.0.0.1:0", &mid).await?;
    let relay_addr: SocketAddr = r1_addr.parse()?;

    let t_tunnel = best_of(reps, async || transfer(t_sink, &sink, n, 1).await).await?;
    println!("tunnel         {:>12}", rate(n, t_tunnel));
    let t_tcp = best_of(reps, async || transfer(tcp_addr, &tcp_far, n, 1).await).await?;
    println!("loopback tcp   {:>12}", rate(n, t_tcp));
    let t_relay = best_of(reps, async || transfer(relay_addr, &relay_far, n, 1).await).await?;
    println!("relay chain    {:>12}", rate(n, t_relay));
    ratio("tunnel_vs_tcp", t_tcp / t_tunnel);
    ratio("tunnel_vs_socket_relay", t_relay / t_tunnel);

    let rtt_tunnel = rtt(t_echo, round_trips).await?;
    let rtt_tcp = rtt(tcp_echo_addr, round_trips).await?;
    println!("rtt (median) tunnel {rtt_tunnel:.1} us, loopback tcp {rtt_tcp:.1} us");
    ratio("tunnel_rtt_vs_tcp", rtt_tunnel / rtt_tcp);

    let t64 = best_of(reps, async || transfer(t_sink, &sink, n, 64).await).await?;
    println!("64 streams     {:>12} aggregate", rate(n, t64));
    ratio("streams_64_vs_1", t_tunnel / t64);

    // 100 idle streams held open.
    let mut idle_conns = Vec::new();
    for _ in 0..100 {
        let mut c = TcpStream::connect(t_echo).await?;
        let mut b = [0u8; 1];
        c.write_all(b"x").await?;
        c.read_exact(&mut b).await?;
        idle_conns.push(c);
    }
    let (a0, b0) = (cpu_secs(agent.pid())?, cpu_secs(backend.pid())?);
    tokio::time::sleep(idle).await;
    let (a1, b1) = (cpu_secs(agent.pid())?, cpu_secs(backend.pid())?);
    let secs = idle.as_secs_f64();
    println!(
        "idle with 100 open streams for {secs:.0} s: agent {:.2} s CPU, backend {:.2} s CPU",
        a1 - a0,
        b1 - b0
    );
    ratio("idle_cpu_agent_pct", 100.0 * (a1 - a0) / secs);
    ratio("idle_cpu_backend_pct", 100.0 * (b1 - b0) / secs);
    drop(idle_conns);

    let _ = agent.term().await;
    let _ = backend.term().await;
    rig.host.stop().await?;
    Ok(())
}
