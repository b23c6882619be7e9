//! The process: listeners for viewers and desktops, and the domains they meet in.
//!
//! Ready lines go to standard output once each listener is bound, so a supervisor or
//! a test knows the addresses (ports may be chosen by the system):
//!
//! ```text
//! xenvt-proxy: viewers domain=1 addr=127.0.0.1:5901
//! xenvt-proxy: backend path=vnc.sock
//! xenvt-proxy: reverse domain=1 addr=127.0.0.1:5500
//! xenvt-proxy: ready
//! ```

use std::collections::BTreeMap;
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tracing::{info, info_span, warn, Instrument};

use crate::config::{Config, Dial, DomainConfig, Security};
use crate::domain::{lock, Domain};
use crate::error::{Error, Result};
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
    domains: Mutex<BTreeMap<u16, Arc<Domain>>>,
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
    let d = Arc::new(Daemon {
        cfg,
        viewer,
        domains: Mutex::new(BTreeMap::new()),
    });
    let mut tasks = tokio::task::JoinSet::new();
    for dc in d.cfg.domains.values() {
        d.clone().open_domain(dc.clone(), &mut tasks).await?;
    }
    let mut socket_file = None;
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
    ready("ready");
    info!("xenvt-proxy ready");
    shutdown.await;
    info!("stopping");
    for dom in lock(&d.domains).values() {
        dom.close_viewers();
    }
    tasks.shutdown().await;
    drop(socket_file);
    Ok(())
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
        }
    }

    /// Creates the domain, binds its viewer port and starts its forward dialer.
    async fn open_domain(
        self: Arc<Self>,
        dc: DomainConfig,
        tasks: &mut tokio::task::JoinSet<()>,
    ) -> Result<Arc<Domain>> {
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
        let dom = Domain::new(dc.domid, &dc.name);
        lock(&self.domains).insert(dc.domid, dom.clone());
        ready(&format!("viewers domain={} addr={local}", dc.domid));
        let span = info_span!("domain", id = dc.domid);
        tasks.spawn(
            self.clone()
                .viewer_loop(l, dom.clone())
                .instrument(span.clone()),
        );
        if let Some(dial) = dc.connect.clone() {
            tasks.spawn(self.dial_loop(dom.clone(), dial).instrument(span));
        }
        Ok(dom)
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
                    match run_viewer(dom, s, &d.viewer).await {
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
            });
        match run_desktop(dom, s, &self.upstream_settings(&dc)).await {
            Ok(()) => info!("desktop ended"),
            Err(e) => warn!("desktop disconnected: {e}"),
        }
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
        let existing = lock(&self.domains).get(&o.domid).cloned();
        let dom = match existing {
            Some(d) => d,
            None => {
                let dc = self
                    .cfg
                    .domain(o.domid, Some(&o.domain))
                    .ok_or(Error::UnknownDomain(o.domid))?;
                // Domains that appear at run time get their listener here; the join
                // set of the caller is not reachable, so the listener runs detached.
                let mut tasks = tokio::task::JoinSet::new();
                let dom = self.clone().open_domain(dc, &mut tasks).await?;
                tasks.detach_all();
                dom
            }
        };
        dom.set_name(&o.domain);
        let span = info_span!("domain", id = o.domid, name = %o.domain);
        self.serve_desktop(dom, s).instrument(span).await;
        Ok(())
    }

    async fn reverse_loop(self: Arc<Self>, l: TcpListener, domid: u16) {
        let Some(dom) = lock(&self.domains).get(&domid).cloned() else {
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
                    .instrument(info_span!("domain", id = domid)),
            );
            while conns.try_join_next().is_some() {}
        }
    }

    async fn dial_loop(self: Arc<Self>, dom: Arc<Domain>, dial: Dial) {
        let mut wait = Duration::from_millis(500);
        loop {
            let started = tokio::time::Instant::now();
            let ok = match &dial {
                Dial::Tcp(a) => match TcpStream::connect(a).await {
                    Ok(s) => {
                        let _ = s.set_nodelay(true);
                        self.clone().serve_desktop(dom.clone(), s).await;
                        true
                    }
                    Err(e) => {
                        info!("dial {a}: {e}");
                        false
                    }
                },
                Dial::Unix(p) => match UnixStream::connect(p).await {
                    Ok(s) => {
                        self.clone().serve_desktop(dom.clone(), s).await;
                        true
                    }
                    Err(e) => {
                        info!("dial {}: {e}", p.display());
                        false
                    }
                },
            };
            // Back off while the desktop keeps failing; start over after a good session.
            if ok && started.elapsed() > Duration::from_secs(10) {
                wait = Duration::from_millis(500);
            } else {
                wait = (wait * 2).min(MAX_REDIAL);
            }
            tokio::time::sleep(wait).await;
        }
    }
}
