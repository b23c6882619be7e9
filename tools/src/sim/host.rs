//! The simulated host daemon: one xenstored, one device model, and a socket pair
//! per domain, driven over the control socket.

use std::collections::BTreeMap;
use std::fs::{DirBuilder, OpenOptions};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::control::{read_line, DomainInfo, DomainRef, Reply, Request};
use super::devices::{Devices, DevicesConfig};
use super::xenstored::{Xenstored, XenstoredConfig};
use super::{SimError, CONTROL_SOCKET};

/// How the host is set up.
#[derive(Clone, Debug)]
pub struct HostConfig {
    /// Directory for the control socket and the per-domain sockets.
    pub dir: PathBuf,
    /// Pages each domain may grant at once (Linux gntalloc's `limit`).
    pub grant_limit_pages: usize,
    /// The program each guest runs on its console (a shell, say); none: no console.
    pub console: Option<Vec<std::ffi::OsString>>,
}

struct Domain {
    info: DomainInfo,
    tasks: Vec<JoinHandle<()>>,
    /// Dropped with the domain, which kills its console program.
    _console: Option<super::console::DomainConsole>,
}

struct State {
    domains: BTreeMap<u16, Domain>,
    next_id: u16,
}

/// A running host.
pub struct Host {
    cfg: HostConfig,
    xs: Xenstored,
    dev: Devices,
    state: Mutex<State>,
    stop: Notify,
}

impl Host {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Binds a domain's sockets and starts serving them.
    fn add_domain(&self, id: u16, name: &str) -> Result<DomainInfo, SimError> {
        let ddir = self.cfg.dir.join(format!("dom{id}"));
        let _ = std::fs::remove_dir_all(&ddir);
        DirBuilder::new().mode(0o700).create(&ddir)?;
        let info = DomainInfo {
            id,
            name: name.to_owned(),
            xenstored: ddir.join("xenstored.sock"),
            devices: ddir.join("devices.sock"),
            console: None,
        };
        let xs_listener = UnixListener::bind(&info.xenstored)?;
        let dev_listener = super::devices::bind(&info.devices)?;
        let xs = self.xs.clone();
        let dev = self.dev.clone();
        let tasks = vec![
            tokio::spawn(async move {
                if let Err(e) = xs.serve(xs_listener, u32::from(id)).await {
                    warn!(domid = id, "xenstored listener ended: {e}");
                }
            }),
            tokio::spawn(async move {
                if let Err(e) = dev.serve(dev_listener, id).await {
                    warn!(domid = id, "device listener ended: {e}");
                }
            }),
        ];
        self.lock().domains.insert(
            id,
            Domain {
                info: info.clone(),
                tasks,
                _console: None,
            },
        );
        Ok(info)
    }

    fn create(&self, name: &str) -> Result<DomainInfo, SimError> {
        if name.is_empty()
            || name.len() > 64
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        {
            return Err(SimError::Refused(format!(
                "bad domain name {name:?}: use 1 to 64 letters, digits, '-', '_' or '.'"
            )));
        }
        let id = {
            let mut st = self.lock();
            if st.domains.values().any(|d| d.info.name == name) {
                return Err(SimError::Refused(format!("domain {name} already exists")));
            }
            // Xen hands out increasing domain ids and skips ones in use.
            let mut id = st.next_id;
            while id == 0 || id >= 0x7ff0 || st.domains.contains_key(&id) {
                id = if id >= 0x7fef { 1 } else { id + 1 };
            }
            st.next_id = id + 1;
            id
        };
        let mut info = self.add_domain(id, name)?;
        self.xs
            .introduce_domain(u32::from(id), name)
            .map_err(|e| SimError::Refused(format!("introduce {name}: {e}")))?;
        if let Some(cmd) = &self.cfg.console {
            let console = super::console::DomainConsole::start(
                cmd.clone(),
                crate::harness::env_for(&info),
                name,
            )?;
            // What xenconsoled does once the guest's console is up.
            self.xs
                .dom0_write(
                    &format!("/local/domain/{id}/console/tty"),
                    &console.tty().to_string_lossy(),
                    Some(u32::from(id)),
                )
                .map_err(|e| SimError::Refused(format!("publish the console of {name}: {e}")))?;
            info.console = Some(console.tty().to_owned());
            if let Some(d) = self.lock().domains.get_mut(&id) {
                d.info.console = info.console.clone();
                d._console = Some(console);
            }
        }
        info!(domid = id, name, "domain created");
        Ok(info)
    }

    fn find(&self, which: &DomainRef) -> Result<u16, SimError> {
        let st = self.lock();
        st.domains
            .values()
            .find(|d| match which {
                DomainRef::Id(id) => d.info.id == *id,
                DomainRef::Name(n) => &d.info.name == n,
            })
            .map(|d| d.info.id)
            .ok_or_else(|| SimError::Refused(format!("no such domain: {which:?}")))
    }

