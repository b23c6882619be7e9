//! `xenvt demo`: the whole chain on a private simulated host. Guests run the
//! agent, a real Xvnc desktop and the console the host gives them; dom0 runs the
//! backend and the proxy. Viewers see each guest's console, then its desktop when
//! it connects through agent -> channel -> backend -> proxy.
//!
//! The pieces ([`Chain`], [`Desktop`], [`Proc`]) are public so the chain test can
//! drive the same setup with its own checks; the soak starts its processes, the
//! proxy and Xvnc with the same helpers ([`Proc::spawn_tied`], [`start_proxy`],
//! [`start_xvnc`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context};
use clap::Args;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use crate::bench::tunnel::rig::sibling;
use crate::harness::{env_for, SimHost};
use crate::sim::control::{DomainInfo, DomainRef, Request};

/// Upper bound for things that should happen at once; only a failure waits this long.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Arguments of `xenvt demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Run headless: connect a real viewer (vncdotool), switch views, save a
    /// screenshot of each view, stop and exit.
    #[arg(long)]
    pub check: bool,
    /// Where `--check` puts its screenshots.
    #[arg(long, default_value = "xenvt-demo-screenshots")]
    pub out: PathBuf,
    /// Viewer ports are this plus the domain id; 0 picks free ports
    /// (the default with `--check`).
    #[arg(long)]
    pub port_base: Option<u16>,
    /// The noVNC WebSocket and status page; port 0 picks a free one
    /// (the default with `--check`).
    #[arg(long)]
    pub web: Option<SocketAddr>,
    /// Seconds between the consoles and the desktops, so the switch is visible.
    #[arg(long, default_value_t = 5)]
    pub desktop_delay: u64,
    /// noVNC's files (npm `@novnc/novnc`); default: `web-peers` in the build's
    /// target directory, else `/usr/share/xenvt/novnc`.
    #[arg(long)]
    pub novnc_dir: Option<PathBuf>,
    /// The vncdotool command for `--check`; default: `$XENVT_VNCDO`, then
    /// `vncdo-venv` in the build's target directory, then `vncdo` on PATH.
    #[arg(long)]
    pub vncdo: Option<PathBuf>,
    /// Guest domains to create.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=8))]
    pub guests: u16,
}

/// A child process whose output goes to a log file; its lines are also kept
/// for [`Proc::wait_for`] until [`Proc::release`] (after which memory stays
/// bounded however long it runs).
pub struct Proc {
    child: Child,
    pid: u32,
    label: String,
    lines: Option<mpsc::UnboundedReceiver<String>>,
    /// In a process group of its own, and sent SIGTERM when dropped.
    own_group: bool,
}

impl Proc {
    /// Starts `cmd` in a process group of its own (so a terminal's ctrl-c
    /// reaches only the demo, which stops everything in order), with its stdout
    /// and stderr appended to `log`.
    pub fn spawn(cmd: Command, label: &str, log: &Path) -> anyhow::Result<Proc> {
        Proc::start(cmd, label, log, true)
    }

    /// As [`Proc::spawn`], but in our process group and killed (-9) when
    /// dropped: for runs that kill processes on purpose, such as the soak.
    pub fn spawn_tied(cmd: Command, label: &str, log: &Path) -> anyhow::Result<Proc> {
        Proc::start(cmd, label, log, false)
    }

