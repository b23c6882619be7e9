//! The transport end to end on the simulated host, with the real `xenvt-agent`
//! and `xenvt-backend` binaries (build them first: `cargo build -p xenvt-agent
//! -p xenvt-backend`, or run `cargo test -p xenvt -p xenvt-agent -p
//! xenvt-backend`). Daemon log lines are the events the tests wait on.
//!
//! `XENVT_TUNNEL_BYTES` overrides the size of the big transfers (1 GiB each way
//! by default); `XENVT_TEST_ECHO=1` copies the daemons' logs to stderr.

use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{ensure, Context};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::mpsc;
use xenvt::bench::tunnel::rig::{Daemon, Rig, PROMPT};
use xenvt::pattern::{Checker, Source};
use xenvt::sim::control::{DomainInfo, DomainRef, Request};
use xenvt_ring::proxyv2::{self, Origin};

fn exe() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_xenvt"))
}

fn big() -> u64 {
    std::env::var("XENVT_TUNNEL_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1 << 30)
}

/// A dom0 service: hands out each delivered connection with its PROXY v2 origin.
struct Service {
    rx: mpsc::UnboundedReceiver<(Origin, UnixStream)>,
}

impl Service {
    fn new(path: PathBuf) -> Service {
        let l = UnixListener::bind(&path).unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    if let Ok(o) = proxyv2::read(&mut s).await {
                        let _ = tx.send((o, s));
                    }
                });
            }
        });
        Service { rx }
    }

    async fn next(&mut self) -> anyhow::Result<(Origin, UnixStream)> {
        tokio::time::timeout(PROMPT, self.rx.recv())
            .await
            .context("no connection delivered")?
            .context("service gone")
    }

    /// Echoes every connection back, in the background.
    fn echo(&mut self) {
        let (_, none) = mpsc::unbounded_channel();
        let mut rx = std::mem::replace(&mut self.rx, none);
        tokio::spawn(async move {
            while let Some((_, s)) = rx.recv().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.into_split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = w.shutdown().await;
                });
            }
        });
    }
}

async fn send_pattern<W: AsyncWrite + Unpin>(mut w: W, seed: u64, n: u64) -> anyhow::Result<W> {
    send_counted(&mut w, seed, n, None).await?;
    w.shutdown().await?;
    Ok(w)
}

async fn send_counted<W: AsyncWrite + Unpin>(
    w: &mut W,
    seed: u64,
    n: u64,
    count: Option<&AtomicU64>,
) -> anyhow::Result<()> {
    let mut src = Source::new(seed);
    let mut buf = vec![0u8; 256 << 10];
    let mut left = n;
    while left > 0 {
        let k = left.min(buf.len() as u64) as usize;
        src.fill(&mut buf[..k]);
        w.write_all(&buf[..k]).await?;
        left -= k as u64;
        if let Some(c) = count {
            c.fetch_add(k as u64, Ordering::Relaxed);
        }
    }
    Ok(())
}

/// Reads to end of stream, checking every byte; returns the count and sha256.
async fn recv_pattern<R: AsyncRead + Unpin>(r: &mut R, seed: u64) -> anyhow::Result<(u64, String)> {
    recv_counted(r, seed, None).await
}

