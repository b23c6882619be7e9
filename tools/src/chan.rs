//! `xenvt chan`: one end of a checked transfer over a xenvt channel.
//!
//! The serving end grants the channel and publishes it in xenstore (the guest's
//! role); the connecting end maps it (dom0's role). Each end sends a checked
//! pattern stream and checks what it receives, byte by byte, then prints one JSON
//! [`ChanReport`]. The platform comes from the environment: the simulated host
//! when `XENVT_SIM_DEV` is set, the real Xen devices otherwise.
//!
//! The same transfer also runs over a unix socket (`xenvt chan unix`), so that the
//! far end of another transport (libxenvchan's `vchan-socket-proxy`) and a plain
//! socket baseline are measured and checked exactly as the channel is.
//!
//! Timing across domains cannot use one clock, so a transfer can be framed by
//! single bytes outside the pattern: `--go` (sent first) and `--wait-go` (read
//! first; the clock starts there), `--ack` (sent once everything arrived) and
//! `--wait-ack` (read last; the clock stops there). One end then times the whole
//! transfer from "the other end is there" to "the other end has everything".
//! `--bye` and `--linger` order the close (the lingering end closes last), for
//! transports that drop what is in flight when an end closes.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context};
use clap::{Args, Subcommand};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use xenvt_ring::xenstore::Xenstore;
use xenvt_ring::ChannelStream;

use crate::pattern::{Checker, Source};

/// The framing byte of `--go`/`--wait-go`.
const GO: u8 = 0x47;
/// The framing byte of `--ack`/`--wait-ack`.
const ACK: u8 = 0x06;
/// The byte of `--bye`/`--linger`.
const BYE: u8 = 0x04;

/// Arguments of `xenvt chan`.
#[derive(Args, Debug)]
pub struct ChanArgs {
    #[command(subcommand)]
    mode: Mode,
    /// Bytes to send.
    #[arg(long, global = true, default_value_t = 0)]
    send: u64,
    /// Bytes to receive; without it, receive until the peer closes, and report the count.
    #[arg(long, global = true)]
    recv: Option<u64>,
    /// Seed of the stream we send.
    #[arg(long, global = true, default_value_t = 1)]
    send_seed: u64,
    /// Seed of the stream we expect.
    #[arg(long, global = true, default_value_t = 2)]
    recv_seed: u64,
    /// Size of each write.
    #[arg(long, global = true, default_value_t = 64 << 10)]
    chunk: usize,
    /// Send one go byte before anything else.
    #[arg(long, global = true)]
    go: bool,
    /// Read the peer's go byte before anything else (and before sending); the
    /// clock starts when it arrives.
    #[arg(long, global = true)]
    wait_go: bool,
    /// Once every `--recv` byte arrived, send one acknowledgement byte (after our
    /// own `--send` bytes).
    #[arg(long, global = true, requires = "recv")]
    ack: bool,
    /// After the `--recv` bytes (none by default), read the peer's acknowledgement
    /// byte; the clock stops when it arrives.
    #[arg(long, global = true)]
    wait_ack: bool,
    /// Instead of a transfer, do this many one-byte round trips (the peer runs `--pong`).
    #[arg(long, global = true, conflicts_with_all = ["pong", "send", "recv"])]
    ping: Option<u64>,
    /// Instead of a transfer, echo this many bytes back as they arrive.
    #[arg(long, global = true, conflicts_with_all = ["send", "recv"])]
    pong: Option<u64>,
    /// Print `progress N` once N bytes have been received (an event for tests that
    /// must act mid-transfer).
    #[arg(long, global = true)]
    progress: Option<u64>,
    /// When done, wait for the peer's bye byte (or its close) before closing: for
    /// transports that lose what is still in flight when an end closes. Without
    /// `--recv`, no data is expected.
    #[arg(long, global = true)]
    linger: bool,
    /// When done, send one bye byte before closing (the peer runs `--linger`).
    #[arg(long, global = true)]
    bye: bool,
    /// The channel's spin budget: how many microseconds a read that cannot
    /// progress (after a small read) looks at the ring before it sleeps on the event channel
    /// (`ChannelStream::set_spin`; 0 never spins, which shows what the wakeup
    /// costs). Without it, the library's default. Unix sockets ignore it.
    #[arg(long, global = true)]
    spin_us: Option<u64>,
    /// Compare every byte with the pattern but compute no sha256 (the report's
    /// digests are empty): for benchmarks under emulation, where hashing is
    /// slower than the channel.
    #[arg(long, global = true)]
    no_digest: bool,
}