    fn start(mut cmd: Command, label: &str, log: &Path, own_group: bool) -> anyhow::Result<Proc> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if own_group {
            cmd.process_group(0);
        } else {
            cmd.kill_on_drop(true);
        }
        let mut child = cmd.spawn().with_context(|| format!("start {label}"))?;
        let pid = child
            .id()
            .ok_or_else(|| anyhow!("{label} exited at once"))?;
        let (tx, rx) = mpsc::unbounded_channel();
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("open {}", log.display()))?;
        let file = std::sync::Arc::new(std::sync::Mutex::new(file));
        let echo = std::env::var_os("XENVT_TEST_ECHO").is_some();
        let out = child.stdout.take().map(|s| Box::new(s) as Box<_>);
        let err = child.stderr.take().map(|s| Box::new(s) as Box<_>);
        for s in [out, err].into_iter().flatten() {
            let s: Box<dyn tokio::io::AsyncRead + Unpin + Send> = s;
            let (tx, file, label) = (tx.clone(), file.clone(), label.to_owned());
            tokio::spawn(async move {
                let mut lines = BufReader::new(s).lines();
                while let Ok(Some(l)) = lines.next_line().await {
                    if echo {
                        eprintln!("[{label}] {l}");
                    }
                    {
                        use std::io::Write;
                        let mut f = file.lock().unwrap_or_else(|p| p.into_inner());
                        let _ = writeln!(f, "{l}");
                    }
                    // Nobody may be listening any more; the log file has it.
                    let _ = tx.send(l);
                }
            });
        }
        Ok(Proc {
            child,
            pid,
            label: label.to_owned(),
            lines: Some(rx),
            own_group,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Waits (at most [`PATIENCE`]) for an output line containing `needle` and
    /// returns it; earlier lines are passed over.
    pub async fn wait_for(&mut self, needle: &str) -> anyhow::Result<String> {
        let mut lines = self.lines_until(needle).await?;
        lines.pop().context("no line")
    }

    /// As [`Proc::wait_for`], but returns every line read, the match last.
    pub async fn lines_until(&mut self, needle: &str) -> anyhow::Result<Vec<String>> {
        let label = &self.label;
        let rx = self
            .lines
            .as_mut()
            .ok_or_else(|| anyhow!("{label}: lines already released"))?;
        let fut = async {
            let mut seen = Vec::new();
            while let Some(l) = rx.recv().await {
                let hit = l.contains(needle);
                seen.push(l);
                if hit {
                    return Ok(seen);
                }
            }
            bail!("{label} ended before saying {needle:?}")
        };
        tokio::time::timeout(PATIENCE, fut)
            .await
            .map_err(|_| anyhow!("{label} did not say {needle:?} in time"))?
    }

    /// Stops offering lines (they still go to the log file).
    pub fn release(&mut self) {
        self.lines = None;
    }

    /// SIGKILL, and reap.
    pub async fn kill9(&mut self) -> anyhow::Result<()> {
        self.child.start_kill()?;
        self.child.wait().await?;
        Ok(())
    }

    /// SIGTERM, then waits (at most [`PATIENCE`], then SIGKILL) for the exit.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        self.signal_term();
        match tokio::time::timeout(PATIENCE, self.child.wait()).await {
            Ok(r) => {
                r?;
                Ok(())
            }
            Err(_) => {
                self.kill9().await?;
                bail!("{} ignored SIGTERM and was killed", self.label)
            }
        }
    }

    /// SIGTERM, unless it was reaped already (its pid may be another's now).
    fn signal_term(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    }
}

impl Drop for Proc {
    /// On an early return a process of its own group still gets SIGTERM rather
    /// than SIGKILL, so Xvnc removes its lock files and the daemons their
    /// xenstore nodes and sockets.
    fn drop(&mut self) {
        if self.own_group {
            self.signal_term();
        }
    }
}

/// How a guest's desktop is started.
#[derive(Debug, Clone)]
pub struct DesktopSpec {
    /// Xvnc's `-geometry`.
    pub geometry: String,
    /// The root window's colour (`xsetroot -solid`).
    pub colour: String,
    /// Start an xterm on it.
    pub xterm: bool,
    /// Also serve RFB on this unix socket (to look at Xvnc directly).
    pub unix_socket: Option<PathBuf>,
    /// Give the agent a hook that makes Xvnc connect whenever a backend (re)attaches;
    /// without it the caller runs [`Desktop::connect`].
    pub hook: bool,
}

/// A guest's desktop: Xvnc, its X clients and the agent, all inside the domain.
pub struct Desktop {
    /// The X display number.
    pub display: u32,
    /// The agent's listener for service `vnc`.
    pub agent_addr: SocketAddr,
    env: Vec<(std::ffi::OsString, std::ffi::OsString)>,
    xvnc: Proc,
    agent: Proc,
    clients: Vec<Proc>,
}

impl Desktop {
    /// The `-display` argument.
    pub fn x_display(&self) -> String {
        format!(":{}", self.display)
    }

    /// Runs an X client to completion inside the guest.
    pub async fn run(&self, prog: &str, args: &[&str]) -> anyhow::Result<()> {
        run_x_client(&self.env, self.display, prog, args, Stdio::inherit()).await
    }

