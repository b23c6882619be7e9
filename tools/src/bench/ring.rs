//! `xenvt bench ring`: the channel between two processes on the simulated host,
//! against single-thread memcpy and a unix stream socket between two processes.
//!
//! Prints `ratio ring_vs_memcpy`, `ratio ring_vs_unix` and `ratio rtt_vs_unix`.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

use super::{rate, ratio, PeerReport};
use crate::harness::SimHost;

/// Arguments of `xenvt bench ring`.
#[derive(Args, Debug)]
pub struct RingArgs {
    /// A short run for CI: 64 MiB, fewer round trips, one repetition.
    #[arg(long)]
    quick: bool,
    /// Bytes per throughput run (default 256 MiB; 64 MiB with --quick).
    #[arg(long)]
    bytes: Option<u64>,
    /// Size of each write.
    #[arg(long, default_value_t = 64 << 10)]
    chunk: usize,
    /// Ring order of the channel, both directions (10..=20).
    #[arg(long, default_value_t = 20)]
    order: u8,
    /// Repetitions of each throughput run; the best is kept.
    #[arg(long)]
    reps: Option<u32>,
}

/// Runs the benchmark.
pub async fn run(a: RingArgs) -> anyhow::Result<()> {
    let bytes = a
        .bytes
        .unwrap_or(if a.quick { 64 << 20 } else { 256 << 20 });
    let reps = a.reps.unwrap_or(if a.quick { 1 } else { 3 }).max(1);
    let round_trips: u64 = if a.quick { 2_000 } else { 20_000 };
    let exe = std::env::current_exe()?;
    println!(
        "bench ring: {} MiB in {} KiB writes, ring order {}, best of {reps}",
        bytes >> 20,
        a.chunk >> 10,
        a.order
    );

    anyhow::ensure!((10..=20).contains(&a.order), "--order must be 10..=20");
    let ring_size = 1usize << a.order;
    let best = |f: &dyn Fn() -> f64| (0..reps.max(3)).map(|_| f()).fold(f64::INFINITY, f64::min);
    // "memcpy bandwidth of the same size": one thread copying the same number of
    // bytes from one buffer to another, 64 KiB at a time.
    let memcpy = best(&|| memcpy_secs(bytes, a.chunk, bytes as usize, bytes as usize));
    // The stricter reference: the writer's own copy, from a 64 KiB buffer round a
    // ring-sized destination, which never leaves the core's cache.
    let memcpy_cached = best(&|| memcpy_secs(bytes, a.chunk, a.chunk, ring_size));
    println!(
        "memcpy        {:>12}  (buffer to buffer, same size: the baseline)",
        rate(bytes, memcpy)
    );
    println!(
        "memcpy        {:>12}  (64 KiB into a ring-sized buffer, in cache)",
        rate(bytes, memcpy_cached)
    );

    let tmp = tempfile::Builder::new().prefix("xenvt-bench-").tempdir()?;
    let sock = tmp.path().join("bench.sock");
    let mut unix = f64::INFINITY;
    for _ in 0..reps {
        unix = unix.min(
            unix_run(&exe, &sock, "sink", "source", bytes, a.chunk, 0)
                .await?
                .secs,
        );
    }
    println!("unix socket   {:>12}", rate(bytes, unix));
    let unix_rtt = unix_run(&exe, &sock, "echo", "ping", 0, 1, round_trips)
        .await?
        .rtt_median_us;

    let host = SimHost::start(&exe, &[]).await?;
    let dom = host.create("bench").await?;
    let dom0 = host.dom0().await?;
    let mut chan = f64::INFINITY;
    for i in 0..reps {
        let r = chan_run(
            &host,
            &dom,
            &dom0,
            &format!("data/bench{i}"),
            &a,
            "sink",
            "source",
            bytes,
            0,
        )
        .await?;
        chan = chan.min(r.secs);
    }
    println!("channel       {:>12}", rate(bytes, chan));
    let chan_rtt = chan_run(
        &host,
        &dom,
        &dom0,
        "data/ping",
        &a,
        "echo",
        "ping",
        0,
        round_trips,
    )
    .await?
    .rtt_median_us;
    println!("rtt unix      {unix_rtt:>9.1} us");
    println!("rtt channel   {chan_rtt:>9.1} us");
    host.stop().await?;

    // Throughput ratios are bandwidth over bandwidth: time_baseline / time_channel.
    ratio("ring_vs_memcpy", memcpy / chan);
    ratio("ring_vs_memcpy_cached", memcpy_cached / chan);
    ratio("ring_vs_unix", unix / chan);
    ratio("rtt_vs_unix", chan_rtt / unix_rtt);
    Ok(())
}

