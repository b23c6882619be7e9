//! The process: listeners for viewers and desktops, and the domains they meet in.
//!
//! Ready lines go to standard output once each listener is bound, so a supervisor or
//! a test knows the addresses (ports may be chosen by the system):
//!
//! ```text
//! xenvt-proxy: viewers domain=1 addr=127.0.0.1:5901
//! xenvt-proxy: backend path=vnc.sock
//! xenvt-proxy: reverse domain=1 addr=127.0.0.1:5500
//! xenvt-proxy: web addr=127.0.0.1:6080
//! xenvt-proxy: control path=/run/xenvt-proxy/proxy.ctl
//! xenvt-proxy: ready
//! ```

use std::collections::BTreeMap;
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::{mpsc, Notify};
use tracing::{debug, info, info_span, warn, Instrument};
use xenvt_ring::xenstore::{Xenstore, XsClient};

use crate::config::{Config, Dial, DomainConfig, Security};
use crate::console_view::{run_console, ConsoleSettings, ConsoleSpec, LogSettings};
use crate::domain::{lock, Domain};
use crate::error::{Error, Result};
use crate::metrics::Disconnect;
use crate::rfb::ClientLimits;
use crate::upstream::{run_desktop, UpstreamSettings};
use crate::viewer::{run_viewer, ViewerSettings};

/// How long a delivered connection may take to send its PROXY header.
pub const ORIGIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait between two dials of a forward desktop.
pub const MAX_REDIAL: Duration = Duration::from_secs(30);

fn ready(line: &str) {
    let mut o = std::io::stdout().lock();
    let _ = writeln!(o, "xenvt-proxy: {line}");
    let _ = o.flush();
}

struct Daemon {
    cfg: Config,
    viewer: ViewerSettings,
    domains: Mutex<BTreeMap<u16, DomainRt>>,
    /// Serialises creating domains (the backend and xenstore may race to add one).
    opening: tokio::sync::Mutex<()>,
    xs: Option<XsClient>,
}

/// A served domain and the tasks that serve it (aborted when it goes).
struct DomainRt {
    dom: Arc<Domain>,
    tasks: Vec<tokio::task::AbortHandle>,
    viewer_addr: std::net::SocketAddr,
    /// Found through xenstore: removed when xenstore no longer lists it.
    discovered: bool,
}