    /// Makes Xvnc reverse-connect to the agent (`vncconfig -connect`).
    pub async fn connect(&self) -> anyhow::Result<()> {
        self.run("vncconfig", &["-connect", &self.agent_addr.to_string()])
            .await
    }

    /// Stops the X clients, Xvnc (SIGTERM, so it removes its lock files) and the agent.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        for c in &mut self.clients {
            c.stop().await?;
        }
        self.agent.stop().await?;
        self.xvnc.stop().await
    }
}

/// The running chain: a simulated host, guests, the backend and the proxy.
pub struct Chain {
    /// The host.
    pub host: SimHost,
    /// Configs, logs, sockets.
    pub tmp: tempfile::TempDir,
    /// The guest domains, in creation order.
    pub guests: Vec<DomainInfo>,
    /// Viewer ports by domain id.
    pub viewers: Vec<(u16, SocketAddr)>,
    /// The web listener.
    pub web: Option<SocketAddr>,
    agent_exe: PathBuf,
    backend: Proc,
    proxy: Proc,
    desktops: Vec<Desktop>,
}

/// What the proxy should bind.
#[derive(Debug, Clone)]
pub struct ProxyOptions {
    /// Viewer ports are this plus the domain id; 0 picks free ports.
    pub port_base: u16,
    /// The web listener, if any.
    pub web: Option<SocketAddr>,
    /// noVNC's files.
    pub novnc_dir: Option<PathBuf>,
}

/// A TOML string literal.
pub fn lit(s: &str) -> String {
    format!("{s:?}")
}

/// Runs the X client `prog` to completion (at most [`PATIENCE`]) on `display`
/// inside the guest that `env` is for, its stderr to `stderr`.
pub async fn run_x_client(
    env: &[(std::ffi::OsString, std::ffi::OsString)],
    display: u32,
    prog: &str,
    args: &[&str],
    stderr: Stdio,
) -> anyhow::Result<()> {
    let st = tokio::time::timeout(
        PATIENCE,
        Command::new(prog)
            .envs(env.iter().cloned())
            .args(["-display", &format!(":{display}")])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .kill_on_drop(true)
            .status(),
    )
    .await
    .map_err(|_| anyhow!("{prog} did not finish"))?
    .with_context(|| format!("run {prog}"))?;
    ensure!(st.success(), "{prog} {args:?} failed: {st}");
    Ok(())
}

/// The proxy's config for `guests` (consoles from xenstore) that takes
/// desktops from the backend on `desktop_sock` and writes console logs to
/// `log_dir`.
pub fn proxy_config(
    opts: &ProxyOptions,
    desktop_sock: &Path,
    log_dir: &Path,
    guests: &[DomainInfo],
) -> String {
    let mut cfg = format!(
        "[viewer]\nlisten = \"127.0.0.1\"\nsecurity = \"none\"\nport_base = {}\n\
         [upstream]\nbackend_socket = {}\n\
         [console]\nlog_dir = {}\n\
         [xenstore]\nenabled = true\n",
        opts.port_base,
        lit(&desktop_sock.display().to_string()),
        lit(&log_dir.display().to_string()),
    );
    for g in guests {
        cfg += &format!(
            "[[domain]]\ndomid = {}\nname = {}\nconsole = \"xenstore\"\n",
            g.id,
            lit(&g.name)
        );
    }
    if let Some(w) = opts.web {
        cfg += &format!("[web]\nlisten = {}\n", lit(&w.to_string()));
        if let Some(d) = &opts.novnc_dir {
            cfg += &format!("novnc_dir = {}\n", lit(&d.display().to_string()));
        }
    }
    cfg
}

/// A running proxy and what its ready lines said: the viewer address of each
/// domain and the web listener.
pub type StartedProxy = (Proc, Vec<(u16, SocketAddr)>, Option<SocketAddr>);