#[derive(Subcommand, Debug)]
enum Mode {
    /// Grant a channel to `--peer` and publish it at xenstore `--path` (relative
    /// paths are under this domain's /local/domain/<id>). Prints `ready` once published.
    Serve {
        #[arg(long)]
        path: String,
        #[arg(long, default_value_t = 0)]
        peer: u16,
        /// Ring order of both directions (10..=20).
        #[arg(long, default_value_t = 16)]
        order: u8,
        /// Ring order of the client-to-server ring, overriding `--order`. Two rings
        /// inside the control page need different orders (10 and 11), as in vchan.
        #[arg(long)]
        left_order: Option<u8>,
        /// Ring order of the server-to-client ring, overriding `--order`.
        #[arg(long)]
        right_order: Option<u8>,
    },
    /// Map the channel that domain `--peer` published at xenstore `--path`. Prints
    /// `connected` once mapped.
    Connect {
        #[arg(long)]
        path: String,
        #[arg(long)]
        peer: u16,
        /// Stop (and unmap) when domain `--peer` goes away: on each `@releaseDomain`,
        /// look whether `/local/domain/<peer>` is still there. A destroyed domain
        /// runs no unmap-notify, so its live byte is never cleared.
        #[arg(long)]
        watch_domain: bool,
    },
    /// The same transfer over a unix stream socket: connect to `--connect`
    /// (prints `connected`), or accept one connection on `--listen` (prints `ready`
    /// once bound).
    Unix {
        #[arg(long, conflicts_with = "listen", required_unless_present = "listen")]
        connect: Option<PathBuf>,
        #[arg(long)]
        listen: Option<PathBuf>,
        /// The stream starts with a PROXY protocol v2 header (as the backend
        /// writes on every stream it delivers): read and validate it, and print
        /// `proxy-v2 domid=N domain=NAME service=NAME` before the transfer.
        #[arg(long)]
        expect_proxy_v2: bool,
    },
}

/// What one end saw.
#[derive(Debug, Serialize, Deserialize)]
pub struct ChanReport {
    /// Bytes sent.
    pub sent: u64,
    /// Bytes received and checked.
    pub received: u64,
    /// sha256 of what was received.
    pub received_sha256: String,
    /// sha256 of what was sent, so the other end's view can be cross-checked.
    pub sent_sha256: String,
    /// Seconds from connection (or the go byte, with `--wait-go`) to the end of
    /// both directions (or the acknowledgement, with `--wait-ack`).
    pub secs: f64,
    /// Round trips done (`--ping`).
    #[serde(default)]
    pub round_trips: u64,
    /// Median round trip in microseconds (`--ping`).
    #[serde(default)]
    pub rtt_median_us: f64,
}

/// Progress shared with whoever reports a failure.
#[derive(Default)]
struct Counts {
    sent: AtomicU64,
    received: AtomicU64,
}

impl Counts {
    /// The error for a peer that went away mid-transfer.
    fn cut(&self, a: &ChanArgs, what: &str) -> anyhow::Error {
        let got = self.received.load(Ordering::Relaxed);
        let sent = self.sent.load(Ordering::Relaxed);
        match a.recv {
            Some(w) => anyhow!(
                "{what} after {got} of {w} bytes (sent {sent} of {})",
                a.send
            ),
            None => anyhow!("{what} after {got} bytes (sent {sent} of {})", a.send),
        }
    }
}