impl Drop for DomainRt {
    fn drop(&mut self) {
        self.dom.close_viewers();
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Whether to use xenstore when the config does not say.
fn xenstore_present() -> bool {
    std::env::var_os("XENSTORED_PATH").is_some() || Path::new("/dev/xen/xenbus").exists()
}

/// Runs the proxy until `shutdown` resolves.
pub async fn run(cfg: Config, shutdown: impl Future<Output = ()>) -> Result<()> {
    let viewer = ViewerSettings {
        password: match &cfg.security {
            Security::None => None,
            Security::VncAuth(p) => Some(p.clone()),
        },
        limits: ClientLimits {
            max_cut_text: cfg.max_cut_text,
            ..ClientLimits::default()
        },
    };
    let xs = if cfg.xenstore.enabled.unwrap_or_else(xenstore_present) {
        match XsClient::connect().await {
            Ok(x) => Some(x.with_deadline(Duration::from_secs(10))),
            Err(e) if cfg.xenstore.enabled == Some(true) => {
                return Err(Error::Xenstore(e.to_string()))
            }
            Err(e) => {
                warn!("xenstore: {e}; consoles named there will not be found");
                None
            }
        }
    } else {
        None
    };
    let d = Arc::new(Daemon {
        cfg,
        viewer,
        domains: Mutex::new(BTreeMap::new()),
        opening: tokio::sync::Mutex::new(()),
        xs,
    });
    let mut tasks = tokio::task::JoinSet::new();
    for dc in d.cfg.domains.values() {
        d.clone().open_domain(dc.clone(), false).await?;
    }
    let mut socket_file = None;
    let mut control_file = None;
    if let Some(path) = d.cfg.control.clone() {
        let (l, f) = xenvt_ring::control::bind_unix(&path)
            .map_err(|e| Error::io(format!("control socket {}", path.display()), e))?;
        ready(&format!("control path={}", path.display()));
        control_file = Some(f);
        let dir: Arc<dyn Directory> = d.clone();
        tasks.spawn(xenvt_ring::control::serve_unix(
            l,
            Arc::new(crate::control::Control(dir)),
        ));
    }
    if let Some(addr) = d.cfg.control_tcp {
        let l = TcpListener::bind(addr)
            .await
            .map_err(|e| Error::io(format!("control listener {addr}"), e))?;
        let local = l.local_addr().map_err(|e| Error::io("local address", e))?;
        ready(&format!("control addr={local}"));
        let dir: Arc<dyn Directory> = d.clone();
        tasks.spawn(xenvt_ring::control::serve_tcp(
            l,
            Arc::new(crate::control::Control(dir)),
        ));
    }
    if let Some(path) = d.cfg.upstream.backend_socket.clone() {
        let l = bind_unix(&path)?;
        ready(&format!("backend path={}", path.display()));
        socket_file = Some(SocketFile(path));
        tasks.spawn(d.clone().backend_loop(l));
    }
    if let Some((addr, domid)) = d.cfg.reverse {
        let l = TcpListener::bind(addr)
            .await
            .map_err(|e| Error::io(format!("reverse listener {addr}"), e))?;
        let local = l.local_addr().map_err(|e| Error::io("local address", e))?;
        ready(&format!("reverse domain={domid} addr={local}"));
        tasks.spawn(d.clone().reverse_loop(l, domid));
    }
    if let Some(w) = d.cfg.web.clone() {
        let l = TcpListener::bind(w.listen)
            .await
            .map_err(|e| Error::io(format!("web listener {}", w.listen), e))?;
        let local = l.local_addr().map_err(|e| Error::io("local address", e))?;
        ready(&format!("web addr={local}"));
        let dir: Arc<dyn Directory> = d.clone();
        tasks.spawn(crate::web::serve(l, w, dir, d.viewer.clone()));
    }
    if let (Some(xs), true) = (d.xs.clone(), d.cfg.xenstore.domains) {
        let (tx, mut rx) = mpsc::channel(4);
        let include_dom0 = d.cfg.xenstore.include_dom0;
        tasks.spawn(async move {
            if let Err(e) = watch_domains(xs, include_dom0, tx).await {
                warn!("xenstore domain watch: {e}");
            }
        });
        // The first listing is in before we say ready.
        if let Some(list) = rx.recv().await {
            d.clone().reconcile(list).await;
        }
        let d2 = d.clone();
        tasks.spawn(async move {
            while let Some(list) = rx.recv().await {
                d2.clone().reconcile(list).await;
            }
        });
    }
    ready("ready");
    info!("xenvt-proxy ready");
    shutdown.await;
    info!("stopping");
    let all = std::mem::take(&mut *lock(&d.domains));
    drop(all);
    tasks.shutdown().await;
    drop(socket_file);
    drop(control_file);
    Ok(())
}

/// Lists the domains xenstore knows each time one is introduced or released, sending
/// id and name (names are cleaned of control characters and cut to 64 characters).
/// Watch events are drained by their own tasks: the client stalls requests behind
/// events nobody collected.
pub async fn watch_domains<X: Xenstore + Clone>(
    xs: X,
    include_dom0: bool,
    tx: mpsc::Sender<BTreeMap<u16, String>>,
) -> Result<()> {
    let fired = Arc::new(Notify::new());
    let mut drains = Vec::new();
    for special in ["@introduceDomain", "@releaseDomain"] {
        let mut w = xs
            .watch(special)
            .await
            .map_err(|e| Error::Xenstore(e.to_string()))?;
        let f = fired.clone();
        drains.push(tokio::spawn(async move {
            while w.next().await.is_some() {
                f.notify_one();
            }
        }));
    }
    struct Abort(Vec<tokio::task::JoinHandle<()>>);
    impl Drop for Abort {
        fn drop(&mut self) {
            for t in &self.0 {
                t.abort();
            }
        }
    }
    let _drains = Abort(drains);
    let mut last = None;
    loop {
        fired.notified().await;
        let ids = xs
            .directory("/local/domain")
            .await
            .map_err(|e| Error::Xenstore(e.to_string()))?;
        let mut now = BTreeMap::new();
        for id in ids.iter().filter_map(|i| i.parse::<u16>().ok()) {
            if id == 0 && !include_dom0 {
                continue;
            }
            let name = xs
                .read(&format!("/local/domain/{id}/name"))
                .await
                .map_err(|e| Error::Xenstore(e.to_string()))?
                .unwrap_or_default();
            let name: String = name.chars().filter(|c| !c.is_control()).take(64).collect();
            let name = if name.is_empty() {
                format!("domain{id}")
            } else {
                name
            };
            now.insert(id, name);
        }
        if last.as_ref() != Some(&now) {
            last = Some(now.clone());
            if tx.send(now).await.is_err() {
                return Ok(());
            }
        }
    }
}

/// What the web listener needs from the daemon.
pub trait Directory: Send + Sync + 'static {
    /// A domain by id or name.
    fn find(&self, key: &str) -> Option<Arc<Domain>>;
    /// Every domain: id, name, the current view's kind label, viewer address.
    fn list(&self) -> Vec<DomainInfo>;
}

/// One line of the status page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainInfo {
    /// Domain id.
    pub domid: u16,
    /// Name.
    pub name: String,
    /// What viewers see now.
    pub view: String,
    /// Viewers attached.
    pub viewers: usize,
    /// The RFB viewer port's address.
    pub viewer_addr: std::net::SocketAddr,
}