/// Starts the proxy `exe` in `dom0` with config `cfg`, its output to `log`,
/// and waits until it is ready. `tied`: see [`Proc::spawn_tied`].
pub async fn start_proxy(
    exe: &Path,
    dom0: &DomainInfo,
    cfg: &Path,
    log: &Path,
    tied: bool,
) -> anyhow::Result<StartedProxy> {
    let mut c = Command::new(exe);
    c.envs(env_for(dom0))
        .env("XENVT_LOG", "info")
        .arg("--config")
        .arg(cfg);
    let spawn = if tied { Proc::spawn_tied } else { Proc::spawn };
    let mut proxy = spawn(c, "proxy", log)?;
    let ready = proxy.lines_until("xenvt-proxy: ready").await?;
    proxy.release();
    let (mut viewers, mut web) = (Vec::new(), None);
    for l in ready {
        let Some(rest) = l.strip_prefix("xenvt-proxy: ") else {
            continue;
        };
        let kv = |k: &str| {
            rest.split(' ')
                .find_map(|w| w.strip_prefix(&format!("{k}=")).map(str::to_owned))
        };
        if rest.starts_with("viewers ") {
            if let (Some(d), Some(a)) = (kv("domain"), kv("addr")) {
                viewers.push((d.parse()?, a.parse()?));
            }
        } else if rest.starts_with("web ") {
            web = kv("addr").map(|a| a.parse()).transpose()?;
        }
    }
    Ok((proxy, viewers, web))
}

/// How to start a guest's Xvnc.
#[derive(Debug, Clone, Copy)]
pub struct XvncSpec<'a> {
    /// The display number; `None`: the first free one.
    pub display: Option<u32>,
    /// `-geometry`.
    pub geometry: &'a str,
    /// Also serve RFB on this unix socket.
    pub unix_socket: Option<&'a Path>,
    /// See [`Proc::spawn_tied`].
    pub tied: bool,
}