/// Runs one end.
pub async fn run(a: ChanArgs) -> anyhow::Result<()> {
    let counts = Arc::new(Counts::default());
    let report = match &a.mode {
        Mode::Serve {
            path,
            peer,
            order,
            left_order,
            right_order,
        } => {
            let cfg = xenvt_ring::ChannelConfig {
                left_order: left_order.unwrap_or(*order),
                right_order: right_order.unwrap_or(*order),
            };
            let s = serve_with(path, *peer, cfg).await?;
            set_spin(&s, &a);
            println!("ready");
            play(s, &a, &counts).await?
        }
        Mode::Connect {
            path,
            peer,
            watch_domain,
        } => {
            let xs = xenvt_ring::xenstore::XsClient::connect().await?;
            // Watch before mapping, so a death during setup is not missed.
            let gone = if *watch_domain {
                Some(domain_gone(xs.clone(), *peer).await?)
            } else {
                None
            };
            let platform = xenvt_ring::platform::from_env()?;
            let ch = xenvt_ring::Channel::connect_xs(&*platform, &xs, *peer, path);
            let work = async {
                let ch = ch
                    .await
                    .with_context(|| format!("connect to the channel at {path}"))?;
                let s = ChannelStream::new(ch)?;
                set_spin(&s, &a);
                println!("connected");
                play(s, &a, &counts).await
            };
            match gone {
                None => work.await?,
                Some(gone) => {
                    tokio::select! {
                        r = work => r?,
                        // Dropping `work` unmaps the channel, which is what lets Xen
                        // finish destroying the domain.
                        () = gone => return Err(counts.cut(&a, &format!("domain {peer} went away"))),
                    }
                }
            }
        }
        Mode::Unix {
            connect,
            listen,
            expect_proxy_v2,
        } => {
            let mut s = if let Some(p) = listen {
                let _ = std::fs::remove_file(p);
                let l = tokio::net::UnixListener::bind(p)
                    .with_context(|| format!("bind {}", p.display()))?;
                println!("ready");
                let (s, _) = l.accept().await.context("accept")?;
                drop(l);
                let _ = std::fs::remove_file(p);
                s
            } else {
                let p = connect.as_ref().context("--connect or --listen")?;
                let s = tokio::net::UnixStream::connect(p)
                    .await
                    .with_context(|| format!("connect to {}", p.display()))?;
                println!("connected");
                s
            };
            if *expect_proxy_v2 {
                println!("{}", proxy_line(&mut s).await?);
            }
            play(s, &a, &counts).await?
        }
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// Applies `--spin-us`, if given.
fn set_spin(s: &ChannelStream, a: &ChanArgs) {
    if let Some(us) = a.spin_us {
        s.set_spin(Duration::from_micros(us));
    }
}

/// Reads and validates the PROXY v2 header at the start of `s`; returns the
/// line that names its origin.
async fn proxy_line<R: AsyncRead + Unpin>(s: &mut R) -> anyhow::Result<String> {
    let o = xenvt_ring::proxyv2::read(s)
        .await
        .context("PROXY v2 header")?;
    Ok(format!(
        "proxy-v2 domid={} domain={} service={}",
        o.domid, o.domain, o.service
    ))
}

/// Resolves once `/local/domain/<peer>` is gone after an `@releaseDomain`.
async fn domain_gone(
    xs: xenvt_ring::xenstore::XsClient,
    peer: u16,
) -> anyhow::Result<impl std::future::Future<Output = ()>> {
    let mut w = xs.watch("@releaseDomain").await?;
    let home = format!("/local/domain/{peer}");
    Ok(async move {
        // The first event fires at registration: the domain may be gone already.
        while w.next().await.is_some() {
            match xs.read(&home).await {
                Ok(None) => return,
                Ok(Some(_)) => {}
                Err(e) => tracing::warn!("xenstore read {home}: {e}"),
            }
        }
        // The watch itself ended: xenstored is gone; nothing will tell us more.
        tracing::warn!("@releaseDomain watch ended");
        std::future::pending::<()>().await
    })
}

/// Runs the mode the flags ask for on a connected stream.
async fn play<S: AsyncRead + AsyncWrite + Send + Unpin + 'static>(
    s: S,
    a: &ChanArgs,
    counts: &Arc<Counts>,
) -> anyhow::Result<ChanReport> {
    if let Some(n) = a.ping {
        return ping(s, n, a.send_seed, a.bye).await;
    }
    if let Some(n) = a.pong {
        return pong(s, n, a.linger).await;
    }
    transfer(s, a, counts.clone()).await
}

/// Whether an I/O error means the peer went away.
fn is_cut(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        BrokenPipe | ConnectionReset | ConnectionAborted | UnexpectedEof
    )
}