/// Seconds for one thread to copy `bytes` in `chunk`-sized memcpys from a
/// `src_size` buffer into a `dst_size` buffer, going round both.
fn memcpy_secs(bytes: u64, chunk: usize, src_size: usize, dst_size: usize) -> f64 {
    // Touch every page first so the timing does not include page faults.
    let src = vec![0x5au8; src_size.max(chunk)];
    let mut dst = vec![1u8; dst_size.max(chunk)];
    let start = Instant::now();
    let (mut left, mut from, mut to) = (bytes, 0usize, 0usize);
    while left > 0 {
        let n = left.min(chunk as u64) as usize;
        if from + n > src.len() {
            from = 0;
        }
        if to + n > dst.len() {
            to = 0;
        }
        dst[to..to + n].copy_from_slice(black_box(&src[from..from + n]));
        black_box(&mut dst);
        from += n;
        to += n;
        left -= n as u64;
    }
    start.elapsed().as_secs_f64()
}

fn peer_cmd(mut c: Command, role: &str, transport: &str, path: &Path) -> Command {
    c.args([
        "bench",
        "peer",
        "--role",
        role,
        "--transport",
        transport,
        "--path",
    ])
    .arg(path)
    .stdout(Stdio::piped())
    .kill_on_drop(true);
    c
}

/// Starts a listening peer and waits for its `ready` line.
async fn start_listener(mut c: Command) -> anyhow::Result<(Child, Lines<BufReader<ChildStdout>>)> {
    let mut child = c.spawn()?;
    let mut lines = BufReader::new(child.stdout.take().context("no stdout")?).lines();
    match lines.next_line().await? {
        Some(l) if l == "ready" => Ok((child, lines)),
        other => anyhow::bail!("benchmark peer did not start (said {other:?})"),
    }
}

/// Runs a measuring peer to completion and returns its report.
async fn measure(mut c: Command) -> anyhow::Result<PeerReport> {
    let out = c.output().await?;
    anyhow::ensure!(
        out.status.success(),
        "benchmark peer failed: {}",
        out.status
    );
    let line = String::from_utf8_lossy(&out.stdout);
    let line = line
        .lines()
        .last()
        .context("benchmark peer printed nothing")?;
    Ok(serde_json::from_str(line)?)
}

#[allow(clippy::too_many_arguments)]
async fn unix_run(
    exe: &Path,
    sock: &Path,
    listen_role: &str,
    connect_role: &str,
    bytes: u64,
    chunk: usize,
    round_trips: u64,
) -> anyhow::Result<PeerReport> {
    let sizes = |mut c: Command| {
        c.args([
            "--bytes",
            &bytes.to_string(),
            "--chunk",
            &chunk.max(1).to_string(),
        ])
        .args(["--round-trips", &round_trips.to_string()]);
        c
    };
    let (mut l, _lines) = start_listener(sizes(peer_cmd(
        Command::new(exe),
        listen_role,
        "unix",
        sock,
    )))
    .await?;
    let r = measure(sizes(peer_cmd(
        Command::new(exe),
        connect_role,
        "unix",
        sock,
    )))
    .await?;
    l.wait().await?;
    Ok(r)
}

#[allow(clippy::too_many_arguments)]
async fn chan_run(
    host: &SimHost,
    dom: &crate::sim::control::DomainInfo,
    dom0: &crate::sim::control::DomainInfo,
    node: &str,
    a: &RingArgs,
    listen_role: &str,
    connect_role: &str,
    bytes: u64,
    round_trips: u64,
) -> anyhow::Result<PeerReport> {
    let sizes = |mut c: Command| {
        c.args([
            "--bytes",
            &bytes.to_string(),
            "--chunk",
            &a.chunk.to_string(),
        ])
        .args(["--round-trips", &round_trips.to_string()])
        .args(["--order", &a.order.to_string()]);
        c
    };
    // The guest serves (grants), dom0 maps: the direction xenvt's agent and backend use.
    let mut serve = peer_cmd(host.xenvt_in(dom), listen_role, "chan", Path::new(node));
    serve.args(["--peer", "0"]);
    let (mut l, _lines) = start_listener(sizes(serve)).await?;
    let full: PathBuf = format!("/local/domain/{}/{node}", dom.id).into();
    let mut conn = peer_cmd(host.xenvt_in(dom0), connect_role, "chan", &full);
    conn.args(["--peer", &dom.id.to_string()]);
    let r = measure(sizes(conn)).await?;
    l.wait().await?;
    Ok(r)
}
