//! `xenvt soak`: the whole chain on the simulated host under churn and faults.
//!
//! Every guest runs the agent and a real Xvnc desktop (which reconnects through
//! the agent's hook); dom0 runs the backend and the proxy. While checked tunnel
//! transfers run in both directions and viewers come and go switching views, the
//! soak kills (-9) and restarts the agent, the backend and the proxy in turn and
//! restarts desktops. At the end every desktop must be back, nothing may be left
//! mapped or granted on the host, and no daemon may hold more file descriptors
//! than when the run started. Decisions come from a seeded generator whose seed is
//! printed, so a failing run can be replayed with `--seed`.
//!
//! A transfer that a fault cut short is expected and counted; a transfer cut with
//! no fault on its path, a wrong byte, or a transfer that hangs fails the run.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context};
use clap::Args;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::mpsc;

use xenvt_proxy::rfb::handshake::{client_handshake, ClientConfig};
use xenvt_proxy::rfb::io::RfbReader;
use xenvt_proxy::rfb::{
    encoding, ClientDecoder, ClientMessage, DecoderLimits, PixelFormat, Rect, ServerEvent,
};

use crate::bench::tunnel::rig::{sibling, Daemon, Rig};
use crate::demo::{
    free_port, lit, proxy_config, run_x_client, shows, start_proxy, start_xvnc, views, Proc,
    ProxyOptions, XvncSpec,
};
use crate::harness::env_for;
use crate::pattern::{expected_sha256, Checker, Source};
use crate::sim::control::DomainInfo;

/// Upper bound for things that should happen at once; only a failure waits this long.
const PATIENCE: Duration = Duration::from_secs(30);
/// How long desktops may take to come back after a proxy restart: the agents' redial
/// pauses double from 1 s while the proxy is down (1 + 2 + 4 + 8 + 16 + 32 s covers a
/// proxy that takes half a minute to return), then the reconnect itself.
const REDIAL_PATIENCE: Duration = Duration::from_secs(90);
/// A transfer that takes longer than this has hung.
const TRANSFER_LIMIT: Duration = Duration::from_secs(120);

/// Arguments of `xenvt soak`.
#[derive(Args, Debug)]
pub struct SoakArgs {
    /// The CI run: 4 domains for 75 s. Without it: 32 domains for 4 hours.
    #[arg(long)]
    pub short: bool,
    /// Guest domains (each with a desktop, two viewers and a transfer loop).
    #[arg(long)]
    pub domains: Option<u16>,
    /// Seconds of churn before the final checks.
    #[arg(long)]
    pub secs: Option<u64>,
    /// Seed of the run's decisions (default: from the clock; printed either way).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Seconds between faults (default 5 short, 60 long).
    #[arg(long)]
    pub fault_every: Option<u64>,
    /// Largest transfer in bytes (each is 64 KiB up to this).
    #[arg(long, default_value_t = 4 << 20)]
    pub max_transfer: u64,
}

/// The run's decisions come from one seeded generator, forked per task, so a
/// printed seed replays the run.
pub type Rng = fastrand::Rng;

/// A value in `lo..=hi` (`lo` when the range is empty).
fn range(rng: &mut Rng, lo: u64, hi: u64) -> u64 {
    if hi <= lo {
        lo
    } else {
        rng.u64(lo..=hi)
    }
}

/// What the run did and found.
#[derive(Default)]
struct Counters {
    transfers_ok: AtomicU64,
    transfers_cut_by_fault: AtomicU64,
    bytes_checked: AtomicU64,
    mismatches: AtomicU64,
    unexplained_cuts: AtomicU64,
    hangs: AtomicU64,
    viewer_sessions: AtomicU64,
    viewer_failures: AtomicU64,
    view_switches: AtomicU64,
    frames: AtomicU64,
    agent_kills: AtomicU64,
    backend_kills: AtomicU64,
    proxy_kills: AtomicU64,
    /// The longest wait, in ms, for every desktop to redial after a proxy restart.
    redial_ms_max: AtomicU64,
    desktop_restarts: AtomicU64,
}

fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// When faults touched a domain's data path: a transfer that overlaps a change
/// of `epoch`, or a moment with `open` > 0, may be cut.
#[derive(Default)]
struct FaultClock {
    epoch: AtomicU64,
    open: AtomicU64,
}

impl FaultClock {
    fn begin(&self) {
        self.open.fetch_add(1, Ordering::SeqCst);
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }
    fn end(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.open.fetch_sub(1, Ordering::SeqCst);
    }
    /// (epoch, whether a fault is open) now.
    fn mark(&self) -> (u64, bool) {
        (
            self.epoch.load(Ordering::SeqCst),
            self.open.load(Ordering::SeqCst) > 0,
        )
    }
    /// Whether a fault touched the span that began at `start`.
    fn touched(&self, start: (u64, bool)) -> bool {
        let now = self.mark();
        start.1 || now.1 || now.0 != start.0
    }
}

/// Peak resident memory (VmHWM) of a process in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// One guest.
struct Dom {
    info: DomainInfo,
    display: u32,
    vnc_port: u16,
    data_port: u16,
    agent: Daemon,
    agent_toml: String,
    xvnc: Proc,
    /// Streams the backend delivered for this guest's "up" service.
    up_rx: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<UnixStream>>>,
    /// Where the agent connects this guest's "down" streams.
    down: Arc<TcpListener>,
}