async fn transfer<S: AsyncRead + AsyncWrite + Send + 'static>(
    s: S,
    a: &ChanArgs,
    counts: Arc<Counts>,
) -> anyhow::Result<ChanReport> {
    let mut start = Instant::now();
    let (mut rd, mut wr) = tokio::io::split(s);
    if a.go {
        wr.write_all(&[GO]).await.context("send the go byte")?;
    }
    if a.wait_go {
        let mut b = [0u8; 1];
        rd.read_exact(&mut b)
            .await
            .map_err(|e| anyhow!("no go byte: {e}"))?;
        ensure!(b[0] == GO, "bad go byte {:#04x}", b[0]);
        start = Instant::now();
    }
    let (send, seed, chunk, ack) = (a.send, a.send_seed, a.chunk.max(1), a.ack);
    let digest = !a.no_digest;
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let sc = counts.clone();
    let sender = async move {
        let mut src = Source::new(seed);
        let mut hash = digest.then(Sha256::new);
        let mut buf = vec![0u8; chunk];
        let mut left = send;
        while left > 0 {
            let n = left.min(chunk as u64) as usize;
            src.fill(&mut buf[..n]);
            if let Some(h) = &mut hash {
                h.update(&buf[..n]);
            }
            wr.write_all(&buf[..n]).await?;
            sc.sent.fetch_add(n as u64, Ordering::Relaxed);
            left -= n as u64;
        }
        if ack {
            // The receiver drops the sender when it is done (or failed).
            let _ = done_rx.await;
            wr.write_all(&[ACK]).await?;
        }
        wr.flush().await?;
        let sent_sha256 = hash.map(|h| crate::pattern::hex(&h.finalize()));
        std::io::Result::Ok((wr, sent_sha256.unwrap_or_default()))
    };
    // Waiting for an acknowledgement or a bye with no count: no data is to come.
    let want = a.recv.or((a.wait_ack || a.linger).then_some(0));
    let (rseed, progress, wait_ack) = (a.recv_seed, a.progress, a.wait_ack);
    let rc = counts.clone();
    let receiver = async move {
        let mut chk = if digest {
            Checker::new(rseed)
        } else {
            Checker::without_digest(rseed)
        };
        let mut buf = vec![0u8; 1 << 20];
        let mut progress = progress;
        loop {
            let cap = match want {
                Some(w) if chk.count() >= w => break,
                Some(w) => (w - chk.count()).min(buf.len() as u64) as usize,
                None => buf.len(),
            };
            let n = rd.read(&mut buf[..cap]).await?;
            if n == 0 {
                if want.is_some() {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                break;
            }
            chk.check(&buf[..n])
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
            rc.received.store(chk.count(), Ordering::Relaxed);
            if progress.is_some_and(|p| chk.count() >= p) {
                println!("progress {}", chk.count());
                progress = None;
            }
        }
        drop(done_tx);
        let mut end = None;
        if wait_ack {
            let mut b = [0u8; 1];
            if rd.read(&mut b).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            if b[0] != ACK {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("bad acknowledgement byte {:#04x}", b[0]),
                ));
            }
            end = Some(Instant::now());
        }
        std::io::Result::Ok((rd, chk, end))
    };
    let ((wr, sent_sha256), (rd, chk, end)) = match tokio::try_join!(sender, receiver) {
        Ok(r) => r,
        Err(e) if is_cut(&e) => return Err(counts.cut(a, "peer closed")),
        Err(e) => return Err(anyhow::Error::new(e).context("transfer")),
    };
    let secs = end.unwrap_or_else(Instant::now).duration_since(start);
    let (mut rd, mut wr) = (rd, wr);
    if a.bye {
        say_bye(&mut wr).await?;
    }
    if a.linger {
        linger(&mut rd).await?;
    }
    // Both halves go here: on a channel that closes it, after every byte we wrote.
    drop((rd, wr));
    let received = chk.count();
    if let Some(w) = want {
        ensure!(w == received, "received {received} bytes, want {w}");
    }
    Ok(ChanReport {
        sent: a.send,
        received,
        received_sha256: chk.sha256(),
        sent_sha256,
        secs: secs.as_secs_f64(),
        round_trips: 0,
        rtt_median_us: 0.0,
    })
}

