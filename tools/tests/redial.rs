//! The desktop comes back by itself after the proxy restarts. On a simulated
//! host, with the real daemons and a real Xvnc: the agent's hook
//! (`vncconfig -connect`) makes the desktop's reverse connection; the proxy is
//! killed (-9), which ends that stream from dom0's side; the agent's redial is
//! refused while the proxy is down and backs off; once the proxy is started again
//! the next redial brings the desktop back, with nobody acting in the guest. A
//! clean restart of the proxy brings it back too.
//! Then Xvnc drops the connection itself (`vncconfig -disconnect`) and the agent
//! says so instead of redialling.
//!
//! Needs the daemons beside the `xenvt` binary (`cargo build -p xenvt-agent -p
//! xenvt-backend -p xenvt-proxy`) and Xvnc and vncconfig
//! (tigervnc-standalone-server, tigervnc-tools). A missing tool skips the test,
//! unless `XENVT_REQUIRE_PEERS` is set.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use xenvt::bench::tunnel::rig::sibling;
use xenvt::harness::{env_for, SimHost};

const EXE: &str = env!("CARGO_BIN_EXE_xenvt");
/// Only a failure waits this long.
const PATIENCE: Duration = Duration::from_secs(60);

/// Reports a missing real peer: a skip, or a failure under `XENVT_REQUIRE_PEERS`.
fn have(tools: &[&str]) -> bool {
    for t in tools {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(t).is_file()))
            .unwrap_or(false);
        if !found {
            if std::env::var_os("XENVT_REQUIRE_PEERS").is_some() {
                panic!("{t} is not installed, and XENVT_REQUIRE_PEERS is set");
            }
            eprintln!("SKIPPED: {t} is not installed");
            return false;
        }
    }
    true
}

/// A child whose stdout and stderr lines are collected.
struct Kid {
    child: Child,
    label: String,
    lines: mpsc::UnboundedReceiver<String>,
}

impl Kid {
    fn spawn(mut cmd: Command, label: &str) -> anyhow::Result<Kid> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().with_context(|| format!("start {label}"))?;
        let (tx, rx) = mpsc::unbounded_channel();
        let out: Option<Box<dyn AsyncRead + Unpin + Send>> =
            child.stdout.take().map(|s| Box::new(s) as _);
        let err: Option<Box<dyn AsyncRead + Unpin + Send>> =
            child.stderr.take().map(|s| Box::new(s) as _);
        let echo = std::env::var_os("XENVT_TEST_ECHO").is_some();
        for s in [out, err].into_iter().flatten() {
            let (tx, label) = (tx.clone(), label.to_owned());
            tokio::spawn(async move {
                let mut lines = BufReader::new(s).lines();
                while let Ok(Some(l)) = lines.next_line().await {
                    if echo {
                        eprintln!("[{label}] {l}");
                    }
                    let _ = tx.send(l);
                }
            });
        }
        Ok(Kid {
            child,
            label: label.to_owned(),
            lines: rx,
        })
    }

    /// The next line satisfying `want`; earlier lines are passed over.
    async fn wait_until(
        &mut self,
        what: &str,
        want: impl Fn(&str) -> bool,
    ) -> anyhow::Result<String> {
        let label = &self.label;
        let fut = async {
            while let Some(l) = self.lines.recv().await {
                if want(&l) {
                    return Ok(l);
                }
            }
            bail!("{label} ended before saying {what}")
        };
        tokio::time::timeout(PATIENCE, fut)
            .await
            .map_err(|_| anyhow!("{label} did not say {what} in time"))?
    }

    async fn wait_for(&mut self, needle: &str) -> anyhow::Result<String> {
        self.wait_until(&format!("{needle:?}"), |l| l.contains(needle))
            .await
    }

    async fn kill9(&mut self) -> anyhow::Result<()> {
        self.child.start_kill()?;
        self.child.wait().await?;
        Ok(())
    }

    /// SIGTERM and the exit status.
    async fn term(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        if let Some(pid) = self.child.id() {
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            )?;
        }
        let st = tokio::time::timeout(PATIENCE, self.child.wait())
            .await
            .map_err(|_| anyhow!("{} ignored SIGTERM", self.label))??;
        Ok(st)
    }
}