/// The running soak.
struct Soak {
    rig: Rig,
    proxy_exe: PathBuf,
    logs: PathBuf,
    backend_toml: String,
    backend: tokio::sync::Mutex<Daemon>,
    proxy: tokio::sync::Mutex<Proc>,
    doms: Vec<tokio::sync::Mutex<Dom>>,
    /// Per domain: its fault clock's view for transfers (shared, lock-free).
    clocks: Vec<Arc<FaultClock>>,
    names: Vec<(u16, String)>,
    viewers: Mutex<BTreeMap<u16, SocketAddr>>,
    web: Mutex<Option<SocketAddr>>,
    c: Counters,
    peak_rss: Mutex<BTreeMap<&'static str, u64>>,
    stop: AtomicBool,
}

impl Soak {
    fn note_rss(&self, kind: &'static str, pid: u32) {
        let kib = peak_rss_kib(pid);
        let mut m = self.peak_rss.lock().unwrap_or_else(|p| p.into_inner());
        let e = m.entry(kind).or_default();
        *e = (*e).max(kib);
    }

    fn run_dir(&self) -> PathBuf {
        self.rig.run_dir()
    }

    fn down_sock(&self, name: &str) -> PathBuf {
        self.run_dir().join(name).join("down.sock")
    }

    async fn restart_proxy(&self) -> anyhow::Result<()> {
        let dom0 = self.rig.host.dom0().await?;
        let (p, v, w) = start_proxy(
            &self.proxy_exe,
            &dom0,
            &self.rig.path("proxy.toml"),
            &self.logs.join("proxy.log"),
            true,
        )
        .await?;
        *self.proxy.lock().await = p;
        *self.viewers.lock().unwrap_or_else(|p| p.into_inner()) = v.into_iter().collect();
        *self.web.lock().unwrap_or_else(|p| p.into_inner()) = w;
        Ok(())
    }

    /// Starts Xvnc for a guest on `display` (None: any free display); returns it
    /// and its display number.
    async fn start_xvnc(
        &self,
        dom: &DomainInfo,
        display: Option<u32>,
    ) -> anyhow::Result<(Proc, u32)> {
        let spec = XvncSpec {
            display,
            geometry: "640x480",
            unix_socket: None,
            tied: true,
        };
        start_xvnc(dom, spec, &self.logs).await
    }

    /// Runs `vncconfig -connect` so the desktop reverse-connects through the agent.
    async fn connect_desktop(
        &self,
        dom: &DomainInfo,
        display: u32,
        vnc_port: u16,
    ) -> anyhow::Result<()> {
        let to = format!("127.0.0.1:{vnc_port}");
        run_x_client(
            &env_for(dom),
            display,
            "vncconfig",
            &["-connect", &to],
            Stdio::null(),
        )
        .await
    }

    fn agent_toml(display: u32, vnc_port: u16, data_port: u16, down_port: u16) -> String {
        format!(
            "[[listen]]\naddress = \"127.0.0.1:{vnc_port}\"\nservice = \"vnc\"\n\
             [[listen]]\naddress = \"127.0.0.1:{data_port}\"\nservice = \"up\"\n\
             [services.down]\nconnect = \"127.0.0.1:{down_port}\"\n\
             [hook]\ncommand = [\"vncconfig\", \"-display\", \":{display}\", \"-connect\", \"127.0.0.1:{vnc_port}\"]\n\
             timeout_secs = 30\n"
        )
    }