    fn destroy(&self, id: u16, keep_processes: bool) -> Result<(), SimError> {
        if id == 0 {
            return Err(SimError::Refused("domain 0 cannot be destroyed".into()));
        }
        let dom = self
            .lock()
            .domains
            .remove(&id)
            .ok_or_else(|| SimError::Refused(format!("no such domain: {id}")))?;
        if !keep_processes {
            let me = std::process::id() as i32;
            let mut pids = self.xs.pids(u32::from(id));
            pids.extend(self.dev.pids(id));
            pids.sort_unstable();
            pids.dedup();
            for pid in pids.into_iter().filter(|&p| p > 0 && p != me) {
                // The domain's processes die with it, as a guest's do.
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        self.dev.destroy_domain(id);
        if let Err(e) = self.xs.release_domain(u32::from(id)) {
            warn!(domid = id, "release: {e}");
        }
        for t in dom.tasks {
            t.abort();
        }
        let _ = std::fs::remove_dir_all(self.cfg.dir.join(format!("dom{id}")));
        info!(domid = id, name = dom.info.name, "domain destroyed");
        Ok(())
    }

    async fn handle(&self, req: Request) -> Reply {
        let result = match req {
            Request::Create { name } => self.create(&name).map(Reply::Domain),
            Request::Destroy {
                domain,
                keep_processes,
            } => self
                .find(&domain)
                .and_then(|id| self.destroy(id, keep_processes))
                .map(|()| Reply::Ok),
            Request::List => Ok(Reply::Domains(
                self.lock()
                    .domains
                    .values()
                    .map(|d| d.info.clone())
                    .collect(),
            )),
            Request::Stats => Ok(Reply::Stats(self.stats())),
            Request::WaitClean { timeout_ms } => {
                let wait = self.dev.wait_stats(|s| s.is_clean());
                let dur = std::time::Duration::from_millis(timeout_ms.min(600_000));
                match tokio::time::timeout(dur, wait).await {
                    Ok(()) => Ok(Reply::Stats(self.stats())),
                    Err(_) => Err(SimError::Refused(format!(
                        "still held after {timeout_ms} ms: {}",
                        super::leaks(&self.stats()).join("; ")
                    ))),
                }
            }
            Request::Shutdown => {
                self.stop.notify_one();
                Ok(Reply::Ok)
            }
        };
        result.unwrap_or_else(|e| Reply::Error(e.to_string()))
    }

    fn stats(&self) -> serde_json::Value {
        serde_json::json!({
            "xenstored": self.xs.stats(),
            "devices": self.dev.stats(),
        })
    }

    async fn serve_control(self: Arc<Self>, stream: UnixStream) {
        let mut r = BufReader::new(stream);
        loop {
            let line = match read_line(&mut r).await {
                Ok(Some(l)) => l,
                Ok(None) => return,
                Err(e) => {
                    warn!("control connection dropped: {e}");
                    return;
                }
            };
            let reply = match serde_json::from_str::<Request>(&line) {
                Ok(req) => self.handle(req).await,
                Err(e) => Reply::Error(format!("bad request: {e}")),
            };
            let Ok(mut out) = serde_json::to_vec(&reply) else {
                return;
            };
            out.push(b'\n');
            if r.get_mut().write_all(&out).await.is_err() {
                return;
            }
        }
    }
}

/// Runs a host until SIGINT, SIGTERM or a `shutdown` request. `ready` is called
/// once every socket is bound, so a parent can wait for it without polling.
pub async fn run(cfg: HostConfig, ready: impl FnOnce(&Path)) -> Result<(), SimError> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&cfg.dir)?;
    let lockfile = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(cfg.dir.join("lock"))?;
    let _lock = Flock::lock(lockfile, FlockArg::LockExclusiveNonblock)
        .map_err(|_| SimError::Busy(cfg.dir.clone()))?;
    let control_path = cfg.dir.join(CONTROL_SOCKET);
    let _ = std::fs::remove_file(&control_path);

    let host = Arc::new(Host {
        xs: Xenstored::new(XenstoredConfig::default()),
        dev: Devices::new(DevicesConfig {
            grant_limit_pages: cfg.grant_limit_pages,
        }),
        state: Mutex::new(State {
            domains: BTreeMap::new(),
            next_id: 1,
        }),
        stop: Notify::new(),
        cfg: cfg.clone(),
    });
    host.add_domain(0, "Domain-0")?;
    let control = UnixListener::bind(&control_path)?;
    // Registered before the ready line, so a signal sent right after it stops us cleanly.
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    info!(dir = %cfg.dir.display(), "simulated host ready");
    ready(&cfg.dir);
    loop {
        tokio::select! {
            conn = control.accept() => match conn {
                Ok((s, _)) => { tokio::spawn(host.clone().serve_control(s)); }
                Err(e) => warn!("control accept: {e}"),
            },
            _ = host.stop.notified() => break,
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
    }

    info!("simulated host stopping");
    let ids: Vec<u16> = host.lock().domains.keys().copied().collect();
    for id in ids.into_iter().filter(|&id| id != 0) {
        let _ = host.destroy(id, false);
    }
    if let Some(d0) = host.lock().domains.remove(&0) {
        for t in d0.tasks {
            t.abort();
        }
    }
    let _ = std::fs::remove_dir_all(cfg.dir.join("dom0"));
    let _ = std::fs::remove_file(&control_path);
    let _ = std::fs::remove_file(cfg.dir.join("lock"));
    let _ = std::fs::remove_dir(&cfg.dir);
    Ok(())
}