impl Directory for Daemon {
    fn find(&self, key: &str) -> Option<Arc<Domain>> {
        let doms = lock(&self.domains);
        if let Ok(id) = key.parse::<u16>() {
            if let Some(d) = doms.get(&id) {
                return Some(d.dom.clone());
            }
        }
        doms.values()
            .find(|d| d.dom.name() == key)
            .map(|d| d.dom.clone())
    }

    fn list(&self) -> Vec<DomainInfo> {
        lock(&self.domains)
            .values()
            .map(|d| DomainInfo {
                domid: d.dom.domid(),
                name: d.dom.name(),
                view: d.dom.current().name,
                viewers: d.dom.viewer_count(),
                viewer_addr: d.viewer_addr,
            })
            .collect()
    }
}

/// Removes the backend socket file when the daemon stops.
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn bind_unix(path: &Path) -> Result<UnixListener> {
    use std::os::unix::fs::FileTypeExt;
    // A socket left by a previous run is replaced; any other file is not ours to remove.
    if let Ok(m) = std::fs::symlink_metadata(path) {
        if m.file_type().is_socket() {
            let _ = std::fs::remove_file(path);
        }
    }
    UnixListener::bind(path).map_err(|e| Error::io(format!("backend socket {}", path.display()), e))
}

impl Daemon {
    fn upstream_settings(&self, dc: &DomainConfig) -> UpstreamSettings {
        UpstreamSettings {
            encodings: self.cfg.upstream.encodings.clone(),
            continuous_updates: self.cfg.upstream.continuous_updates,
            password: dc.desktop_password.clone(),
            slot: "desktop".into(),
        }
    }

    fn console_settings(&self, dc: &DomainConfig) -> ConsoleSettings {
        let c = &self.cfg.console;
        let path = dc.console_log.clone().or_else(|| {
            c.log_dir
                .as_ref()
                .map(|d| crate::console_view::log_path(d, &dc.name))
        });
        ConsoleSettings {
            config: c.config.clone(),
            source: dc.console.clone(),
            log: path.map(|path| LogSettings {
                path,
                max_bytes: c.log_max_bytes,
                keep: c.log_keep,
            }),
            fps: c.fps,
        }
    }