/// Sends the bye byte; a peer already gone is not an error.
async fn say_bye<W: AsyncWrite + Unpin>(w: &mut W) -> anyhow::Result<()> {
    match w.write_all(&[BYE]).await {
        Ok(()) => Ok(w.flush().await?),
        Err(e) if is_cut(&e) => Ok(()),
        Err(e) => Err(anyhow::Error::new(e).context("bye")),
    }
}

/// Waits for the peer's bye byte or its close; anything else is an error.
async fn linger<R: AsyncRead + Unpin>(r: &mut R) -> anyhow::Result<()> {
    let mut b = [0u8; 1];
    match r.read(&mut b).await {
        Ok(0) => Ok(()),
        Ok(_) if b[0] == BYE => Ok(()),
        Ok(_) => bail!("the peer sent more than agreed ({:#04x})", b[0]),
        Err(e) if is_cut(&e) => Ok(()),
        Err(e) => Err(anyhow::Error::new(e).context("linger")),
    }
}

/// `n` one-byte round trips, each byte checked against the pattern.
async fn ping<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    n: u64,
    seed: u64,
    bye: bool,
) -> anyhow::Result<ChanReport> {
    let mut src = Source::new(seed);
    let mut samples = Vec::with_capacity(n.min(1 << 20) as usize);
    let start = Instant::now();
    for i in 0..n {
        let mut b = [0u8; 1];
        src.fill(&mut b);
        let t = Instant::now();
        let mut r = [0u8; 1];
        let sent = async {
            s.write_all(&b).await?;
            s.flush().await?;
            s.read(&mut r).await
        };
        match sent.await {
            Ok(1) => {}
            Ok(_) => bail!("peer closed after {i} of {n} round trips"),
            Err(e) if is_cut(&e) => bail!("peer closed after {i} of {n} round trips"),
            Err(e) => return Err(anyhow::Error::new(e).context("round trip")),
        }
        ensure!(
            r == b,
            "round trip {i}: sent {:#04x}, got {:#04x}",
            b[0],
            r[0]
        );
        samples.push(t.elapsed());
    }
    let secs = start.elapsed().as_secs_f64();
    if bye {
        say_bye(&mut s).await?;
    }
    samples.sort();
    let median = samples
        .get(samples.len() / 2)
        .copied()
        .unwrap_or(Duration::ZERO);
    Ok(ChanReport {
        sent: n,
        received: n,
        received_sha256: String::new(),
        sent_sha256: String::new(),
        secs,
        round_trips: n,
        rtt_median_us: median.as_secs_f64() * 1e6,
    })
}

/// Echoes `n` bytes back as they arrive.
async fn pong<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    n: u64,
    lingers: bool,
) -> anyhow::Result<ChanReport> {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    let mut done = 0u64;
    while done < n {
        let cap = (n - done).min(buf.len() as u64) as usize;
        let got = s.read(&mut buf[..cap]).await.context("pong")?;
        ensure!(got > 0, "peer closed after {done} of {n} bytes");
        s.write_all(&buf[..got]).await.context("pong")?;
        s.flush().await?;
        done += got as u64;
    }
    if lingers {
        linger(&mut s).await?;
    }
    Ok(ChanReport {
        sent: n,
        received: n,
        received_sha256: String::new(),
        sent_sha256: String::new(),
        secs: start.elapsed().as_secs_f64(),
        round_trips: n,
        rtt_median_us: 0.0,
    })
}

/// Grants a channel with both rings of `order` to `peer` and publishes it at
/// `path`; returns the stream.
pub async fn serve(path: &str, peer: u16, order: u8) -> anyhow::Result<ChannelStream> {
    let cfg = xenvt_ring::ChannelConfig {
        left_order: order,
        right_order: order,
    };
    serve_with(path, peer, cfg).await
}