fn lit(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

/// Whether the proxy's control socket says domain `id` has its desktop.
async fn desktop_connected(ctl: &Path, id: u16) -> anyhow::Result<bool> {
    let body = xenvt_ring::control::get_unix(ctl, "/status", 1 << 20).await?;
    let v: serde_json::Value = serde_json::from_str(&body)?;
    let domains = v["domains"].as_array().context("no domains in /status")?;
    Ok(domains
        .iter()
        .any(|d| d["domid"].as_u64() == Some(u64::from(id)) && d["desktop"] == "connected"))
}

/// Waits until the proxy shows domain `id`'s desktop as `want`. The proxy has no
/// event for this; its status is asked again every 50 ms.
async fn wait_desktop(ctl: &Path, id: u16, want: bool) -> anyhow::Result<()> {
    let fut = async {
        loop {
            if desktop_connected(ctl, id).await? == want {
                return anyhow::Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(PATIENCE, fut)
        .await
        .map_err(|_| anyhow!("the proxy never showed domain {id}'s desktop as {want}"))?
}

struct Proxy {
    exe: PathBuf,
    cfg: PathBuf,
    env: Vec<(std::ffi::OsString, std::ffi::OsString)>,
}

impl Proxy {
    async fn start(&self) -> anyhow::Result<Kid> {
        let mut c = Command::new(&self.exe);
        c.envs(self.env.iter().cloned())
            .env("XENVT_LOG", "info")
            .arg("--config")
            .arg(&self.cfg);
        let mut k = Kid::spawn(c, "proxy")?;
        k.wait_for("xenvt-proxy: ready").await?;
        Ok(k)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_desktop_comes_back_after_a_proxy_kill_and_restart() {
    if !have(&["Xvnc", "vncconfig"]) {
        return;
    }
    run().await.unwrap();
}

async fn run() -> anyhow::Result<()> {
    let exe = Path::new(EXE);
    let host = SimHost::start(exe, &[]).await?;
    let tmp = tempfile::tempdir()?;
    let t = tmp.path();
    let dom = host.create("vm1").await?;
    let dom0 = host.dom0().await?;
    let desktop_sock = t.join("desktop.sock");
    let ctl = t.join("proxy.ctl");

    // dom0: the proxy (its control socket beside the desktop socket), the backend.
    std::fs::write(
        t.join("proxy.toml"),
        format!(
            "[viewer]\nlisten = \"127.0.0.1\"\nsecurity = \"none\"\nport_base = 0\n\
             [upstream]\nbackend_socket = {}\n[control]\nsocket = {}\n\
             [[domain]]\ndomid = {}\nname = \"vm1\"\n",
            lit(&desktop_sock),
            lit(&ctl),
            dom.id
        ),
    )?;
    let proxy = Proxy {
        exe: sibling(exe, "xenvt-proxy")?,
        cfg: t.join("proxy.toml"),
        env: env_for(&dom0),
    };
    let mut px = proxy.start().await?;
    std::fs::write(
        t.join("backend.toml"),
        format!(
            "run_dir = {}\n[services.vnc]\ndeliver = {}\n",
            lit(&t.join("run")),
            lit(&desktop_sock)
        ),
    )?;
    let mut c = Command::new(sibling(exe, "xenvt-backend")?);
    c.envs(env_for(&dom0))
        .args(["--log", "info", "--config"])
        .arg(t.join("backend.toml"));
    let mut backend = Kid::spawn(c, "backend")?;
    backend.wait_for("watching for agents").await?;

    // The guest: Xvnc, then the agent whose hook makes Xvnc connect.
    let genv = env_for(&dom);
    let mut c = Command::new("Xvnc");
    c.envs(genv.iter().cloned()).args([
        "-displayfd",
        "1",
        "-rfbport",
        "-1",
        "-SecurityTypes",
        "None",
        "-geometry",
        "320x200",
        "-nolisten",
        "tcp",
    ]);
    let mut xvnc = Kid::spawn(c, "Xvnc")?;
    let display = xvnc
        .wait_until("its display", |l| l.trim().parse::<u32>().is_ok())
        .await?
        .trim()
        .to_owned();
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    // An old-style [hook]: no redial keys, so this is the default behaviour.
    std::fs::write(
        t.join("agent.toml"),
        format!(
            "[[listen]]\naddress = \"127.0.0.1:{port}\"\nservice = \"vnc\"\n\
             [hook]\ncommand = [\"vncconfig\", \"-display\", \":{display}\", \"-connect\", \"127.0.0.1:{port}\"]\n"
        ),
    )?;
    let mut c = Command::new(sibling(exe, "xenvt-agent")?);
    c.envs(genv.iter().cloned())
        .args(["--log", "info,xenvt_agent=debug", "--config"])
        .arg(t.join("agent.toml"));
    let mut agent = Kid::spawn(c, "agent")?;
    agent.wait_for("a backend connected").await?;
    wait_desktop(&ctl, dom.id, true).await?;

    // kill -9 of the proxy: the desktop's stream ends from dom0's side.
    px.kill9().await?;
    agent
        .wait_for("hook: dom0 ended the stream; running the hook again in 1s")
        .await?;
    // With the proxy down, the redial's stream is refused and the pause doubles.
    agent.wait_for("running \"vncconfig\" again").await?;
    agent
        .wait_for("hook: dom0 refused the stream; running the hook again in 2s")
        .await?;

    // The proxy comes back: the desktop follows with nobody acting in the guest.
    let mut px = proxy.start().await?;
    wait_desktop(&ctl, dom.id, true).await?;

    // A clean restart (a package upgrade): the same. The stream did not last
    // redial_reset_secs, so the pause has not started afresh: 4 s, not 1.
    let st = px.term().await?;
    anyhow::ensure!(st.success(), "proxy exited with {st}");
    let mut px = proxy.start().await?;
    agent
        .wait_for("hook: dom0 ended the stream; running the hook again in 4s")
        .await?;
    wait_desktop(&ctl, dom.id, true).await?;

    // Xvnc drops the connection itself: the agent sees the guest's end and leaves it.
    let st = Command::new("vncconfig")
        .envs(genv.iter().cloned())
        .args(["-display", &format!(":{display}"), "-disconnect"])
        .stdin(Stdio::null())
        .status()
        .await?;
    anyhow::ensure!(st.success(), "vncconfig -disconnect: {st}");
    let said = agent
        .wait_until("how the stream ended", |l| {
            l.contains("hook: the guest ended the stream") || l.contains("hook: dom0 ended")
        })
        .await?;
    anyhow::ensure!(
        said.contains("the guest ended the stream; not running the hook"),
        "a guest-side close was taken for dom0's: {said}"
    );
    wait_desktop(&ctl, dom.id, false).await?;

    for d in [&mut agent, &mut backend, &mut px] {
        let st = d.term().await?;
        anyhow::ensure!(st.success(), "{} exited with {st}", d.label);
    }
    xvnc.term().await?;
    host.wait_clean(5_000).await?;
    host.stop().await?;
    Ok(())
}