    /// Creates the domain, binds its viewer port and starts its console, its forward
    /// dialers and its viewer listener. An existing domain is returned as it is.
    async fn open_domain(
        self: Arc<Self>,
        dc: DomainConfig,
        discovered: bool,
    ) -> Result<Arc<Domain>> {
        let _one_at_a_time = self.opening.lock().await;
        if let Some(d) = lock(&self.domains).get(&dc.domid) {
            return Ok(d.dom.clone());
        }
        let l = TcpListener::bind(dc.viewer_addr).await.map_err(|e| {
            Error::io(
                format!(
                    "viewer listener of domain {} on {}",
                    dc.domid, dc.viewer_addr
                ),
                e,
            )
        })?;
        let local = l.local_addr().map_err(|e| Error::io("local address", e))?;
        let mut policy = self.cfg.switch.clone();
        policy
            .bindings
            .extend(dc.extras.iter().filter_map(|e| e.binding.clone()));
        let cs = self.console_settings(&dc);
        let (w, h) = (
            cs.config.cols * crate::console::font::GLYPH_W,
            cs.config.rows * crate::console::font::GLYPH_H,
        );
        let (dom, port) = Domain::new(dc.domid, &dc.name, Arc::new(policy), (w, h))?;
        let span = info_span!("domain", domid = dc.domid, name = %dc.name);
        let mut tasks = Vec::new();
        let xs = self.xs.clone();
        tasks.push(
            tokio::spawn(
                async move {
                    if let Err(e) = run_console(port, cs, xs).await {
                        warn!("console view stopped: {e}");
                    }
                }
                .instrument(span.clone()),
            )
            .abort_handle(),
        );
        tasks.push(
            tokio::spawn(
                self.clone()
                    .viewer_loop(l, dom.clone())
                    .instrument(span.clone()),
            )
            .abort_handle(),
        );
        if let Some(dial) = dc.connect.clone() {
            let set = self.upstream_settings(&dc);
            tasks.push(
                tokio::spawn(dial_loop(dom.clone(), dial, set).instrument(span.clone()))
                    .abort_handle(),
            );
        }
        for e in &dc.extras {
            let set = UpstreamSettings {
                password: e.password.clone(),
                slot: e.name.clone(),
                ..self.upstream_settings(&dc)
            };
            tasks.push(
                tokio::spawn(
                    dial_loop(dom.clone(), e.dial.clone(), set).instrument(info_span!(
                        "upstream",
                        domid = dc.domid,
                        name = %dc.name,
                        view = %e.name
                    )),
                )
                .abort_handle(),
            );
        }
        lock(&self.domains).insert(
            dc.domid,
            DomainRt {
                dom: dom.clone(),
                tasks,
                viewer_addr: local,
                discovered,
            },
        );
        ready(&format!("viewers domain={} addr={local}", dc.domid));
        info!(domid = dc.domid, name = %dc.name, addr = %local, "serving domain");
        Ok(dom)
    }

    /// Brings the served domains in line with xenstore's list: new ones are opened,
    /// discovered ones that are gone are closed, and names follow xenstore.
    async fn reconcile(self: Arc<Self>, list: BTreeMap<u16, String>) {
        let gone: Vec<DomainRt> = {
            let mut doms = lock(&self.domains);
            let ids: Vec<u16> = doms
                .iter()
                .filter(|(id, d)| d.discovered && !list.contains_key(id))
                .map(|(id, _)| *id)
                .collect();
            ids.iter().filter_map(|id| doms.remove(id)).collect()
        };
        for d in gone {
            info!(domid = d.dom.domid(), "domain destroyed; no longer served");
            drop(d);
        }
        for (id, name) in list {
            let existing = lock(&self.domains).get(&id).map(|d| d.dom.clone());
            match existing {
                Some(d) => d.set_name(&name),
                None => {
                    let Some(dc) = self.cfg.domain(id, Some(&name)) else {
                        continue;
                    };
                    let configured = self.cfg.domains.contains_key(&id);
                    if let Err(e) = self.clone().open_domain(dc, !configured).await {
                        warn!(domid = id, "cannot serve the domain: {e}");
                    }
                }
            }
        }
    }