async fn recv_counted<R: AsyncRead + Unpin>(
    r: &mut R,
    seed: u64,
    count: Option<&AtomicU64>,
) -> anyhow::Result<(u64, String)> {
    let mut chk = Checker::new(seed);
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        chk.check(&buf[..n])?;
        if let Some(c) = count {
            c.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
    Ok((chk.count(), chk.sha256()))
}

/// Waits until a connection is closed by the far end (EOF or reset).
async fn closed_soon<R: AsyncRead + Unpin>(r: &mut R) -> anyhow::Result<()> {
    let mut b = [0u8; 4096];
    tokio::time::timeout(PROMPT, async {
        loop {
            match r.read(&mut b).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .context("connection was not closed")
}

/// A rig with one guest `vm1`, its agent and the backend, wired for the usual
/// services: guest->dom0 `vnc` (to `svc`), dom0->guest `sink` (to `sink`) and
/// `echo`, and `stall` both ways for the stalled-reader test.
struct Setup {
    rig: Rig,
    vm1: DomainInfo,
    backend: Daemon,
    agent: Daemon,
    /// The agent's listeners: vnc, stall, nope (unknown to the backend), dead.
    addrs: Vec<SocketAddr>,
    svc: Service,
    stall: Service,
    /// Where the agent connects dom0->guest `sink` streams.
    sink: TcpListener,
}

fn backend_toml(rig: &Rig, extra: &str) -> String {
    format!(
        "{}\n[services.vnc]\ndeliver = {:?}\n[services.stall]\ndeliver = {:?}\n\
         [services.dead]\ndeliver = {:?}\n[services.sink]\nlisten = true\n\
         [services.ssh]\nlisten = true\n[limits]\nmax_streams = 1024\n{extra}",
        rig.backend_toml(),
        rig.path("vnc.sock").display().to_string(),
        rig.path("stall.sock").display().to_string(),
        rig.path("nobody-listens.sock").display().to_string(),
    )
}

/// An agent config with one listener, for service `vnc`.
const VNC_LOOPBACK: &str = "[[listen]]\naddress = \"127.0.0.1:0\"\nservice = \"vnc\"\n";

fn agent_toml(sink: SocketAddr) -> String {
    format!(
        "[[listen]]\naddress = \"127.0.0.1:0\"\nservice = \"vnc\"\n\
         [[listen]]\naddress = \"127.0.0.1:0\"\nservice = \"stall\"\n\
         [[listen]]\naddress = \"127.0.0.1:0\"\nservice = \"nope\"\n\
         [[listen]]\naddress = \"127.0.0.1:0\"\nservice = \"dead\"\n\
         [services.sink]\nconnect = \"{sink}\"\n[limits]\nmax_streams = 1024\n"
    )
}

impl Setup {
    async fn new() -> anyhow::Result<Setup> {
        Setup::with(|_| String::new()).await
    }

    /// With more backend config, made from the rig (for paths).
    async fn with(extra: impl FnOnce(&Rig) -> String) -> anyhow::Result<Setup> {
        let rig = Rig::new(exe()).await?;
        let extra = extra(&rig);
        let vm1 = rig.host.create("vm1").await?;
        let svc = Service::new(rig.path("vnc.sock"));
        let stall = Service::new(rig.path("stall.sock"));
        let sink = TcpListener::bind("127.0.0.1:0").await?;
        let mut backend = rig.backend(&backend_toml(&rig, &extra)).await?;
        let (mut agent, addrs) = rig.agent(&vm1, &agent_toml(sink.local_addr()?)).await?;
        ensure!(addrs.len() == 4, "agent listeners: {addrs:?}");
        backend.wait_for("listening for dom0").await?;
        agent.wait_for("backend connected").await?;
        Ok(Setup {
            rig,
            vm1,
            backend,
            agent,
            addrs,
            svc,
            stall,
            sink,
        })
    }

    fn guest_socket(&self, service: &str) -> PathBuf {
        self.rig
            .run_dir()
            .join("vm1")
            .join(format!("{service}.sock"))
    }

    async fn finish(mut self) -> anyhow::Result<()> {
        term_all([("agent", &mut self.agent), ("backend", &mut self.backend)]).await?;
        ensure!(
            !self.rig.run_dir().join("vm1").exists(),
            "socket directory left behind"
        );
        host_clean(self.rig).await
    }
}

/// Stops each daemon with SIGTERM, in order; each must exit successfully.
async fn term_all<const N: usize>(daemons: [(&str, &mut Daemon); N]) -> anyhow::Result<()> {
    for (label, d) in daemons {
        let st = d.term().await?;
        ensure!(st.success(), "{label}: {st:?}");
    }
    Ok(())
}

/// Waits until the host holds nothing for any domain, then stops it.
async fn host_clean(rig: Rig) -> anyhow::Result<()> {
    rig.host.wait_clean(10_000).await?;
    rig.host.stop().await?;
    Ok(())
}

/// One guest->dom0 stream of `n` bytes through the agent's `vnc` listener,
/// checked on arrival; returns the origin the backend gave.
async fn guest_to_dom0(
    addr: SocketAddr,
    svc: &mut Service,
    seed: u64,
    n: u64,
) -> anyhow::Result<Origin> {
    let c = TcpStream::connect(addr).await.context("connect")?;
    let sender = tokio::spawn(send_pattern(c, seed, n));
    let (origin, mut s) = svc.next().await?;
    let (count, _sha) = recv_pattern(&mut s, seed).await.context("receive")?;
    ensure!(count == n, "received {count} of {n}");
    sender.await?.context("send")?;
    Ok(origin)
}

#[tokio::test]
async fn one_gib_each_way_is_exact() -> anyhow::Result<()> {
    let mut s = Setup::new().await?;
    let n = big();
    let t = Instant::now();
    // guest -> dom0
    let c = TcpStream::connect(s.addrs[0]).await?;
    let up = tokio::spawn(async move {
        let mut src_sha = sha2_of_pattern(1, n);
        let w = send_pattern(c, 1, n).await?;
        drop(w);
        anyhow::Ok(std::mem::take(&mut src_sha))
    });
    // dom0 -> guest
    let u = UnixStream::connect(s.guest_socket("sink")).await?;
    let down = tokio::spawn(send_pattern(u, 2, n));
    let (origin, mut ds) = s.svc.next().await?;
    assert_eq!(
        origin,
        Origin {
            domid: s.vm1.id,
            domain: "vm1".into(),
            service: "vnc".into()
        }
    );
    let (mut gs, _) = tokio::time::timeout(PROMPT, s.sink.accept()).await??;
    let (a, b) = tokio::join!(recv_pattern(&mut ds, 1), recv_pattern(&mut gs, 2));
    let (up_n, up_sha) = a?;
    let (down_n, down_sha) = b?;
    assert_eq!(up_n, n);
    assert_eq!(down_n, n);
    assert_eq!(up_sha, up.await??);
    assert_eq!(down_sha, sha2_of_pattern(2, n));
    down.await??;
    eprintln!(
        "{} MiB each way in {:.1} s",
        n >> 20,
        t.elapsed().as_secs_f64()
    );
    s.finish().await
}

fn sha2_of_pattern(seed: u64, n: u64) -> String {
    xenvt::pattern::expected_sha256(seed, n)
}

#[tokio::test]
async fn many_concurrent_streams_of_mixed_sizes() -> anyhow::Result<()> {
    let mut s = Setup::new().await?;
    s.svc.echo();
    const STREAMS: u64 = 256;
    let sizes = [0u64, 1, 100, 4096, 65_537, 300_000, 1 << 20];
    let mut tasks = Vec::new();
    for i in 0..STREAMS {
        let n = sizes[(i % sizes.len() as u64) as usize] + i;
        let addr = s.addrs[0];
        tasks.push(tokio::spawn(async move {
            let c = TcpStream::connect(addr).await?;
            let (mut r, w) = c.into_split();
            let sender = tokio::spawn(send_pattern(w, 100 + i, n));
            let (count, _) = recv_pattern(&mut r, 100 + i).await?;
            ensure!(count == n, "stream {i}: echoed {count} of {n}");
            sender.await??;
            anyhow::Ok(n)
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += tokio::time::timeout(PROMPT * 4, t).await???;
    }
    eprintln!("{STREAMS} streams, {total} bytes each way");
    s.finish().await
}

#[tokio::test]
async fn a_stalled_reader_does_not_hold_up_other_streams() -> anyhow::Result<()> {
    let mut s = Setup::new().await?;
    const STALL_BYTES: u64 = 64 << 20;
    let written = Arc::new(AtomicU64::new(0));
    let c = TcpStream::connect(s.addrs[1]).await?;
    let w2 = written.clone();
    let stalled_writer = tokio::spawn(async move {
        let mut c = c;
        send_counted(&mut c, 7, STALL_BYTES, Some(&w2)).await?;
        c.shutdown().await?;
        anyhow::Ok(c)
    });
    // The service takes the stalled stream and does not read it.
    let (_, mut stalled) = s.stall.next().await?;
    // Meanwhile another stream moves plenty.
    guest_to_dom0(s.addrs[0], &mut s.svc, 8, 64 << 20).await?;
    let at_that_point = written.load(Ordering::Relaxed);
    assert!(
        !stalled_writer.is_finished() && at_that_point < STALL_BYTES,
        "the stalled stream was not held back ({at_that_point} bytes written)"
    );
    // Now drain it: nothing was lost while it waited.
    let (count, _) = recv_pattern(&mut stalled, 7).await?;
    assert_eq!(count, STALL_BYTES);
    stalled_writer.await??;
    eprintln!("stalled stream held {at_that_point} bytes in buffers while another moved 64 MiB");
    s.finish().await
}

/// Writes `m`, then shuts the writing side down.
async fn say<W: AsyncWrite + Unpin>(w: &mut W, m: &[u8]) -> anyhow::Result<()> {
    w.write_all(m).await?;
    w.shutdown().await?;
    Ok(())
}

/// Reads to the end of stream, which must bring exactly `want`.
async fn hear<R: AsyncRead + Unpin>(r: &mut R, want: &[u8]) -> anyhow::Result<()> {
    let mut got = Vec::new();
    r.read_to_end(&mut got).await?;
    ensure!(
        got == want,
        "heard {:?}, not {:?}",
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(want)
    );
    Ok(())
}

#[tokio::test]
async fn half_close_both_ways() -> anyhow::Result<()> {
    let mut s = Setup::new().await?;
    // guest -> dom0: the client stops sending, then still hears the reply.
    let mut c = TcpStream::connect(s.addrs[0]).await?;
    say(&mut c, b"question").await?;
    let (_, mut d) = s.svc.next().await?;
    hear(&mut d, b"question").await?;
    say(&mut d, b"answer after EOF").await?;
    hear(&mut c, b"answer after EOF").await?;

    // dom0 -> guest: the same, the other way round.
    let mut u = UnixStream::connect(s.guest_socket("sink")).await?;
    say(&mut u, b"ping").await?;
    let (mut g, _) = tokio::time::timeout(PROMPT, s.sink.accept()).await??;
    hear(&mut g, b"ping").await?;
    say(&mut g, b"pong").await?;
    hear(&mut u, b"pong").await?;

    // And the other order: the server side closes first.
    let mut c = TcpStream::connect(s.addrs[0]).await?;
    let (_, mut d) = s.svc.next().await?;
    say(&mut d, b"bye first").await?;
    hear(&mut c, b"bye first").await?;
    say(&mut c, b"still heard").await?;
    hear(&mut d, b"still heard").await?;
    s.finish().await
}

#[tokio::test]
async fn refused_services_are_closed_and_others_unaffected() -> anyhow::Result<()> {
    let mut s = Setup::new().await?;
    // guest -> dom0: a service the backend does not know...
    refused_tcp(s.addrs[2]).await.context("nope")?;
    // ...and one it knows whose socket nobody listens on.
    refused_tcp(s.addrs[3]).await.context("dead")?;
    // dom0 -> guest: a service the agent does not allow.
    let mut u = UnixStream::connect(s.guest_socket("ssh"))
        .await
        .context("connect ssh")?;
    closed_soon(&mut u).await?;
    // No socket for services that are not configured to listen.
    assert!(!s.guest_socket("vnc").exists());
    // The channel is fine.
    guest_to_dom0(s.addrs[0], &mut s.svc, 3, 1 << 20)
        .await
        .context("a good stream after the refusals")?;
    let refusals = s
        .backend
        .log()
        .iter()
        .filter(|l| l.contains("refused"))
        .count();
    assert!(refusals >= 1, "{:?}", s.backend.log());
    s.finish().await
}

/// A connection to `addr` is closed at once. The agent resets it as soon as
/// the backend refuses, which may be before our connect even completes.
async fn refused_tcp(addr: SocketAddr) -> anyhow::Result<()> {
    match TcpStream::connect(addr).await {
        Ok(mut c) => closed_soon(&mut c).await,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Starts an endless guest->dom0 transfer and waits until bytes flow.
async fn endless_transfer(
    s: &mut Setup,
) -> anyhow::Result<(tokio::task::JoinHandle<anyhow::Result<()>>, UnixStream)> {
    let mut c = TcpStream::connect(s.addrs[0]).await?;
    let sender = tokio::spawn(async move {
        send_counted(&mut c, 5, 1 << 40, None).await?;
        anyhow::Ok(())
    });
    let (_, mut d) = s.svc.next().await?;
    let mut b = vec![0u8; 1 << 20];
    d.read_exact(&mut b).await?;
    Ok((sender, d))
}

/// The stream ends (sender and receiver both see an end) and its bytes were
/// exact up to there.
async fn broken_promptly(
    sender: tokio::task::JoinHandle<anyhow::Result<()>>,
    mut d: UnixStream,
) -> anyhow::Result<()> {
    let r = tokio::time::timeout(PROMPT, sender)
        .await
        .context("the sender hung")??;
    ensure!(r.is_err(), "the endless transfer ended cleanly");
    closed_soon(&mut d).await
}

/// Waits (at most [`PROMPT`]) until `now` says the state settled (`None`),
/// looking again every 20 ms; fails with what it said last. Used where the
/// daemons announce no event: their fds and dom0's mappings are released a
/// moment after the end a test waits on.
async fn settles<F, Fut>(mut now: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<String>>>,
{
    let deadline = Instant::now() + PROMPT;
    loop {
        let Some(why) = now().await? else {
            return Ok(());
        };
        ensure!(Instant::now() < deadline, "{why}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Waits until `d` holds `want` fds.
async fn fds_settle(d: &Daemon, want: usize) -> anyhow::Result<()> {
    settles(|| async move {
        let n = d.fd_count()?;
        Ok((n != want).then(|| format!("{n} fds, want {want}")))
    })
    .await
}

/// Waits until dom0 maps no page and holds no port.
async fn dom0_holds_nothing(rig: &Rig) -> anyhow::Result<()> {
    settles(|| async move {
        let stats = rig.host.stats().await?;
        let dom0 = &stats["devices"]["domains"]["0"];
        let clean = dom0["pages_mapped"].as_u64() == Some(0) && dom0["ports"].as_u64() == Some(0);
        Ok((!clean).then(|| format!("dom0 still holds: {stats}")))
    })
    .await
}

/// A transfer into vm1 whose guest side went away: the sender ends (however),
/// the delivered stream is closed and vm1's socket directory is gone.
async fn cut_off(
    s: &Setup,
    sender: tokio::task::JoinHandle<anyhow::Result<()>>,
    mut d: UnixStream,
) -> anyhow::Result<()> {
    let _ = tokio::time::timeout(PROMPT, sender)
        .await
        .context("sender hung")?;
    closed_soon(&mut d).await?;
    ensure!(
        !s.rig.run_dir().join("vm1").exists(),
        "vm1's socket directory left behind"
    );
    Ok(())
}

/// Kills (-9) `victim` and returns how many ms passed until `observer` said
/// `seen`. The goal is 1 s (typically a few ms); callers bound it at 5 s only
/// to catch a hang on a loaded machine.
async fn ms_to_notice(
    victim: &mut Daemon,
    observer: &mut Daemon,
    seen: &str,
) -> anyhow::Result<u128> {
    let t = Instant::now();
    victim.kill9().await?;
    observer.wait_for(seen).await?;
    Ok(t.elapsed().as_millis())
}

#[tokio::test]
async fn backend_killed_mid_transfer() -> anyhow::Result<()> {
    let mut s = Setup::new().await?;
    let agent_fds = s.agent.fd_count()?;
    let (sender, d) = endless_transfer(&mut s).await?;
    let seen = ms_to_notice(&mut s.backend, &mut s.agent, "backend gone").await?;
    eprintln!("agent saw the backend die after {seen} ms");
    assert!(seen < 5000, "agent took {seen} ms to see the backend die");
    broken_promptly(sender, d).await?;
    // The dead backend's mappings and ports went with it.
    dom0_holds_nothing(&s.rig).await?;
    // Restart: the backend re-attaches to the running agent and streams work.
    s.agent.wait_for("channel published").await?;
    let toml = backend_toml(&s.rig, "");
    s.backend = s.rig.backend(&toml).await?;
    s.backend.wait_for("agent attached").await?;
    s.agent.wait_for("backend connected").await?;
    guest_to_dom0(s.addrs[0], &mut s.svc, 9, 8 << 20).await?;
    // The agent holds what it held before: one channel, its listeners.
    fds_settle(&s.agent, agent_fds).await.context("agent fds")?;
    s.finish().await
}

#[tokio::test]
async fn agent_killed_mid_transfer() -> anyhow::Result<()> {
    let mut s = Setup::new().await?;
    let backend_fds = s.backend.fd_count()?;
    let (sender, d) = endless_transfer(&mut s).await?;
    let seen = ms_to_notice(&mut s.agent, &mut s.backend, "agent detached").await?;
    eprintln!("backend saw the agent die after {seen} ms");
    assert!(seen < 5000, "backend took {seen} ms to see the agent die");
    // The sender's TCP peer (the agent) is gone; the delivered stream ends.
    // The guest's sockets are gone with it, and dom0 maps nothing.
    cut_off(&s, sender, d).await?;
    dom0_holds_nothing(&s.rig).await?;
    // A new agent is picked up and works.
    let toml = agent_toml(s.sink.local_addr()?);
    let (agent, addrs) = s.rig.agent(&s.vm1, &toml).await?;
    s.agent = agent;
    s.addrs = addrs;
    s.backend.wait_for("listening for dom0").await?;
    s.agent.wait_for("backend connected").await?;
    guest_to_dom0(s.addrs[0], &mut s.svc, 10, 8 << 20).await?;
    fds_settle(&s.backend, backend_fds)
        .await
        .context("backend fds")?;
    s.finish().await
}

#[tokio::test]
async fn domain_destroyed_mid_transfer() -> anyhow::Result<()> {
    let mut s = Setup::new().await?;
    let vm2 = s.rig.host.create("vm2").await?;
    let (mut agent2, addrs2) = s.rig.agent(&vm2, &agent_toml(s.sink.local_addr()?)).await?;
    agent2.wait_for("backend connected").await?;
    let (sender, d) = endless_transfer(&mut s).await?;
    s.rig
        .host
        .client()
        .await?
        .call(&Request::Destroy {
            domain: DomainRef::Name("vm1".into()),
            keep_processes: false,
        })
        .await?;
    s.backend.wait_for("guest gone").await?;
    cut_off(&s, sender, d).await?;
    assert!(s.rig.run_dir().join("vm2").exists());
    // The other guest carries on.
    let o = guest_to_dom0(addrs2[0], &mut s.svc, 11, 8 << 20).await?;
    assert_eq!(o.domain, "vm2");
    assert_eq!(o.domid, vm2.id);
    term_all([("agent2", &mut agent2), ("backend", &mut s.backend)]).await?;
    ensure!(!s.rig.run_dir().join("vm2").exists());
    host_clean(s.rig).await
}

#[tokio::test]
async fn socket_permissions_private_unless_a_group_is_named() -> anyhow::Result<()> {
    let rig = Rig::new(exe()).await?;
    let vm1 = rig.host.create("vm1").await?;
    let vm2 = rig.host.create("vm2").await?;
    let gid = nix::unistd::getegid();
    let group = nix::unistd::Group::from_gid(gid)?
        .context("our group has no name")?
        .name;
    let toml = format!(
        "{}\n[services.vnc]\nlisten = true\n[guests.vm2]\ngroup = {group:?}\n",
        rig.backend_toml()
    );
    let mut backend = rig.backend(&toml).await?;
    let (mut a1, _) = rig.agent(&vm1, VNC_LOOPBACK).await?;
    let (mut a2, _) = rig.agent(&vm2, VNC_LOOPBACK).await?;
    backend.wait_for("listening for dom0").await?;
    backend.wait_for("listening for dom0").await?;
    let euid = nix::unistd::geteuid().as_raw();
    let m = |p: PathBuf| std::fs::metadata(p).unwrap();
    let d1 = rig.run_dir().join("vm1");
    let d2 = rig.run_dir().join("vm2");
    assert_eq!(m(d1.clone()).mode() & 0o7777, 0o700);
    assert_eq!(m(d1.join("vnc.sock")).mode() & 0o7777, 0o600);
    assert_eq!(m(d1.clone()).uid(), euid);
    assert_eq!(m(d2.clone()).mode() & 0o7777, 0o750);
    assert_eq!(m(d2.join("vnc.sock")).mode() & 0o7777, 0o660);
    assert_eq!(m(d2.clone()).gid(), gid.as_raw());
    assert_eq!(m(d2.join("vnc.sock")).gid(), gid.as_raw());
    term_all([("a1", &mut a1), ("a2", &mut a2), ("backend", &mut backend)]).await?;
    host_clean(rig).await
}

#[tokio::test]
async fn configs_are_checked_and_name_the_file() -> anyhow::Result<()> {
    let rig = Rig::new(exe()).await?;
    let out = rig
        .run_once(
            true,
            "[[listen]]\naddress = \"0.0.0.0:5500\"\nservice = \"vnc\"\n",
            &["--check"],
        )
        .await?;
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(".toml:2:1: ") && err.contains("not loopback"),
        "{err}"
    );
    let out = rig
        .run_once(
            true,
            "[[listen]]\naddress = \"0.0.0.0:5500\"\nservice = \"vnc\"\npublic = true\n",
            &["--check"],
        )
        .await?;
    assert!(out.status.success(), "{out:?}");
    let out = rig
        .run_once(
            false,
            "[services.x]\ndeliver = \"relative\"\n",
            &["--check"],
        )
        .await?;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("absolute"));
    rig.host.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_hostile_agent_does_not_disturb_another_guest() -> anyhow::Result<()> {
    let mut s = Setup::with(|rig| {
        format!(
            "[services.evil]\ndeliver = {:?}\n",
            rig.path("evil.sock").display().to_string()
        )
    })
    .await?;
    // What the hostile guest manages to open lands here, and is drained.
    let mut evil_svc = Service::new(s.rig.path("evil.sock"));
    evil_svc.echo();
    let n = (big() / 4).max(1 << 20);
    let t = Instant::now();
    guest_to_dom0(s.addrs[0], &mut s.svc, 20, n).await?;
    let alone = t.elapsed().as_secs_f64();

    let lines_before = s.backend.log().len();
    let vm2 = s.rig.host.create("evil").await?;
    let mut hostile = s.rig.host.xenvt_in(&vm2);
    hostile
        .args([
            "bench",
            "hostile-agent",
            "--mode",
            "all",
            "--service",
            "evil",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut hostile = hostile.spawn()?;
    let mut hl = tokio::io::BufReader::new(hostile.stdout.take().context("stdout")?);
    let mut first = String::new();
    tokio::io::AsyncBufReadExt::read_line(&mut hl, &mut first).await?;
    assert!(first.starts_with("round 1 Flood"), "{first}");
    // Keep its output drained, counting rounds.
    let rounds = Arc::new(AtomicU64::new(1));
    let r2 = rounds.clone();
    tokio::spawn(async move {
        let mut lines = tokio::io::AsyncBufReadExt::lines(hl);
        while let Ok(Some(l)) = lines.next_line().await {
            if l.starts_with("round") && !l.contains("ended") {
                r2.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    let t = Instant::now();
    guest_to_dom0(s.addrs[0], &mut s.svc, 21, n).await?;
    let beside = t.elapsed().as_secs_f64();
    // Let it try every mode at least once.
    let deadline = Instant::now() + PROMPT * 2;
    while rounds.load(Ordering::Relaxed) < 6 && Instant::now() < deadline {
        s.backend.wait_for("guest{domid=").await?;
    }
    guest_to_dom0(s.addrs[0], &mut s.svc, 22, 1 << 20).await?;
    eprintln!(
        "{} MiB alone {:.2} s, beside a hostile agent {:.2} s; hostile rounds {}",
        n >> 20,
        alone,
        beside,
        rounds.load(Ordering::Relaxed)
    );
    // Everything the backend said meanwhile (the mux's own lines included).
    let lines = s.backend.log().len() - lines_before;
    eprintln!("backend log lines while the hostile guest played: {lines}");
    assert!(lines < 200, "unbounded log: {lines} lines");
    hostile.start_kill()?;
    hostile.wait().await?;
    s.finish().await
}

#[tokio::test]
async fn the_hook_runs_whenever_a_backend_connects() -> anyhow::Result<()> {
    let rig = Rig::new(exe()).await?;
    let vm1 = rig.host.create("vm1").await?;
    let agent_toml = "[[listen]]\naddress = \"127.0.0.1:0\"\nservice = \"vnc\"\n\
                      [hook]\ncommand = [\"sh\", \"-c\", \"echo connected-$((40 + 2))\"]\n";
    let (mut agent, _) = rig.agent(&vm1, agent_toml).await?;
    let mut backend = rig.backend(&rig.backend_toml()).await?;
    agent.wait_for("hook: connected-42").await?;
    agent.wait_for("exited").await?;
    backend.kill9().await?;
    agent.wait_for("backend gone").await?;
    let mut backend = rig.backend(&rig.backend_toml()).await?;
    agent.wait_for("hook: connected-42").await?;
    term_all([("agent", &mut agent), ("backend", &mut backend)]).await?;
    host_clean(rig).await
}

#[tokio::test]
async fn only_the_configured_domains_are_served() -> anyhow::Result<()> {
    let rig = Rig::new(exe()).await?;
    let vm1 = rig.host.create("vm1").await?;
    let vm2 = rig.host.create("vm2").await?;
    let (mut a1, _) = rig.agent(&vm1, VNC_LOOPBACK).await?;
    let (mut a2, _) = rig.agent(&vm2, VNC_LOOPBACK).await?;
    let toml = format!(
        "{}domains = [\"vm2\"]\n[services.vnc]\nlisten = true\n",
        rig.backend_toml()
    );
    let mut backend = rig.backend(&toml).await?;
    // Both domains were looked at in the same scan, before vm2's attachment.
    backend.wait_for("listening for dom0").await?;
    a2.wait_for("backend connected").await?;
    let log = backend.log();
    assert!(
        !log.iter().any(|l| l.contains("name=\"vm1\"")),
        "vm1 was served: {log:?}"
    );
    assert!(!rig.run_dir().join("vm1").exists());
    assert!(rig.run_dir().join("vm2").join("vnc.sock").exists());
    term_all([("a1", &mut a1), ("a2", &mut a2), ("backend", &mut backend)]).await?;
    host_clean(rig).await
}

/// The benchmark itself runs and prints its ratios (figures are not checked:
/// this is a debug build on a shared machine).
#[tokio::test]
async fn the_tunnel_benchmark_runs() -> anyhow::Result<()> {
    let out = tokio::time::timeout(
        PROMPT * 4,
        tokio::process::Command::new(exe())
            .args([
                "bench",
                "tunnel",
                "--quick",
                "--bytes",
                &(16u64 << 20).to_string(),
            ])
            .kill_on_drop(true)
            .output(),
    )
    .await??;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for name in [
        "tunnel_vs_tcp",
        "tunnel_vs_socket_relay",
        "tunnel_rtt_vs_tcp",
        "streams_64_vs_1",
        "idle_cpu_agent_pct",
        "idle_cpu_backend_pct",
    ] {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("ratio {name} ")))
            .with_context(|| format!("no ratio {name} in:\n{text}"))?;
        let v: f64 = line.rsplit(' ').next().unwrap_or("").parse()?;
        ensure!(v.is_finite() && v >= 0.0, "{line}");
    }
    Ok(())
}