    /// Waits (bounded) until `p` exists, or is gone with `gone`. The backend
    /// announces no event a test could wait on for its socket files, so this looks.
    async fn wait_path(p: &Path, gone: bool) -> anyhow::Result<()> {
        let t = Instant::now();
        while p.exists() == gone {
            ensure!(
                t.elapsed() < PATIENCE,
                "{} {} after {} s",
                p.display(),
                if gone {
                    "is still there"
                } else {
                    "did not appear"
                },
                PATIENCE.as_secs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    // ------------------------------------------------------------ faults

    async fn kill_agent(&self, i: usize) -> anyhow::Result<()> {
        let clock = &self.clocks[i];
        clock.begin();
        let r = async {
            let mut d = self.doms[i].lock().await;
            self.note_rss("agent", d.agent.pid());
            d.agent.kill9().await?;
            let sock = self.down_sock(&d.info.name);
            Self::wait_path(&sock, true)
                .await
                .context("the backend did not clean up after a dead agent")?;
            let (agent, _) = self.rig.agent(&d.info, &d.agent_toml).await?;
            d.agent = agent;
            Self::wait_path(&sock, false)
                .await
                .context("the backend did not attach to the restarted agent")?;
            anyhow::Ok(())
        }
        .await;
        clock.end();
        add(&self.c.agent_kills, 1);
        r
    }

    async fn kill_backend(&self) -> anyhow::Result<()> {
        for c in &self.clocks {
            c.begin();
        }
        let r = async {
            let mut b = self.backend.lock().await;
            self.note_rss("backend", b.pid());
            b.kill9().await?;
            *b = self.rig.backend(&self.backend_toml).await?;
            // Attached again once it listens for each guest (a killed backend leaves
            // its old sockets behind, so their presence says nothing).
            let mut left: std::collections::BTreeSet<&str> =
                self.names.iter().map(|(_, n)| n.as_str()).collect();
            while !left.is_empty() {
                let l = match b.wait_for("listening for dom0 -> guest streams").await {
                    Ok(l) => l,
                    Err(e) => {
                        let tail: Vec<String> = b.log().into_iter().rev().take(8).collect();
                        bail!(
                            "{e} (still waiting for {left:?}; last lines, newest first: {tail:?})"
                        );
                    }
                };
                left.retain(|n| !l.ends_with(&format!("/{n}")));
            }
            anyhow::Ok(())
        }
        .await;
        for c in &self.clocks {
            c.end();
        }
        add(&self.c.backend_kills, 1);
        r
    }

    async fn kill_proxy(&self) -> anyhow::Result<()> {
        {
            let mut p = self.proxy.lock().await;
            self.note_rss("proxy", p.pid());
            p.kill9().await?;
        }
        self.restart_proxy().await?;
        add(&self.c.proxy_kills, 1);
        // The desktops' reverse connections ended with the proxy. Dom0 ended those
        // streams, so each agent's hook redials its desktop by itself: nobody here
        // runs vncconfig. Every desktop must come back within the redial backoff.
        let ctl = self.rig.path("proxy.ctl");
        let t0 = Instant::now();
        let deadline = t0 + REDIAL_PATIENCE;
        loop {
            let back = match crate::status::proxy_domains(&ctl).await {
                Ok(list) => {
                    let up = list.iter().filter(|d| d.desktop == "connected").count();
                    if up == self.doms.len() {
                        let ms = u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX);
                        self.c.redial_ms_max.fetch_max(ms, Ordering::Relaxed);
                        return Ok(());
                    }
                    format!("{up} of {} desktops back", self.doms.len())
                }
                Err(e) => e,
            };
            ensure!(
                Instant::now() < deadline,
                "the desktops did not redial after the proxy restart: {back}"
            );
            // The proxy has no event for "a desktop connected"; its status is polled.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn restart_desktop(&self, i: usize) -> anyhow::Result<()> {
        let mut d = self.doms[i].lock().await;
        d.xvnc.stop().await?;
        let (x, n) = self.start_xvnc(&d.info, Some(d.display)).await?;
        ensure!(n == d.display, "Xvnc came back on :{n}, not :{}", d.display);
        d.xvnc = x;
        self.connect_desktop(&d.info, d.display, d.vnc_port).await?;
        add(&self.c.desktop_restarts, 1);
        Ok(())
    }

    // ------------------------------------------------------------ transfers

    /// Transfer loop of guest `i` until the soak stops.
    async fn transfers(self: Arc<Self>, i: usize, mut rng: Rng, max: u64) {
        let mut id = (i as u64 + 1) << 40;
        while !self.stop.load(Ordering::Relaxed) {
            id += 1;
            let n = range(&mut rng, 64 << 10, max.max(64 << 10));
            let up = rng.bool();
            let clock = self.clocks[i].clone();
            let start = clock.mark();
            let r = tokio::time::timeout(TRANSFER_LIMIT, self.transfer(i, up, id, n)).await;
            match r {
                Ok(Ok(())) => {
                    add(&self.c.transfers_ok, 1);
                    add(&self.c.bytes_checked, n);
                }
                Ok(Err(Outcome::Mismatch(e))) => {
                    add(&self.c.mismatches, 1);
                    eprintln!(
                        "soak: MISMATCH domain {i} transfer {id:#x} ({n} bytes, up {up}): {e}"
                    );
                }
                Ok(Err(Outcome::Cut(e))) => {
                    if clock.touched(start) {
                        add(&self.c.transfers_cut_by_fault, 1);
                        // Wait for the fault to pass rather than spin on refusals.
                        while clock.mark().1 && !self.stop.load(Ordering::Relaxed) {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    } else {
                        add(&self.c.unexplained_cuts, 1);
                        eprintln!("soak: CUT with no fault: domain {i} transfer {id:#x} ({n} bytes, up {up}): {e:#}");
                    }
                }
                Err(_) => {
                    add(&self.c.hangs, 1);
                    eprintln!("soak: HANG: domain {i} transfer {id:#x} ({n} bytes, up {up})");
                }
            }
        }
    }

    async fn transfer(&self, i: usize, up: bool, id: u64, n: u64) -> Result<(), Outcome> {
        let (name, data_port, up_rx, down) = {
            let d = self.doms[i].lock().await;
            (
                d.info.name.clone(),
                d.data_port,
                d.up_rx.clone(),
                d.down.clone(),
            )
        };
        if up {
            let c = TcpStream::connect(("127.0.0.1", data_port))
                .await
                .map_err(|e| Outcome::Cut(anyhow!("connect to the agent: {e}")))?;
            let send = send(c, id, n);
            let recv = async {
                loop {
                    let s = {
                        let mut rx = up_rx.lock().await;
                        tokio::time::timeout(PATIENCE, rx.recv()).await
                    };
                    let s = match s {
                        Ok(Some(s)) => s,
                        Ok(None) => return Err(Outcome::Cut(anyhow!("delivery ended"))),
                        Err(_) => return Err(Outcome::Cut(anyhow!("nothing delivered"))),
                    };
                    if let Some(r) = receive(s, id, n).await? {
                        return Ok(r);
                    }
                }
            };
            tokio::try_join!(send, recv)?;
        } else {
            let c = UnixStream::connect(self.down_sock(&name))
                .await
                .map_err(|e| Outcome::Cut(anyhow!("connect to the backend: {e}")))?;
            let send = send(c, id, n);
            let recv = async {
                loop {
                    let acc = tokio::time::timeout(PATIENCE, down.accept()).await;
                    let s = match acc {
                        Ok(Ok((s, _))) => s,
                        Ok(Err(e)) => return Err(Outcome::Cut(anyhow!("accept: {e}"))),
                        Err(_) => return Err(Outcome::Cut(anyhow!("the agent never connected"))),
                    };
                    if let Some(r) = receive(s, id, n).await? {
                        return Ok(r);
                    }
                }
            };
            tokio::try_join!(send, recv)?;
        }
        Ok(())
    }

    // ------------------------------------------------------------ viewers

    async fn viewer_loop(self: Arc<Self>, id: u16, mut rng: Rng) {
        while !self.stop.load(Ordering::Relaxed) {
            let addr = self
                .viewers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&id)
                .copied();
            let secs = range(&mut rng, 1, 6);
            let r = match addr {
                Some(a) => {
                    self.viewer_session(a, Duration::from_secs(secs), &mut rng)
                        .await
                }
                None => Err(anyhow!("no viewer address")),
            };
            match r {
                Ok(()) => add(&self.c.viewer_sessions, 1),
                // The proxy may be restarting; the final check proves recovery.
                Err(_) => {
                    add(&self.c.viewer_failures, 1);
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            }
        }
    }

    /// One viewer connection for `len`: updates as they come, and now and then a
    /// ctrl-alt-F1 or ctrl-alt-F7.
    async fn viewer_session(
        &self,
        a: SocketAddr,
        len: Duration,
        rng: &mut Rng,
    ) -> anyhow::Result<()> {
        let mut s = tokio::time::timeout(PATIENCE, TcpStream::connect(a)).await??;
        let (_, init) =
            tokio::time::timeout(PATIENCE, client_handshake(&mut s, &ClientConfig::default()))
                .await??;
        let pf = PixelFormat::rgb888();
        let mut dec = ClientDecoder::new(pf, init.width, init.height, DecoderLimits::default())?;
        let (rd, mut wr) = tokio::io::split(s);
        let frames = Arc::new(AtomicU64::new(0));
        let f2 = frames.clone();
        let reader = tokio::spawn(async move {
            let mut rd = RfbReader::new(rd, 64 << 20);
            while let Ok(ev) = rd.server_event(&mut dec).await {
                if matches!(ev, ServerEvent::UpdateEnd) {
                    f2.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        let mut m = Vec::new();
        ClientMessage::SetPixelFormat(pf).write(&mut m);
        ClientMessage::SetEncodings(vec![
            encoding::ZRLE,
            encoding::RAW,
            encoding::DESKTOP_SIZE,
            encoding::LAST_RECT,
        ])
        .write(&mut m);
        let full = Rect::new(0, 0, init.width, init.height);
        ClientMessage::FramebufferUpdateRequest {
            incremental: false,
            rect: full,
        }
        .write(&mut m);
        wr.write_all(&m).await?;
        let end = Instant::now() + len;
        let mut next_key = Instant::now() + Duration::from_millis(range(rng, 300, 2000));
        let r = async {
            while Instant::now() < end {
                tokio::time::sleep(Duration::from_millis(150)).await;
                let mut m = Vec::new();
                if Instant::now() >= next_key {
                    let fkey = if rng.bool() { XK_F1 } else { XK_F7 };
                    switch_keys(fkey, &mut m);
                    add(&self.c.view_switches, 1);
                    next_key = Instant::now() + Duration::from_millis(range(rng, 300, 2000));
                }
                ClientMessage::FramebufferUpdateRequest {
                    incremental: true,
                    rect: full,
                }
                .write(&mut m);
                wr.write_all(&m).await?;
            }
            anyhow::Ok(())
        }
        .await;
        reader.abort();
        add(&self.c.frames, frames.load(Ordering::Relaxed));
        r
    }

    /// What domain `id` shows now, from the proxy's `/domains.json`.
    async fn view_of(&self, id: u16) -> anyhow::Result<String> {
        let web = self
            .web
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .context("the proxy has no web listener")?;
        views(web)
            .await?
            .into_iter()
            .find_map(|(d, v)| (d == id).then_some(v))
            .ok_or_else(|| anyhow!("domains.json has no domain {id}"))
    }

    /// Switches domain `id` to `view` through a viewer and waits until the proxy
    /// shows it. The proxy has no event for this, so its status is polled.
    async fn check_view(&self, id: u16, fkey: u32, view: &str) -> anyhow::Result<()> {
        let a = self
            .viewers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .copied()
            .context("no viewer address")?;
        let mut s = tokio::time::timeout(PATIENCE, TcpStream::connect(a)).await??;
        tokio::time::timeout(PATIENCE, client_handshake(&mut s, &ClientConfig::default()))
            .await??;
        let (mut rd, mut wr) = tokio::io::split(s);
        // Drain what the proxy sends (unrequested here) so it never blocks on us.
        let drain = tokio::spawn(async move {
            let mut buf = vec![0u8; 1 << 16];
            while matches!(rd.read(&mut buf).await, Ok(n) if n > 0) {}
        });
        let deadline = Instant::now() + PATIENCE;
        let r = async {
            loop {
                let mut m = Vec::new();
                switch_keys(fkey, &mut m);
                wr.write_all(&m).await?;
                let now = self.view_of(id).await?;
                if shows(&now, view) {
                    return anyhow::Ok(());
                }
                if Instant::now() >= deadline {
                    bail!("domain {id} does not show its {view} (shows {now:?})");
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        .await;
        drain.abort();
        r
    }

    /// Every desktop is back and both views switch, for every domain.
    async fn check_all(&self) -> anyhow::Result<()> {
        for (id, _) in &self.names {
            self.check_view(*id, XK_F7, "desktop").await?;
            self.check_view(*id, XK_F1, "console").await?;
            self.check_view(*id, XK_F7, "desktop").await?;
        }
        Ok(())
    }

    /// Stops every process with SIGTERM, in order (agents and desktops, backend,
    /// proxy); what goes wrong is added to `problems`.
    async fn stop_all(&self, problems: &mut Vec<String>) {
        for d in &self.doms {
            let mut d = d.lock().await;
            if let Err(e) = d.agent.term().await {
                problems.push(format!("agent of {}: {e:#}", d.info.name));
            }
            if let Err(e) = d.xvnc.stop().await {
                problems.push(format!("Xvnc of {}: {e:#}", d.info.name));
            }
        }
        if let Err(e) = self.backend.lock().await.term().await {
            problems.push(format!("backend: {e:#}"));
        }
        if let Err(e) = self.proxy.lock().await.stop().await {
            problems.push(format!("proxy: {e:#}"));
        }
    }

    /// File descriptors of (backend, proxy, all agents).
    async fn fds(&self) -> (usize, usize, usize) {
        let b = fd_count(self.backend.lock().await.pid());
        let p = fd_count(self.proxy.lock().await.pid());
        let mut a = 0;
        for d in &self.doms {
            a += fd_count(d.lock().await.agent.pid());
        }
        (b, p, a)
    }
}

/// Why a transfer did not complete.
enum Outcome {
    /// Wrong bytes: always a failure.
    Mismatch(anyhow::Error),
    /// Cut short: expected only while a fault is on the path.
    Cut(anyhow::Error),
}

const XK_F1: u32 = 0xffbe;
const XK_F7: u32 = 0xffc4;
const XK_CONTROL_L: u32 = 0xffe3;
const XK_ALT_L: u32 = 0xffe9;

/// ctrl-alt-`fkey`, pressed and released.
fn switch_keys(fkey: u32, m: &mut Vec<u8>) {
    for (down, key) in [
        (true, XK_CONTROL_L),
        (true, XK_ALT_L),
        (true, fkey),
        (false, fkey),
        (false, XK_ALT_L),
        (false, XK_CONTROL_L),
    ] {
        ClientMessage::KeyEvent { down, key }.write(m);
    }
}

fn is_cut(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        BrokenPipe | ConnectionReset | ConnectionAborted | UnexpectedEof | NotConnected
    )
}

/// Sends the transfer id, then `n` pattern bytes (seeded by the id), then closes
/// the sending side.
async fn send<W: AsyncWrite + Unpin>(mut w: W, id: u64, n: u64) -> Result<(), Outcome> {
    let io = |e: std::io::Error| Outcome::Cut(anyhow!("send: {e}"));
    w.write_all(&id.to_be_bytes()).await.map_err(io)?;
    let mut src = Source::new(id);
    let mut buf = vec![0u8; 64 << 10];
    let mut left = n;
    while left > 0 {
        let k = left.min(buf.len() as u64) as usize;
        src.fill(&mut buf[..k]);
        w.write_all(&buf[..k]).await.map_err(io)?;
        left -= k as u64;
    }
    // A half-close: what is in flight still arrives, then the end of stream.
    w.shutdown().await.map_err(io)?;
    Ok(())
}

/// Receives transfer `id`: `Ok(None)` for a stale stream of an earlier transfer
/// (dropped), else checks every byte and the digest.
async fn receive<S: AsyncRead + Unpin>(mut s: S, id: u64, n: u64) -> Result<Option<()>, Outcome> {
    let mut head = [0u8; 8];
    match s.read_exact(&mut head).await {
        Ok(_) => {}
        Err(e) if is_cut(&e) => return Ok(None),
        Err(e) => return Err(Outcome::Cut(anyhow!("read the id: {e}"))),
    }
    if u64::from_be_bytes(head) != id {
        return Ok(None);
    }
    let mut chk = Checker::new(id);
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let k = match s.read(&mut buf).await {
            Ok(k) => k,
            Err(e) if is_cut(&e) => 0,
            Err(e) => return Err(Outcome::Cut(anyhow!("receive: {e}"))),
        };
        if k == 0 {
            break;
        }
        chk.check(&buf[..k])
            .map_err(|e| Outcome::Mismatch(anyhow!("{e}")))?;
        if chk.count() > n {
            return Err(Outcome::Mismatch(anyhow!("more than {n} bytes arrived")));
        }
    }
    let got = chk.count();
    if got < n {
        return Err(Outcome::Cut(anyhow!("{got} of {n} bytes arrived")));
    }
    let sha = chk.sha256();
    if sha != expected_sha256(id, n) {
        return Err(Outcome::Mismatch(anyhow!(
            "sha256 {sha} is not the sender's"
        )));
    }
    Ok(Some(()))
}

/// Routes each delivered "up" stream to its guest by the PROXY v2 header.
async fn dispatch(l: UnixListener, routes: BTreeMap<u16, mpsc::UnboundedSender<UnixStream>>) {
    while let Ok((mut s, _)) = l.accept().await {
        let routes = routes.clone();
        tokio::spawn(async move {
            let o = tokio::time::timeout(PATIENCE, xenvt_ring::proxyv2::read(&mut s)).await;
            if let Ok(Ok(o)) = o {
                if o.service == "up" {
                    if let Some(tx) = routes.get(&o.domid) {
                        let _ = tx.send(s);
                    }
                }
            }
        });
    }
}

/// Prints the run's table (markdown, for docs/reliability.md).
fn print_table(soak: &Soak, seed: u64, n_dom: u16, churn: f64, fd_leak: usize, held: usize) {
    let c = &soak.c;
    let rss = soak
        .peak_rss
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let mib = |k: &str| {
        rss.get(k)
            .map_or("-".into(), |v| format!("{:.1} MiB", *v as f64 / 1024.0))
    };
    let n = |v: &AtomicU64| get(v).to_string();
    let rows: Vec<(&str, String)> = vec![
        ("seed", seed.to_string()),
        (
            "domains (each: desktop, console, 2 viewers, transfer loop)",
            n_dom.to_string(),
        ),
        ("churn seconds", format!("{churn:.0}")),
        ("transfers completed and checked", n(&c.transfers_ok)),
        ("bytes moved and checked (sha256)", n(&c.bytes_checked)),
        ("viewer sessions", n(&c.viewer_sessions)),
        (
            "viewer connects refused or cut (faults)",
            n(&c.viewer_failures),
        ),
        ("view switches (ctrl-alt-F1/F7)", n(&c.view_switches)),
        ("frame updates received", n(&c.frames)),
        ("faults: agent kill -9 + restart", n(&c.agent_kills)),
        ("faults: backend kill -9 + restart", n(&c.backend_kills)),
        ("faults: proxy kill -9 + restart", n(&c.proxy_kills)),
        (
            "desktops redialled by the agents after a proxy restart, slowest (s)",
            format!("{:.1}", get(&c.redial_ms_max) as f64 / 1000.0),
        ),
        ("faults: desktop restarts", n(&c.desktop_restarts)),
        (
            "transfers cut by a fault on their path",
            n(&c.transfers_cut_by_fault),
        ),
        ("**mismatches**", n(&c.mismatches)),
        ("**transfers cut with no fault**", n(&c.unexplained_cuts)),
        ("**transfers hung**", n(&c.hangs)),
        (
            "**leaked fds** (backend, proxy, agents vs. start)",
            fd_leak.to_string(),
        ),
        (
            "**leaked grants/mappings/ports** (domains holding any)",
            held.to_string(),
        ),
        ("peak RSS agent (largest)", mib("agent")),
        ("peak RSS backend", mib("backend")),
        ("peak RSS proxy", mib("proxy")),
    ];
    println!("\n| soak | value |\n|---|---|");
    for (k, v) in &rows {
        println!("| {k} | {v} |");
    }
}

/// Runs the soak; fails on any mismatch, unexplained cut, hang or leak.
pub async fn run(a: SoakArgs) -> anyhow::Result<()> {
    let n_dom = a.domains.unwrap_or(if a.short { 4 } else { 32 });
    let secs = a.secs.unwrap_or(if a.short { 75 } else { 4 * 3600 });
    let fault_every = a.fault_every.unwrap_or(if a.short { 5 } else { 60 }).max(1);
    let seed = a.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    ensure!(n_dom >= 1, "--domains must be at least 1");
    println!("soak: seed {seed} ({n_dom} domains, {secs} s; replay with --seed {seed})");
    let mut rng = Rng::with_seed(seed);
    let exe = std::env::current_exe()?;
    let proxy_exe = sibling(&exe, "xenvt-proxy")?;
    let rig = Rig::new(&exe).await?;
    let logs = rig.path("logs");
    std::fs::create_dir(&logs)?;
    let t_setup = Instant::now();

    // dom0: the proxy, then the backend.
    let mut names = Vec::new();
    let mut infos = Vec::new();
    for k in 0..n_dom {
        let d = rig.host.create(&format!("soak{k}")).await?;
        names.push((d.id, d.name.clone()));
        infos.push(d);
    }
    let dom0 = rig.host.dom0().await?;
    let desktop_sock = rig.path("desktop.sock");
    let data_sock = rig.path("data.sock");
    let opts = ProxyOptions {
        port_base: 0,
        web: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        novnc_dir: None,
    };
    let proxy_cfg = proxy_config(&opts, &desktop_sock, &logs, &infos);
    std::fs::write(rig.path("proxy.toml"), proxy_cfg)?;
    let (proxy, viewers, web) = start_proxy(
        &proxy_exe,
        &dom0,
        &rig.path("proxy.toml"),
        &logs.join("proxy.log"),
        true,
    )
    .await?;
    let data_l = UnixListener::bind(&data_sock)?;
    let backend_toml = format!(
        "{}[services.vnc]\ndeliver = {}\n[services.up]\ndeliver = {}\n[services.down]\nlisten = true\n",
        rig.backend_toml(),
        lit(&desktop_sock.display().to_string()),
        lit(&data_sock.display().to_string()),
    );
    let backend = rig.backend(&backend_toml).await?;

    let mut routes = BTreeMap::new();
    let mut pending = Vec::new();
    for d in infos {
        let (tx, rx) = mpsc::unbounded_channel();
        routes.insert(d.id, tx);
        let down = TcpListener::bind("127.0.0.1:0").await?;
        pending.push((d, rx, down));
    }
    tokio::spawn(dispatch(data_l, routes));

    let soak = Arc::new(Soak {
        rig,
        proxy_exe,
        logs: logs.clone(),
        backend_toml,
        backend: tokio::sync::Mutex::new(backend),
        proxy: tokio::sync::Mutex::new(proxy),
        doms: Vec::new(),
        clocks: (0..n_dom)
            .map(|_| Arc::new(FaultClock::default()))
            .collect(),
        names: names.clone(),
        viewers: Mutex::new(viewers.into_iter().collect()),
        web: Mutex::new(web),
        c: Counters::default(),
        peak_rss: Mutex::new(BTreeMap::new()),
        stop: AtomicBool::new(false),
    });
    // Guests: Xvnc, then the agent (whose hook connects the desktop).
    let mut doms = Vec::new();
    for (info, rx, down) in pending {
        let (xvnc, display) = soak.start_xvnc(&info, None).await?;
        let (vnc_port, data_port) = (free_port()?, free_port()?);
        let toml = Soak::agent_toml(display, vnc_port, data_port, down.local_addr()?.port());
        let (agent, _) = soak.rig.agent(&info, &toml).await?;
        doms.push(tokio::sync::Mutex::new(Dom {
            info,
            display,
            vnc_port,
            data_port,
            agent,
            agent_toml: toml,
            xvnc,
            up_rx: Arc::new(tokio::sync::Mutex::new(rx)),
            down: Arc::new(down),
        }));
    }
    let soak = {
        let mut s = Arc::try_unwrap(soak).map_err(|_| anyhow!("soak still shared"))?;
        s.doms = doms;
        Arc::new(s)
    };
    for (id, name) in &soak.names {
        Soak::wait_path(&soak.down_sock(name), false)
            .await
            .with_context(|| format!("the backend did not attach to domain {id}"))?;
    }
    soak.check_all().await.context("before the churn")?;
    let fds0 = soak.fds().await;
    println!(
        "soak: {n_dom} domains up in {:.1} s; churn for {secs} s, a fault every {fault_every} s",
        t_setup.elapsed().as_secs_f64()
    );

    // The churn.
    let mut tasks = Vec::new();
    for (i, (id, _)) in names.iter().enumerate() {
        tasks.push(tokio::spawn(soak.clone().transfers(
            i,
            rng.fork(),
            a.max_transfer,
        )));
        for _ in 0..2 {
            tasks.push(tokio::spawn(soak.clone().viewer_loop(*id, rng.fork())));
        }
    }
    let t0 = Instant::now();
    let mut turn = 0u64;
    let mut fault_err = None;
    while t0.elapsed() < Duration::from_secs(secs) {
        tokio::time::sleep(Duration::from_millis(range(
            &mut rng,
            fault_every * 500,
            fault_every * 1500,
        )))
        .await;
        if t0.elapsed() >= Duration::from_secs(secs) {
            break;
        }
        let i = range(&mut rng, 0, u64::from(n_dom) - 1) as usize;
        let r = match turn % 4 {
            0 => soak.kill_agent(i).await.context("kill -9 of an agent"),
            1 => soak.restart_desktop(i).await.context("a desktop restart"),
            2 => soak.kill_backend().await.context("kill -9 of the backend"),
            _ => soak.kill_proxy().await.context("kill -9 of the proxy"),
        };
        turn += 1;
        if let Err(e) = r {
            fault_err = Some(e);
            break;
        }
    }
    soak.stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = tokio::time::timeout(TRANSFER_LIMIT + PATIENCE, t).await;
    }
    let churn = t0.elapsed().as_secs_f64();

    // The end: everything back, nothing leaked.
    let mut problems = Vec::new();
    if let Some(e) = fault_err {
        problems.push(format!("{e:#}"));
    }
    if let Err(e) = soak.check_all().await {
        problems.push(format!("after the churn: {e:#}"));
    }
    // Connections that just closed may still be on their way out.
    let settle = Instant::now();
    let mut fds1 = soak.fds().await;
    while (fds1.0 > fds0.0 || fds1.1 > fds0.1 || fds1.2 > fds0.2)
        && settle.elapsed() < Duration::from_secs(10)
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
        fds1 = soak.fds().await;
    }
    let fd_leak = fds1.0.saturating_sub(fds0.0)
        + fds1.1.saturating_sub(fds0.1)
        + fds1.2.saturating_sub(fds0.2);
    soak.note_rss("backend", soak.backend.lock().await.pid());
    soak.note_rss("proxy", soak.proxy.lock().await.pid());
    for d in &soak.doms {
        soak.note_rss("agent", d.lock().await.agent.pid());
    }
    soak.stop_all(&mut problems).await;
    let clean = soak.rig.host.wait_clean(5_000).await;
    let stats = soak.rig.host.stats().await?;
    let held = crate::sim::leaks(&stats);
    if let Err(e) = clean {
        problems.push(format!("the host still holds: {e}"));
    }

    let c = &soak.c;
    print_table(&soak, seed, n_dom, churn, fd_leak, held.len());
    println!();
    let fail_counts = [
        ("mismatches", get(&c.mismatches)),
        ("transfers cut with no fault", get(&c.unexplained_cuts)),
        ("transfers hung", get(&c.hangs)),
        ("leaked fds", fd_leak as u64),
        ("domains holding grants/mappings", held.len() as u64),
    ];
    for (what, n) in fail_counts {
        if n > 0 {
            problems.push(format!("{what}: {n}"));
        }
    }
    if get(&c.transfers_ok) == 0 {
        problems.push("no transfer completed".into());
    }
    if problems.is_empty() {
        println!("soak: PASS (seed {seed})");
        Ok(())
    } else {
        println!("soak: logs in {}", logs.display());
        // Keep the logs for a look.
        if let Ok(s) = Arc::try_unwrap(soak) {
            let _ = s.rig.tmp.keep();
        }
        bail!("soak FAILED (seed {seed}): {}", problems.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generator_replays_and_stays_in_range() {
        let (mut a, mut b) = (Rng::with_seed(42), Rng::with_seed(42));
        for _ in 0..1000 {
            let (x, y) = (range(&mut a, 3, 9), range(&mut b, 3, 9));
            assert_eq!(x, y);
            assert!((3..=9).contains(&x));
        }
        assert_ne!(Rng::with_seed(1).u64(..), Rng::with_seed(2).u64(..));
        assert_eq!(range(&mut a, 5, 5), 5);
        assert_eq!(range(&mut a, 5, 4), 5);
    }

    #[test]
    fn a_fault_window_covers_what_overlaps_it() {
        let c = FaultClock::default();
        let before = c.mark();
        assert!(!c.touched(before));
        c.begin();
        assert!(c.touched(before));
        let during = c.mark();
        c.end();
        assert!(c.touched(during));
        let after = c.mark();
        assert!(!c.touched(after));
    }

    #[tokio::test]
    async fn transfers_are_checked_and_stale_streams_skipped() {
        let (a, b) = UnixStream::pair().unwrap();
        let (s, r) = tokio::join!(send(a, 7, 100_000), receive(b, 7, 100_000));
        assert!(s.is_ok());
        assert!(matches!(r, Ok(Some(()))));
        let (a, b) = UnixStream::pair().unwrap();
        let (_, r) = tokio::join!(send(a, 6, 1000), receive(b, 7, 1000));
        assert!(
            matches!(r, Ok(None)),
            "another transfer's stream is skipped"
        );
        let (a, b) = UnixStream::pair().unwrap();
        let (_, r) = tokio::join!(send(a, 7, 1000), receive(b, 7, 5000));
        assert!(matches!(r, Err(Outcome::Cut(_))), "short is a cut");
        let (a, b) = UnixStream::pair().unwrap();
        let (_, r) = tokio::join!(send(a, 7, 5000), receive(b, 7, 1000));
        assert!(matches!(r, Err(Outcome::Mismatch(_))), "long is a mismatch");
        // A wrong byte in the middle.
        let (mut a, b) = UnixStream::pair().unwrap();
        let w = async move {
            let mut src = Source::new(7);
            let mut buf = vec![0u8; 3000];
            src.fill(&mut buf);
            buf[1234] ^= 1;
            a.write_all(&7u64.to_be_bytes()).await.unwrap();
            a.write_all(&buf).await.unwrap();
        };
        let (_, r) = tokio::join!(w, receive(b, 7, 3000));
        assert!(matches!(r, Err(Outcome::Mismatch(_))));
    }

    #[test]
    fn ctrl_alt_f_is_six_key_events() {
        let mut m = Vec::new();
        switch_keys(XK_F7, &mut m);
        assert_eq!(m.len(), 6 * 8);
        assert_eq!(&m[16..24], &[4, 1, 0, 0, 0, 0, 0xff, 0xc4]);
        assert!(shows("vm1 \u{2014} desktop", "desktop"));
        assert!(shows("vm1 \u{2014} console (x)", "console"));
        assert!(!shows("vm1 \u{2014} console", "desktop"));
    }
}