/// Starts Xvnc in `dom` (its log in `logs`) and waits until it accepts
/// clients; returns it and its display number.
pub async fn start_xvnc(
    dom: &DomainInfo,
    spec: XvncSpec<'_>,
    logs: &Path,
) -> anyhow::Result<(Proc, u32)> {
    let mut c = Command::new("Xvnc");
    c.envs(env_for(dom));
    if let Some(d) = spec.display {
        c.arg(format!(":{d}"));
    }
    c.args([
        "-displayfd",
        "1",
        "-rfbport",
        "-1",
        "-SecurityTypes",
        "None",
    ])
    .args(["-geometry", spec.geometry, "-depth", "24"])
    .args(["-nolisten", "tcp", "-desktop", &dom.name]);
    if let Some(s) = spec.unix_socket {
        c.arg("-rfbunixpath").arg(s);
    }
    let spawn = if spec.tied {
        Proc::spawn_tied
    } else {
        Proc::spawn
    };
    let mut x = spawn(
        c,
        &format!("Xvnc-{}", dom.name),
        &logs.join(format!("{}-xvnc.log", dom.name)),
    )?;
    let rx = x.lines.as_mut().context("no lines")?;
    // -displayfd: Xvnc writes its display number once it accepts clients.
    let n = tokio::time::timeout(PATIENCE, async {
        while let Some(l) = rx.recv().await {
            if let Ok(n) = l.trim().parse::<u32>() {
                return Some(n);
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
    .ok_or_else(|| {
        anyhow!(
            "Xvnc for {} reported no display (see {})",
            dom.name,
            logs.display()
        )
    })?;
    x.release();
    Ok((x, n))
}

impl Chain {
    /// Starts a host (with the `xenvt` binary `exe`; the daemons sit beside it),
    /// creates `names`, starts the backend and the proxy in dom0.
    pub async fn start(exe: &Path, names: &[&str], opts: &ProxyOptions) -> anyhow::Result<Chain> {
        let agent_exe = sibling(exe, "xenvt-agent")?;
        let backend_exe = sibling(exe, "xenvt-backend")?;
        let proxy_exe = sibling(exe, "xenvt-proxy")?;
        let host = SimHost::start_with(exe, &[], true).await?;
        let tmp = tempfile::Builder::new().prefix("xenvt-demo-").tempdir()?;
        std::fs::create_dir(tmp.path().join("logs"))?;
        let mut guests = Vec::new();
        for n in names {
            guests.push(host.create(n).await?);
        }
        let dom0 = host.dom0().await?;
        let desktop_sock = tmp.path().join("desktop.sock");

        let cfg = tmp.path().join("proxy.toml");
        std::fs::write(
            &cfg,
            proxy_config(opts, &desktop_sock, &tmp.path().join("logs"), &guests),
        )?;
        let (proxy, viewers, web) = start_proxy(
            &proxy_exe,
            &dom0,
            &cfg,
            &tmp.path().join("logs/proxy.log"),
            false,
        )
        .await?;

        let cfg = tmp.path().join("backend.toml");
        std::fs::write(
            &cfg,
            format!(
                "run_dir = {}\n[services.vnc]\ndeliver = {}\n",
                lit(&tmp.path().join("run").display().to_string()),
                lit(&desktop_sock.display().to_string())
            ),
        )?;
        let mut c = Command::new(&backend_exe);
        c.envs(env_for(&dom0))
            .args(["--log", "info", "--config"])
            .arg(&cfg);
        let mut backend = Proc::spawn(c, "backend", &tmp.path().join("logs/backend.log"))?;
        backend.wait_for("watching for agents").await?;

        Ok(Chain {
            host,
            tmp,
            guests,
            viewers,
            web,
            agent_exe,
            backend,
            proxy,
            desktops: Vec::new(),
        })
    }

    /// The logs directory.
    pub fn logs(&self) -> PathBuf {
        self.tmp.path().join("logs")
    }

    /// The viewer address of domain `id`.
    pub fn viewer(&self, id: u16) -> anyhow::Result<SocketAddr> {
        self.viewers
            .iter()
            .find(|v| v.0 == id)
            .map(|v| v.1)
            .ok_or_else(|| anyhow!("the proxy serves no domain {id}"))
    }

    /// Starts a desktop in guest `g` (an index in [`Chain::guests`]): Xvnc, the
    /// root colour, the agent (listening on a free loopback port as service
    /// `vnc`) and, if asked, an xterm. Returns its index once the backend has
    /// attached to the agent.
    pub async fn start_desktop(&mut self, g: usize, spec: &DesktopSpec) -> anyhow::Result<usize> {
        let dom = self.guests.get(g).context("no such guest")?.clone();
        let env = env_for(&dom);
        let logs = self.logs();
        let xspec = XvncSpec {
            display: None,
            geometry: &spec.geometry,
            unix_socket: spec.unix_socket.as_deref(),
            tied: false,
        };
        let (xvnc, display) = start_xvnc(&dom, xspec, &logs).await?;

        let port = free_port()?;
        let agent_addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut toml = format!(
            "[[listen]]\naddress = {}\nservice = \"vnc\"\n",
            lit(&agent_addr.to_string())
        );
        if spec.hook {
            toml += &format!(
                "[hook]\ncommand = [\"vncconfig\", \"-display\", {}, \"-connect\", {}]\ntimeout_secs = 30\n",
                lit(&format!(":{display}")),
                lit(&agent_addr.to_string())
            );
        }
        let cfg = self.tmp.path().join(format!("agent-{}.toml", dom.name));
        std::fs::write(&cfg, toml)?;

        let mut desk = Desktop {
            display,
            agent_addr,
            env: env.clone(),
            xvnc,
            agent: {
                let mut c = Command::new(&self.agent_exe);
                c.envs(env.iter().cloned())
                    .args(["--log", "info", "--config"])
                    .arg(&cfg);
                Proc::spawn(
                    c,
                    &format!("agent-{}", dom.name),
                    &logs.join(format!("{}-agent.log", dom.name)),
                )?
            },
            clients: Vec::new(),
        };
        desk.run("xsetroot", &["-solid", &spec.colour]).await?;
        if spec.xterm {
            let mut c = Command::new("xterm");
            c.envs(env.iter().cloned())
                .args(["-display", &desk.x_display(), "-geometry", "80x24+40+40"])
                .args(["-title", &format!("{} desktop", dom.name)]);
            desk.clients.push(Proc::spawn(
                c,
                "xterm",
                &logs.join(format!("{}-xterm.log", dom.name)),
            )?);
        }
        desk.agent.wait_for("channel published").await?;
        // The agent closes connections until a backend attaches (its hook runs
        // then), so a `Desktop::connect` before that would be lost.
        let attached = if spec.hook {
            "hook"
        } else {
            "backend connected"
        };
        desk.agent.wait_for(attached).await?;
        self.desktops.push(desk);
        Ok(self.desktops.len() - 1)
    }

    /// A desktop started by [`Chain::start_desktop`].
    pub fn desktop(&self, i: usize) -> anyhow::Result<&Desktop> {
        self.desktops.get(i).context("no such desktop")
    }

    /// What each domain shows now, from the proxy's `/domains.json`: (id, view).
    pub async fn views(&self) -> anyhow::Result<Vec<(u16, String)>> {
        views(self.web.context("the proxy has no web listener")?).await
    }

    /// Waits (at most [`PATIENCE`]) until domain `id` shows `view`. The proxy has no
    /// event for this, so its status is polled.
    pub async fn wait_view(&self, id: u16, view: &str) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let now = self.views().await?;
            if now.iter().any(|(d, v)| *d == id && shows(v, view)) {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("domain {id} did not show its {view} (shows {now:?})");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops everything in order (desktops and agents, backend, proxy), checks
    /// that the host holds nothing, stops it and removes the temporary directory.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let mut first_err = None;
        for d in self.desktops.drain(..) {
            if let Err(e) = d.stop().await {
                first_err.get_or_insert(e);
            }
        }
        for p in [&mut self.backend, &mut self.proxy] {
            if let Err(e) = p.stop().await {
                first_err.get_or_insert(e);
            }
        }
        if let Err(e) = self.host.wait_clean(5_000).await {
            first_err.get_or_insert(anyhow!("after the daemons stopped: {e}"));
        }
        if let Ok(mut c) = self.host.client().await {
            for g in &self.guests {
                let _ = c
                    .call(&Request::Destroy {
                        domain: DomainRef::Id(g.id),
                        keep_processes: false,
                    })
                    .await;
            }
        }
        if let Err(e) = self.host.stop().await {
            first_err.get_or_insert(e.into());
        }
        self.tmp.close()?;
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// What each domain shows now, from the proxy's `/domains.json` on `web`:
/// (id, view).
pub async fn views(web: SocketAddr) -> anyhow::Result<Vec<(u16, String)>> {
    let body = http_get(web, "/domains.json").await?;
    let v: serde_json::Value = serde_json::from_str(&body).context("domains.json")?;
    let list = v.as_array().context("domains.json is not a list")?;
    Ok(list
        .iter()
        .filter_map(|d| {
            Some((
                u16::try_from(d.get("domid")?.as_u64()?).ok()?,
                d.get("view")?.as_str()?.to_owned(),
            ))
        })
        .collect())
}

/// The status names a view `NAME \u{2014} console` or `NAME \u{2014} desktop (...)`.
pub fn shows(status: &str, view: &str) -> bool {
    status
        .rsplit_once(" \u{2014} ")
        .is_some_and(|(_, v)| v == view || v.starts_with(&format!("{view} (")))
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A small HTTP/1.0 GET; returns the body of a 200 answer.
pub async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await?;
        let mut buf = Vec::new();
        s.take(1 << 20).read_to_end(&mut buf).await?;
        let text = String::from_utf8_lossy(&buf);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| anyhow!("no HTTP header"))?;
        ensure!(
            head.starts_with("HTTP/1.") && head.contains(" 200 "),
            "GET {path}: {head}"
        );
        Ok(body.to_owned())
    };
    tokio::time::timeout(PATIENCE, fut)
        .await
        .map_err(|_| anyhow!("GET {path} timed out"))?
}

/// The target directory of the build `exe` belongs to (`target/debug/xenvt` ->
/// `target`).
fn target_dir(exe: &Path) -> Option<PathBuf> {
    exe.parent()?.parent().map(Path::to_path_buf)
}

/// Where noVNC's files are, if anywhere.
pub fn find_novnc(exe: &Path) -> Option<PathBuf> {
    let mut c: Vec<PathBuf> = Vec::new();
    if let Some(t) = target_dir(exe) {
        c.push(t.join("web-peers/node_modules/@novnc/novnc"));
    }
    c.push("/usr/share/xenvt/novnc".into());
    c.into_iter().find(|p| p.join("core").is_dir())
}

/// Where vncdotool is, if anywhere.
pub fn find_vncdo(exe: &Path) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("XENVT_VNCDO") {
        return Some(p.into());
    }
    if let Some(t) = target_dir(exe) {
        let p = t.join("vncdo-venv/bin/vncdo");
        if p.is_file() {
            return Some(p);
        }
    }
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("vncdo"))
            .find(|p| p.is_file())
    })
}