/// Grants a channel shaped by `cfg` to `peer` and publishes it at `path`.
pub async fn serve_with(
    path: &str,
    peer: u16,
    cfg: xenvt_ring::ChannelConfig,
) -> anyhow::Result<ChannelStream> {
    let platform = xenvt_ring::platform::from_env()?;
    let xs = xenvt_ring::xenstore::XsClient::connect().await?;
    let ch = xenvt_ring::Channel::serve_xs(&*platform, &xs, peer, path, cfg)
        .await
        .with_context(|| format!("serve a channel at {path}"))?;
    Ok(ChannelStream::new(ch)?)
}

/// Maps the channel `peer` published at `path`; returns the stream.
pub async fn connect(path: &str, peer: u16) -> anyhow::Result<ChannelStream> {
    let platform = xenvt_ring::platform::from_env()?;
    let xs = xenvt_ring::xenstore::XsClient::connect().await?;
    let ch = xenvt_ring::Channel::connect_xs(&*platform, &xs, peer, path)
        .await
        .with_context(|| format!("connect to the channel at {path}"))?;
    Ok(ChannelStream::new(ch)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use tokio::net::UnixStream;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        a: ChanArgs,
    }

    fn args(flags: &str) -> ChanArgs {
        let argv = ["t", "unix", "--listen", "unused"]
            .into_iter()
            .map(String::from)
            .chain(flags.split_whitespace().map(String::from));
        Cli::try_parse_from(argv).unwrap().a
    }

    async fn pair(x: &str, y: &str) -> (anyhow::Result<ChanReport>, anyhow::Result<ChanReport>) {
        let (s1, s2) = UnixStream::pair().unwrap();
        let (a, b) = (args(x), args(y));
        let (ca, cb) = (Arc::default(), Arc::default());
        tokio::join!(play(s1, &a, &ca), play(s2, &b, &cb))
    }

    #[tokio::test]
    async fn both_ways_with_go_and_ack_digests_agree() {
        let (x, y) = pair(
            "--go --send 300000 --recv 200001 --send-seed 1 --recv-seed 2 --ack --chunk 7000",
            "--wait-go --send 200001 --recv 300000 --send-seed 2 --recv-seed 1 --wait-ack",
        )
        .await;
        let (x, y) = (x.unwrap(), y.unwrap());
        assert_eq!(
            (x.sent, x.received, y.sent, y.received),
            (300000, 200001, 200001, 300000)
        );
        assert_eq!(x.sent_sha256, y.received_sha256);
        assert_eq!(y.sent_sha256, x.received_sha256);
        assert_eq!(x.sent_sha256, crate::pattern::expected_sha256(1, 300000));
    }

    #[tokio::test]
    async fn without_digests_every_byte_is_still_counted() {
        let (x, y) = pair(
            "--go --send 300000 --recv 5000 --send-seed 1 --recv-seed 2 --no-digest",
            "--wait-go --send 5000 --recv 300000 --send-seed 2 --recv-seed 1 --no-digest",
        )
        .await;
        let (x, y) = (x.unwrap(), y.unwrap());
        assert_eq!((x.received, y.received), (5000, 300000));
        assert!(x.sent_sha256.is_empty() && y.received_sha256.is_empty());
        // A peer that sends another stream is caught by the comparison alone.
        let (x, y) = pair(
            "--send 5000 --send-seed 3 --no-digest",
            "--recv 5000 --recv-seed 1 --no-digest",
        )
        .await;
        let _ = x;
        let e = format!("{:#}", y.unwrap_err());
        assert!(e.contains("corrupted"), "{e}");
    }

    #[tokio::test]
    async fn an_ack_alone_is_not_data() {
        let (x, y) = pair(
            "--wait-go --send 70000 --wait-ack --send-seed 4",
            "--go --recv 70000 --recv-seed 4 --ack",
        )
        .await;
        assert_eq!(x.unwrap().received, 0);
        assert_eq!(y.unwrap().received, 70000);
    }

    #[tokio::test]
    async fn lingering_waits_for_the_close() {
        let (x, y) = pair(
            "--send 100 --recv 0 --linger",
            "--recv 100 --recv-seed 1 --send 3 --send-seed 9",
        )
        .await;
        y.unwrap();
        let e = x.unwrap_err().to_string();
        assert!(e.contains("more than agreed"), "{e}");
        let (x, y) = pair("--send 100 --recv 0 --linger", "--recv 100 --recv-seed 1").await;
        x.unwrap();
        y.unwrap();
        let (x, y) = pair(
            "--send 100 --recv 0 --linger",
            "--recv 100 --recv-seed 1 --bye",
        )
        .await;
        x.unwrap();
        y.unwrap();
        let (x, y) = pair("--send 100 --linger", "--recv 100 --recv-seed 1 --bye").await;
        x.unwrap();
        y.unwrap();
        let (x, y) = pair("--ping 30 --bye", "--pong 30 --linger").await;
        x.unwrap();
        y.unwrap();
    }

    #[tokio::test]
    async fn wrong_seed_is_a_corruption() {
        let (x, y) = pair("--send 5000 --recv 0", "--recv 5000 --recv-seed 9").await;
        x.unwrap();
        let e = format!("{:#}", y.unwrap_err());
        assert!(e.contains("corrupted at byte 0"), "{e}");
    }

    #[tokio::test]
    async fn receiving_until_eof_counts_every_byte() {
        let (x, y) = pair("--send 123457 --recv 0", "--recv-seed 1").await;
        x.unwrap();
        assert_eq!(y.unwrap().received, 123457);
    }

    #[tokio::test]
    async fn an_early_close_names_the_counts() {
        let (x, y) = pair("--send 1000 --recv 0", "--recv 5000 --recv-seed 1").await;
        x.unwrap();
        let e = y.unwrap_err().to_string();
        assert_eq!(e, "peer closed after 1000 of 5000 bytes (sent 0 of 0)");
    }

    #[tokio::test]
    async fn a_missing_ack_is_an_early_close() {
        let (x, y) = pair(
            "--recv 10 --send-seed 2 --recv-seed 1",
            "--send 10 --wait-ack",
        )
        .await;
        x.unwrap();
        let e = y.unwrap_err().to_string();
        assert!(e.starts_with("peer closed after 0 bytes"), "{e}");
    }

    #[tokio::test]
    async fn ping_pong_checks_each_byte() {
        let (x, y) = pair("--ping 50", "--pong 50").await;
        let x = x.unwrap();
        assert_eq!(x.round_trips, 50);
        assert!(x.rtt_median_us > 0.0);
        y.unwrap();
        let (x, _) = pair("--ping 50", "--pong 20").await;
        let e = x.unwrap_err().to_string();
        assert_eq!(e, "peer closed after 20 of 50 round trips");
    }

    #[tokio::test]
    async fn a_proxy_header_is_read_and_named() {
        let o = xenvt_ring::proxyv2::Origin {
            domid: 7,
            domain: "vm1".into(),
            service: "up".into(),
        };
        let mut bytes = xenvt_ring::proxyv2::encode(&o).unwrap();
        bytes.extend_from_slice(b"data");
        let mut r = &bytes[..];
        let line = proxy_line(&mut r).await.unwrap();
        assert_eq!(line, "proxy-v2 domid=7 domain=vm1 service=up");
        assert_eq!(r, b"data", "the data after the header is left unread");
        let mut r = &b"RFB 003.008\n plain data, no header"[..];
        let e = format!("{:#}", proxy_line(&mut r).await.unwrap_err());
        assert!(e.contains("signature"), "{e}");
    }

    #[test]
    fn spin_us_is_the_channel_budget_or_the_default() {
        assert_eq!(args("").spin_us, None);
        assert_eq!(args("--spin-us 0").spin_us, Some(0));
        assert_eq!(args("--ping 3 --spin-us 150").spin_us, Some(150));
    }

    #[test]
    fn ack_needs_a_count() {
        let argv = ["t", "unix", "--listen", "x", "--ack"];
        assert!(Cli::try_parse_from(argv).is_err());
    }
}
