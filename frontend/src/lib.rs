//! `xenvt-agent`, the domU side of the tunnel.
//!
//! It shares a channel with the backend's domain and publishes it under its own
//! xenstore home (`data/xenvt` by default), writing `state = ready` last so the
//! backend never sees half a publication. Local TCP connections become streams to
//! dom0 services (guest -> dom0); REQUESTs from dom0 are connected to the
//! guest-local addresses the config allows, and refused otherwise (dom0 ->
//! guest). When the backend goes away, every stream that crossed it is reset, a
//! fresh channel is published, and the optional hook runs once a backend is back;
//! it runs again when dom0 drops the stream it made ([`hook`]).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info, info_span, warn, Instrument};
use xenvt_ring::mux::{self, IncomingRequest, MuxConfig, MuxHandle};
use xenvt_ring::xenstore::Xenstore;
use xenvt_ring::{Channel, ChannelConfig, Platform};

pub mod config;
pub mod hook;
pub use xenvt_ring::ratelimit;
pub use xenvt_ring::xenstore as xs;

pub use config::Config;
use ratelimit::RateLimit;
use xs::{Xs, XS_TIMEOUT};

/// How long a connection to a guest-local target may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause before re-publishing after a failed attempt, so a broken backend cannot
/// make the agent spin.
pub const RETRY_PAUSE: Duration = Duration::from_millis(200);
/// The value of the state node once the channel is published.
pub const STATE_READY: &str = "ready";

