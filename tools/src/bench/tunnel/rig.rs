//! A simulated host with the real `xenvt-agent` and `xenvt-backend` binaries
//! running in its domains, for the tunnel tests and the tunnel benchmark.
//!
//! The daemons are found beside the `xenvt` binary (cargo puts every binary of
//! the workspace in the same directory); build them first, e.g. with
//! `cargo build -p xenvt-agent -p xenvt-backend`. Their log lines are the
//! events the callers wait on.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use crate::harness::{env_for, SimHost};
use crate::sim::control::DomainInfo;

/// Upper bound for things that should happen at once; only a failure waits this long.
pub const PROMPT: Duration = Duration::from_secs(30);

/// The path of a workspace binary that sits beside `exe`.
pub fn sibling(exe: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let p = exe.with_file_name(name);
    if !p.exists() {
        bail!(
            "{} not found: build it first (cargo build -p {name} with the same profile)",
            p.display()
        );
    }
    Ok(p)
}

/// A running daemon whose stderr lines are collected.
pub struct Daemon {
    child: Child,
    pid: u32,
    lines: mpsc::UnboundedReceiver<String>,
    log: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    fn spawn(mut cmd: Command, label: &str) -> anyhow::Result<Daemon> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().with_context(|| format!("start {label}"))?;
        let pid = child
            .id()
            .ok_or_else(|| anyhow!("{label} exited at once"))?;
        let err = child
            .stderr
            .take()
            .ok_or_else(|| anyhow!("{label}: no stderr"))?;
        let (tx, rx) = mpsc::unbounded_channel();
        let log = Arc::new(Mutex::new(Vec::new()));
        let log2 = log.clone();
        let echo = std::env::var_os("XENVT_TEST_ECHO").is_some();
        let label = label.to_owned();
        tokio::spawn(async move {
            let mut lines = BufReader::new(err).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                if echo {
                    eprintln!("[{label}] {l}");
                }
                log2.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(l.clone());
                let _ = tx.send(l);
            }
        });
        Ok(Daemon {
            child,
            pid,
            lines: rx,
            log,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Waits (at most [`PROMPT`]) for the next line containing `needle`;
    /// earlier lines are passed over.
    pub async fn wait_for(&mut self, needle: &str) -> anyhow::Result<String> {
        let fut = async {
            while let Some(l) = self.lines.recv().await {
                if l.contains(needle) {
                    return Ok(l);
                }
            }
            bail!("daemon {} ended before saying {needle:?}", self.pid)
        };
        tokio::time::timeout(PROMPT, fut)
            .await
            .map_err(|_| anyhow!("daemon {} did not say {needle:?} in time", self.pid))?
    }

    /// Every line so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Open file descriptors of the process.
    pub fn fd_count(&self) -> anyhow::Result<usize> {
        Ok(std::fs::read_dir(format!("/proc/{}/fd", self.pid))?.count())
    }

    /// SIGKILL, and reap.
    pub async fn kill9(&mut self) -> anyhow::Result<()> {
        self.child.start_kill()?;
        self.child.wait().await?;
        Ok(())
    }

    /// SIGTERM, and wait (at most [`PROMPT`]) for the exit.
    pub async fn term(&mut self) -> anyhow::Result<ExitStatus> {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        )?;
        self.wait().await
    }

    /// Waits (at most [`PROMPT`]) for the exit.
    pub async fn wait(&mut self) -> anyhow::Result<ExitStatus> {
        Ok(tokio::time::timeout(PROMPT, self.child.wait())
            .await
            .map_err(|_| anyhow!("daemon {} did not exit", self.pid))??)
    }
}

/// A simulated host, a scratch directory and the daemon binaries.
pub struct Rig {
    /// The host.
    pub host: SimHost,
    /// Scratch space: configs, the backend's run directory, dom0 services.
    pub tmp: tempfile::TempDir,
    agent_exe: PathBuf,
    backend_exe: PathBuf,
    n: AtomicUsize,
}

impl Rig {
    /// Starts a host with the `xenvt` binary `xenvt`; the daemons must sit beside it.
    pub async fn new(xenvt: &Path) -> anyhow::Result<Rig> {
        let agent_exe = sibling(xenvt, "xenvt-agent")?;
        let backend_exe = sibling(xenvt, "xenvt-backend")?;
        let host = SimHost::start(xenvt, &[]).await?;
        let tmp = tempfile::Builder::new().prefix("xenvt-tunnel-").tempdir()?;
        Ok(Rig {
            host,
            tmp,
            agent_exe,
            backend_exe,
            n: AtomicUsize::new(0),
        })
    }

    /// A path in the scratch directory.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }

    /// The backend's run directory, as [`Rig::backend_toml`] sets it.
    pub fn run_dir(&self) -> PathBuf {
        self.path("run")
    }

    /// The first lines of a backend config: the rig's run directory.
    pub fn backend_toml(&self) -> String {
        format!("run_dir = {:?}\n", self.run_dir().display().to_string())
    }

    fn write_config(&self, kind: &str, toml: &str) -> anyhow::Result<PathBuf> {
        let n = self.n.fetch_add(1, Ordering::Relaxed);
        let p = self.path(&format!("{kind}-{n}.toml"));
        std::fs::write(&p, toml)?;
        Ok(p)
    }

    fn log_filter() -> String {
        std::env::var("XENVT_TEST_LOG").unwrap_or_else(|_| "info".into())
    }

    /// Starts the backend in dom0 with `toml` and waits until it watches.
    pub async fn backend(&self, toml: &str) -> anyhow::Result<Daemon> {
        let cfg = self.write_config("backend", toml)?;
        let dom0 = self.host.dom0().await?;
        let mut c = Command::new(&self.backend_exe);
        c.envs(env_for(&dom0))
            .arg("--config")
            .arg(&cfg)
            .args(["--log", &Self::log_filter()]);
        let mut d = Daemon::spawn(c, "backend")?;
        d.wait_for("watching for agents").await?;
        Ok(d)
    }

    /// Starts an agent in `dom` with `toml`; waits until it published its
    /// channel, and returns its listeners' addresses in config order.
    pub async fn agent(
        &self,
        dom: &DomainInfo,
        toml: &str,
    ) -> anyhow::Result<(Daemon, Vec<std::net::SocketAddr>)> {
        let cfg = self.write_config("agent", toml)?;
        let mut c = Command::new(&self.agent_exe);
        c.envs(env_for(dom))
            .arg("--config")
            .arg(&cfg)
            .args(["--log", &Self::log_filter()]);
        let mut d = Daemon::spawn(c, &format!("agent-{}", dom.name))?;
        d.wait_for("channel published").await?;
        let addrs = d
            .log()
            .iter()
            .filter_map(|l| {
                let rest = l.split("listening on ").nth(1)?;
                rest.split(' ').next()?.parse().ok()
            })
            .collect();
        Ok((d, addrs))
    }

    /// Runs `xenvt-agent` (or `xenvt-backend`) once with `args` in dom0 and
    /// returns its output, for configuration checks.
    pub async fn run_once(
        &self,
        agent: bool,
        toml: &str,
        args: &[&str],
    ) -> anyhow::Result<std::process::Output> {
        let cfg = self.write_config("once", toml)?;
        let exe = if agent {
            &self.agent_exe
        } else {
            &self.backend_exe
        };
        Ok(Command::new(exe)
            .arg("--config")
            .arg(&cfg)
            .args(args)
            .output()
            .await?)
    }
}