    async fn viewer_loop(self: Arc<Self>, l: TcpListener, dom: Arc<Domain>) {
        let mut conns = tokio::task::JoinSet::new();
        loop {
            let (s, peer) = match l.accept().await {
                Ok(x) => x,
                Err(e) => {
                    warn!("viewer accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = s.set_nodelay(true);
            let (d, dom) = (self.clone(), dom.clone());
            conns.spawn(
                async move {
                    let r = run_viewer(dom.clone(), s, &d.viewer).await;
                    dom.stats().disconnected(Disconnect::of(&r));
                    match r {
                        Ok(()) => info!("viewer left"),
                        Err(e) => info!("viewer disconnected: {e}"),
                    }
                }
                .instrument(info_span!("viewer", %peer)),
            );
            while conns.try_join_next().is_some() {}
        }
    }

    async fn serve_desktop<S>(self: Arc<Self>, dom: Arc<Domain>, s: S)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let dc = self
            .cfg
            .domain(dom.domid(), Some(&dom.name()))
            .unwrap_or_else(|| DomainConfig {
                domid: dom.domid(),
                name: dom.name(),
                viewer_addr: (self.cfg.default_listen, 0).into(),
                desktop_password: None,
                connect: None,
                console: ConsoleSpec::None,
                console_log: None,
                extras: Vec::new(),
            });
        serve_upstream(dom, s, self.upstream_settings(&dc)).await;
    }

    async fn backend_loop(self: Arc<Self>, l: UnixListener) {
        let mut conns = tokio::task::JoinSet::new();
        loop {
            let s = match l.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    warn!("backend accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let d = self.clone();
            conns.spawn(async move {
                if let Err(e) = d.delivered(s).await {
                    warn!("delivered connection refused: {e}");
                }
            });
            while conns.try_join_next().is_some() {}
        }
    }

    /// A connection from the backend: PROXY header, then the desktop's RFB.
    async fn delivered(self: Arc<Self>, mut s: UnixStream) -> Result<()> {
        let o = tokio::time::timeout(ORIGIN_TIMEOUT, xenvt_ring::proxyv2::read(&mut s))
            .await
            .map_err(|_| Error::Refused("no PROXY header in time"))??;
        if o.service != "vnc" {
            return Err(Error::Service(o.service));
        }
        let existing = lock(&self.domains).get(&o.domid).map(|d| d.dom.clone());
        let dom = match existing {
            Some(d) => d,
            None => {
                let dc = self
                    .cfg
                    .domain(o.domid, Some(&o.domain))
                    .ok_or(Error::UnknownDomain(o.domid))?;
                self.clone().open_domain(dc, false).await?
            }
        };
        dom.set_name(&o.domain);
        let span = info_span!("domain", domid = o.domid, name = %o.domain);
        self.serve_desktop(dom, s).instrument(span).await;
        Ok(())
    }

    async fn reverse_loop(self: Arc<Self>, l: TcpListener, domid: u16) {
        let Some(dom) = lock(&self.domains).get(&domid).map(|d| d.dom.clone()) else {
            return;
        };
        let mut conns = tokio::task::JoinSet::new();
        loop {
            let (s, peer) = match l.accept().await {
                Ok(x) => x,
                Err(e) => {
                    warn!("reverse accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = s.set_nodelay(true);
            info!(%peer, "reverse desktop connection");
            conns.spawn(
                self.clone()
                    .serve_desktop(dom.clone(), s)
                    .instrument(info_span!("domain", domid = domid, name = %dom.name())),
            );
            while conns.try_join_next().is_some() {}
        }
    }
}

async fn serve_upstream<S>(dom: Arc<Domain>, s: S, set: UpstreamSettings)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    match run_desktop(dom, s, &set).await {
        Ok(()) => info!("{} ended", set.slot),
        Err(e) => warn!("{} disconnected: {e}", set.slot),
    }
}

/// Dials an upstream (the forward desktop or a configured extra) again and again.
async fn dial_loop(dom: Arc<Domain>, dial: Dial, set: UpstreamSettings) {
    let mut wait = Duration::from_millis(500);
    loop {
        let started = tokio::time::Instant::now();
        let ok = match &dial {
            Dial::Tcp(a) => match TcpStream::connect(a).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    serve_upstream(dom.clone(), s, set.clone()).await;
                    true
                }
                Err(e) => {
                    debug!("dial {a}: {e}");
                    false
                }
            },
            Dial::Unix(p) => match UnixStream::connect(p).await {
                Ok(s) => {
                    serve_upstream(dom.clone(), s, set.clone()).await;
                    true
                }
                Err(e) => {
                    debug!("dial {}: {e}", p.display());
                    false
                }
            },
        };
        // Back off while the upstream keeps failing; start over after a good session.
        if ok && started.elapsed() > Duration::from_secs(10) {
            wait = Duration::from_millis(500);
        } else {
            wait = (wait * 2).min(MAX_REDIAL);
        }
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xenvt_ring::xenstore::MemStore;

    #[tokio::test]
    async fn domains_follow_introduce_and_release() {
        let xs = MemStore::new();
        xs.write("/local/domain/0/name", "Domain-0").await.unwrap();
        xs.write("/local/domain/3/name", "vm\u{7}3").await.unwrap();
        let (tx, mut rx) = mpsc::channel(4);
        let t = tokio::spawn(watch_domains(xs.clone(), false, tx));
        let first = rx.recv().await.unwrap();
        assert_eq!(
            first,
            BTreeMap::from([(3, "vm3".to_owned())]),
            "no dom0, no controls"
        );
        xs.write("/local/domain/7/name", "vm7").await.unwrap();
        xs.write("@introduceDomain", "").await.unwrap();
        let second = rx.recv().await.unwrap();
        assert_eq!(second.keys().copied().collect::<Vec<_>>(), vec![3, 7]);
        xs.rm("/local/domain/3").await.unwrap();
        xs.write("@releaseDomain", "").await.unwrap();
        let third = rx.recv().await.unwrap();
        assert_eq!(third.keys().copied().collect::<Vec<_>>(), vec![7]);
        t.abort();
    }
}