/// Runs vncdotool against `addr` (without cursor, as a viewer sees the screen).
pub async fn vncdo(vncdo: &Path, addr: SocketAddr, args: &[&str]) -> anyhow::Result<()> {
    let server = format!("{}::{}", addr.ip(), addr.port());
    let out = tokio::time::timeout(
        PATIENCE,
        Command::new(vncdo)
            .args(["--nocursor", "-t", "25", "-s", &server])
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| anyhow!("vncdo {args:?} did not finish"))?
    .with_context(|| format!("run {}", vncdo.display()))?;
    ensure!(
        out.status.success(),
        "vncdo {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
            .lines()
            .last()
            .unwrap_or("")
    );
    Ok(())
}

/// The width and height of a PNG file.
pub fn png_size(path: &Path) -> anyhow::Result<(u32, u32)> {
    let mut head = [0u8; 24];
    std::io::Read::read_exact(&mut std::fs::File::open(path)?, &mut head)?;
    ensure!(
        &head[..8] == b"\x89PNG\r\n\x1a\n" && &head[12..16] == b"IHDR",
        "{} is not a PNG",
        path.display()
    );
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    Ok((be(&head[16..20]), be(&head[20..24])))
}

/// The console view's size (80x25 cells of 8x16).
pub const CONSOLE_SIZE: (u32, u32) = (640, 400);
/// The demo's desktops.
const GEOMETRY: (u32, u32) = (1024, 768);
const COLOURS: [&str; 4] = ["#3366cc", "#2e8b57", "#8b3a62", "#b8860b"];