/// Everything that stops the agent.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is invalid or unreadable: file, line, problem and fix.
    #[error(transparent)]
    Config(#[from] xenvt_ring::config::ConfigError),
    /// A channel, platform or xenstore failure.
    #[error(transparent)]
    Ring(#[from] xenvt_ring::Error),
    /// xenstored did not answer in time (it may be gone).
    #[error("xenstore {op} {path}: no answer within the deadline")]
    XsTimeout {
        /// The operation.
        op: &'static str,
        /// The node.
        path: String,
    },
    /// A xenstore node we depend on is missing or malformed.
    #[error("xenstore node {path}: {problem}")]
    Node {
        /// The node.
        path: String,
        /// What is wrong.
        problem: String,
    },
    /// A listener cannot be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Other I/O.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Reads this domain's id from the relative node `domid`.
pub async fn own_domid<X: Xenstore>(xs: &Xs<X>) -> Result<u16> {
    let v = xs.read("domid").await?.ok_or_else(|| Error::Node {
        path: "domid".into(),
        problem: "missing".into(),
    })?;
    v.trim().parse::<u16>().map_err(|_| Error::Node {
        path: "domid".into(),
        problem: format!("not a domain id ({} bytes)", v.len()),
    })
}

/// Log budget shared by the tasks of one agent.
type Limiter = Arc<Mutex<RateLimit>>;

fn allow(l: &Limiter) -> Option<u64> {
    l.lock().unwrap_or_else(|p| p.into_inner()).allow()
}

/// A configured agent with its listeners bound.
pub struct Agent<X: Xenstore> {
    cfg: Config,
    platform: Arc<dyn Platform>,
    xs: Xs<X>,
    domid: u16,
    base: String,
    listeners: Vec<(TcpListener, String)>,
}

impl<X: Xenstore> Agent<X> {
    /// Finds our domain id and binds every listener (so a port clash is an error
    /// at start, not later).
    pub async fn new(cfg: Config, platform: Arc<dyn Platform>, xs: Xs<X>) -> Result<Self> {
        let domid = own_domid(&xs).await?;
        let base = format!("/local/domain/{domid}/{}", cfg.path);
        let mut listeners = Vec::new();
        for l in &cfg.listen {
            let tl = TcpListener::bind(l.address)
                .await
                .map_err(|source| Error::Listen {
                    addr: l.address,
                    source,
                })?;
            listeners.push((tl, l.service.clone()));
        }
        Ok(Self {
            cfg,
            platform,
            xs,
            domid,
            base,
            listeners,
        })
    }

    /// Our domain id.
    pub fn domid(&self) -> u16 {
        self.domid
    }

    /// The bound listener addresses, in config order (useful with port 0).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|(l, _)| l.local_addr().ok())
            .collect()
    }

    fn mux_config(&self) -> MuxConfig {
        MuxConfig {
            max_streams: self.cfg.max_streams,
            stream_buf: self.cfg.stream_buf,
            ..MuxConfig::default()
        }
    }

    /// Shares a fresh channel and publishes it; `state` goes last.
    async fn publish(&self, serial: u64) -> Result<Channel> {
        let state = format!("{}/state", self.base);
        self.xs.rm(&state).await?;
        let cc = ChannelConfig {
            left_order: self.cfg.ring_order,
            right_order: self.cfg.ring_order,
        };
        let ch = tokio::time::timeout(
            XS_TIMEOUT,
            Channel::serve_xs(
                &*self.platform,
                self.xs.inner(),
                self.cfg.backend,
                &self.base,
                cc,
            ),
        )
        .await
        .map_err(|_| Error::XsTimeout {
            op: "publish",
            path: self.base.clone(),
        })??;
        // A new value per publication, so the backend can tell a fresh channel
        // from the stale one it just lost even if the ids were reused.
        let tag = format!("{}-{serial}", std::process::id());
        self.xs
            .write(&format!("{}/serial", self.base), &tag)
            .await?;
        self.xs.write(&state, STATE_READY).await?;
        Ok(ch)
    }

    /// Runs until `shutdown` resolves or xenstore fails; removes the published
    /// nodes on the way out.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
        let span = info_span!("agent", domid = self.domid);
        self.run_inner(shutdown).instrument(span).await
    }

    async fn run_inner(mut self, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
        let limiter: Limiter = Arc::new(Mutex::new(RateLimit::default()));
        let (cur_tx, cur_rx) = watch::channel::<Option<MuxHandle>>(None);
        let mut hook_task: Option<JoinHandle<()>> = None;
        let hooks = self.cfg.hook.clone().map(|h| {
            let hooks = Arc::new(hook::Hooks::new(&h));
            if let Some(r) = &h.redial {
                info!(
                    service = r.service,
                    "hook: runs when a backend connects, and again when dom0 drops the stream"
                );
            }
            hook_task = Some(tokio::spawn(
                hook::control(h, hooks.clone()).in_current_span(),
            ));
            hooks
        });
        let mut accepters = Vec::new();
        for (l, svc) in std::mem::take(&mut self.listeners) {
            let addr = l.local_addr()?;
            info!("listening on {addr} for service {svc}");
            let watch = hooks.clone().filter(|h| h.watches(&svc));
            accepters.push(tokio::spawn(
                accept_loop(l, svc, cur_rx.clone(), limiter.clone(), watch).in_current_span(),
            ));
        }
        tokio::pin!(shutdown);
        let mut serial = 0u64;
        let res = 'outer: loop {
            serial += 1;
            let ch = match self.publish(serial).await {
                Ok(ch) => ch,
                Err(e) => break Err(e),
            };
            info!(path = %self.base, "channel published, waiting for the backend");
            let started = tokio::select! {
                r = mux::start(ch, self.mux_config()) => r,
                () = &mut shutdown => break Ok(()),
            };
            let (handle, mut incoming) = match started {
                Ok(x) => x,
                Err(e) => {
                    if let Some(n) = allow(&limiter) {
                        warn!(suppressed = n, "backend failed to connect: {e}");
                    }
                    tokio::select! {
                        () = tokio::time::sleep(RETRY_PAUSE) => continue,
                        () = &mut shutdown => break Ok(()),
                    }
                }
            };
            cur_tx.send_replace(Some(handle.clone()));
            info!("backend connected");
            if let Some(h) = &hooks {
                h.connected();
            }
            loop {
                tokio::select! {
                    req = incoming.next() => match req {
                        Some(r) => self.dispatch(r, &limiter),
                        None => {
                            let reason = handle.closed().await;
                            info!(%reason, "backend gone: streams reset, publishing again");
                            break;
                        }
                    },
                    reason = handle.closed() => {
                        info!(%reason, "backend gone: streams reset, publishing again");
                        break;
                    }
                    () = &mut shutdown => {
                        cur_tx.send_replace(None);
                        handle.shutdown();
                        break 'outer Ok(());
                    }
                }
            }
            cur_tx.send_replace(None);
            if let Some(h) = &hooks {
                h.gone();
            }
            handle.shutdown();
        };
        for a in accepters {
            a.abort();
        }
        if let Some(t) = hook_task {
            t.abort();
        }
        // Best effort: tell the backend we are gone for good.
        let _ = self.xs.rm(&self.base).await;
        info!("stopped");
        res
    }

    /// Connects a dom0 -> guest request to its allowed target, or refuses it.
    fn dispatch(&self, req: IncomingRequest, limiter: &Limiter) {
        let Some(&addr) = self.cfg.services.get(req.service()) else {
            if let Some(n) = allow(limiter) {
                info!(suppressed = n, service = ?req.service(), "refused: service not allowed");
            }
            req.refuse();
            return;
        };
        let limiter = limiter.clone();
        tokio::spawn(
            async move {
                match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
                    Ok(Ok(s)) => {
                        let _ = s.set_nodelay(true);
                        debug!(service = req.service(), %addr, "connected");
                        req.accept(s);
                    }
                    Ok(Err(e)) => {
                        if let Some(n) = allow(&limiter) {
                            info!(suppressed = n, service = req.service(), %addr, "refused: {e}");
                        }
                        req.refuse();
                    }
                    Err(_) => {
                        if let Some(n) = allow(&limiter) {
                            info!(suppressed = n, service = req.service(), %addr, "refused: connect timed out");
                        }
                        req.refuse();
                    }
                }
            }
            .in_current_span(),
        );
    }
}