/// Runs `xenvt demo`.
pub async fn run(a: DemoArgs) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let opts =
        ProxyOptions {
            port_base: a.port_base.unwrap_or(if a.check { 0 } else { 5900 }),
            web: Some(a.web.unwrap_or_else(|| {
                SocketAddr::from(([127, 0, 0, 1], if a.check { 0 } else { 6080 }))
            })),
            novnc_dir: a.novnc_dir.clone().or_else(|| find_novnc(&exe)),
        };
    let vncdo_exe = a.vncdo.clone().or_else(|| find_vncdo(&exe));
    ensure!(
        !a.check || vncdo_exe.is_some(),
        "vncdotool not found: pass --vncdo or set XENVT_VNCDO"
    );
    for t in ["Xvnc", "xsetroot", "vncconfig", "xterm"] {
        ensure!(
            on_path(t),
            "{t} is not installed (TigerVNC's Xvnc, x11-xserver-utils, xterm)"
        );
    }

    say("starting a private simulated Xen host");
    let names: Vec<String> = (1..=a.guests).map(|i| format!("vm{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut chain = Chain::start(&exe, &refs, &opts).await?;
    say(&format!(
        "host in {}, guests {} with a shell on their consoles",
        chain.host.dir().display(),
        names.join(", ")
    ));
    say("dom0: xenvt-backend and xenvt-proxy running");
    say(&format!("logs in {}", chain.logs().display()));

    let result = if a.check {
        check(&mut chain, &a, vncdo_exe.as_deref().context("no vncdo")?).await
    } else {
        interactive(&mut chain, &a, &opts).await
    };
    if let Err(e) = &result {
        eprintln!("xenvt demo: {e:#}; logs were in {}", chain.logs().display());
    }
    say("stopping");
    let stopped = chain.stop().await;
    result?;
    stopped?;
    say("stopped: no process, socket or temporary directory left");
    Ok(())
}

fn say(m: &str) {
    println!("demo: {m}");
}

fn on_path(name: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
        .unwrap_or(false)
}

fn spec_for(i: usize) -> DesktopSpec {
    DesktopSpec {
        geometry: format!("{}x{}", GEOMETRY.0, GEOMETRY.1),
        colour: COLOURS[i % COLOURS.len()].into(),
        xterm: true,
        unix_socket: None,
        hook: true,
    }
}

async fn start_desktops(chain: &mut Chain) -> anyhow::Result<()> {
    for i in 0..chain.guests.len() {
        let name = chain.guests[i].name.clone();
        let d = chain.start_desktop(i, &spec_for(i)).await?;
        let d = chain.desktop(d)?;
        say(&format!(
            "{name}: Xvnc on :{} with an xterm, agent on {} (its hook runs vncconfig -connect)",
            d.display, d.agent_addr
        ));
    }
    Ok(())
}

async fn interactive(chain: &mut Chain, a: &DemoArgs, opts: &ProxyOptions) -> anyhow::Result<()> {
    println!();
    println!("Viewers:");
    for g in &chain.guests {
        let addr = chain.viewer(g.id)?;
        println!("  {:<6} vncviewer {addr}", g.name);
        if let Some(w) = chain.web {
            if opts.novnc_dir.is_some() {
                println!("         http://{w}/view.html?domain={}", g.name);
            }
        }
    }
    if let Some(w) = chain.web {
        println!("  status http://{w}/");
        if opts.novnc_dir.is_none() {
            println!("  (noVNC not found: pass --novnc-dir for the browser viewer)");
        }
    }
    let logs = chain.logs();
    if let Some(dir) = logs.parent() {
        // The daemons' control sockets sit where their configs put them (beside the
        // desktop socket and in the backend's run_dir).
        println!(
            "Status: xenvt status --backend {} --proxy {}",
            dir.join("run/backend.ctl").display(),
            dir.join("proxy.ctl").display()
        );
    }
    println!("Keys: ctrl-alt-F1 console, ctrl-alt-F7 desktop (the web page has buttons).");
    println!("Stop: ctrl-c.");
    println!();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    say(&format!(
        "the desktops start in {} s; viewers switch to them by themselves",
        a.desktop_delay
    ));
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_secs(a.desktop_delay)) => {}
        _ = tokio::signal::ctrl_c() => return Ok(()),
        _ = term.recv() => return Ok(()),
    }
    start_desktops(chain).await?;
    say("running; ctrl-c stops everything");
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    Ok(())
}

async fn check(chain: &mut Chain, a: &DemoArgs, vncdo_exe: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(&a.out).with_context(|| format!("create {}", a.out.display()))?;
    let out = a.out.canonicalize()?;
    let guests = chain.guests.clone();
    let shot = |name: &str, what: &str| out.join(format!("{name}-{what}.png"));
    let expect = |p: &Path, size: (u32, u32)| -> anyhow::Result<()> {
        let got = png_size(p)?;
        ensure!(got == size, "{}: {got:?}, expected {size:?}", p.display());
        Ok(())
    };

    for g in &guests {
        chain.wait_view(g.id, "console").await?;
        let p = shot(&g.name, "1-console");
        vncdo(vncdo_exe, chain.viewer(g.id)?, &["capture", path_str(&p)?]).await?;
        expect(&p, CONSOLE_SIZE)?;
        say(&format!("{}: console captured", g.name));
    }
    start_desktops(chain).await?;
    for g in &guests {
        chain.wait_view(g.id, "desktop").await?;
        say(&format!("{}: switched to its desktop by itself", g.name));
    }
    for g in &guests {
        let addr = chain.viewer(g.id)?;
        let p = shot(&g.name, "2-desktop");
        vncdo(vncdo_exe, addr, &["capture", path_str(&p)?]).await?;
        expect(&p, GEOMETRY)?;

        vncdo(vncdo_exe, addr, &["key", "ctrl-alt-f1"]).await?;
        chain.wait_view(g.id, "console").await?;
        let p = shot(&g.name, "3-console-f1");
        vncdo(vncdo_exe, addr, &["capture", path_str(&p)?]).await?;
        expect(&p, CONSOLE_SIZE)?;

        vncdo(vncdo_exe, addr, &["key", "ctrl-alt-f7"]).await?;
        chain.wait_view(g.id, "desktop").await?;
        let p = shot(&g.name, "4-desktop-f7");
        vncdo(vncdo_exe, addr, &["capture", path_str(&p)?]).await?;
        expect(&p, GEOMETRY)?;
        say(&format!(
            "{}: ctrl-alt-F1 console, ctrl-alt-F7 desktop",
            g.name
        ));
    }
    println!("screenshots: {}", out.display());
    Ok(())
}

fn path_str(p: &Path) -> anyhow::Result<&str> {
    p.to_str().context("a screenshot path that is not UTF-8")
}