/// Accepts local connections and opens a stream for each while a backend is
/// connected; without one, connections are closed at once.
/// With `hooks`, each stream's end goes to the hook's schedule.
async fn accept_loop(
    l: TcpListener,
    service: String,
    cur: watch::Receiver<Option<MuxHandle>>,
    limiter: Limiter,
    hooks: Option<Arc<hook::Hooks>>,
) {
    loop {
        let (sock, peer) = match l.accept().await {
            Ok(x) => x,
            Err(e) => {
                if let Some(n) = allow(&limiter) {
                    warn!(suppressed = n, %service, "accept: {e}");
                }
                // Out of fds or similar: back off instead of spinning.
                tokio::time::sleep(RETRY_PAUSE).await;
                continue;
            }
        };
        let _ = sock.set_nodelay(true);
        let Some(h) = cur.borrow().clone() else {
            if let Some(n) = allow(&limiter) {
                info!(suppressed = n, %service, %peer, "no backend connected: closed");
            }
            continue;
        };
        let service = service.clone();
        let limiter = limiter.clone();
        let watch = hooks.clone().map(|hk| (hk.opening(), hk));
        tokio::spawn(
            async move {
                match h.open(&service, sock).await {
                    Ok(s) => {
                        debug!(%service, %peer, stream = s.id(), "opened");
                        if let Some((gen, hk)) = watch {
                            let t0 = Instant::now();
                            let end = s.done().await;
                            let how = hook::who_ended(&end);
                            debug!(%service, %peer, ?end, ?how, "ended");
                            hk.ended(gen, t0.elapsed(), how);
                        }
                    }
                    Err(e) => {
                        if let Some(n) = allow(&limiter) {
                            info!(suppressed = n, %service, %peer, "not opened: {e}");
                        }
                        if let Some((gen, hk)) = watch {
                            match e {
                                xenvt_ring::Error::Refused(_) => hk.refused(gen),
                                _ => hk.ended(gen, Duration::ZERO, hook::Ended::Backend),
                            }
                        }
                    }
                }
            }
            .in_current_span(),
        );
    }
}
