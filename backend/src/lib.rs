//! `xenvt-backend`, the dom0 side of the tunnel.
//!
//! It watches xenstore for agents (`/local/domain/<id>/data/xenvt/state`), in
//! every domain or the configured ones, and maps each one's channel. Streams a
//! guest opens are delivered to the dom0 service configured for their name, over
//! a unix socket, with a PROXY v2 header first that names the guest; unknown
//! services are refused. For dom0 -> guest, it listens on
//! `<run_dir>/<domain>/<service>.sock` and opens a stream into the guest per
//! connection. When an agent dies or its domain is released, everything for
//! that guest is torn down: streams reset, channel unmapped, sockets removed.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;

use futures::StreamExt;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tracing::{info, info_span, warn, Instrument};
use xenvt_ring::xenstore::Xenstore;
use xenvt_ring::Platform;

pub mod config;
pub mod guest;
pub mod metrics;
pub use xenvt_ring::ratelimit;
pub mod sockets;
pub use xenvt_ring::xenstore as xs;

pub use config::Config;
use guest::Guest;
use xs::Xs;

/// Everything that stops the backend.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is invalid or unreadable: file, line, problem and fix.
    #[error(transparent)]
    Config(#[from] xenvt_ring::config::ConfigError),
    /// A channel, mux, platform or xenstore failure.
    #[error(transparent)]
    Ring(#[from] xenvt_ring::Error),
    /// A xenstore node is missing or malformed.
    #[error("xenstore node {path}: {problem}")]
    Node {
        /// The node.
        path: String,
        /// What is wrong.
        problem: String,
    },
    /// A xenstore watch ended: xenstored went away.
    #[error("xenstore watch on {0} ended")]
    WatchEnded(String),
    /// Other I/O (sockets, the run directory).
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How often the backend checks that xenstored still answers.
pub const XS_PING: std::time::Duration = std::time::Duration::from_secs(30);

/// The running control endpoint; dropping it stops it and removes the socket.
struct Control {
    _file: xenvt_ring::control::SocketFile,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Control {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

struct Entry {
    kick: Arc<Notify>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// The backend: a watcher and one task per served guest.
pub struct Backend<X: Xenstore + Clone> {
    cfg: Arc<Config>,
    platform: Arc<dyn Platform>,
    xs: Xs<X>,
    own: u16,
    guests: BTreeMap<u16, Entry>,
    /// Domains looked at and not served (not selected, or our own).
    ignored: BTreeSet<u16>,
    stats: Arc<metrics::Registry>,
}

/// Watch events, coalesced: which domains to look at again, whether to list
/// them all. The watch streams are drained at once by [`forward`] (the xenstore
/// client stops answering requests while an undelivered event waits), and a
/// guest writing nodes in a loop costs one flag, not a queue.
#[derive(Default)]
struct Dirty {
    state: std::sync::Mutex<DirtyState>,
    notify: Notify,
}

#[derive(Default)]
struct DirtyState {
    ids: BTreeSet<u16>,
    rescan: bool,
    /// The watch lost events (our xenstore client then yields the watch's own path):
    /// any guest's nodes may have changed unseen, so everything is looked at again.
    relist: bool,
    ended: Option<String>,
}

impl Dirty {
    fn lock(&self) -> std::sync::MutexGuard<'_, DirtyState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn take_relist(&self) -> bool {
        std::mem::take(&mut self.lock().relist)
    }

    fn take(&self) -> (BTreeSet<u16>, bool, Option<String>) {
        let mut g = self.lock();
        (
            std::mem::take(&mut g.ids),
            std::mem::take(&mut g.rescan),
            g.ended.take(),
        )
    }
}

/// Drains one watch into `dirty`.
async fn forward(
    mut w: xenvt_ring::xenstore::WatchStream,
    path: &'static str,
    dirty: Arc<Dirty>,
    channel_path: String,
) {
    while let Some(ev) = w.next().await {
        {
            let mut g = dirty.lock();
            match domid_of(&ev) {
                Some(id) => {
                    let home = format!("/local/domain/{id}");
                    let rest = &ev[home.len().min(ev.len())..];
                    if rest.is_empty() {
                        // The home itself: perhaps removed.
                        g.rescan = true;
                    } else if rest == "/name"
                        || rest.strip_prefix('/').is_some_and(|r| {
                            r == channel_path
                                || r.strip_prefix(channel_path.as_str())
                                    .is_some_and(|t| t.starts_with('/'))
                        })
                    {
                        g.ids.insert(id);
                    }
                }
                None => {
                    g.rescan = true;
                    // Our client yields the watch's own path when it dropped events;
                    // xenstored also fires it once at registration.
                    g.relist |= ev == path && path.starts_with("/local/domain");
                }
            }
        }
        dirty.notify.notify_one();
    }
    dirty.lock().ended = Some(path.to_owned());
    dirty.notify.notify_one();
}

/// The domain id in `/local/domain/<id>...`, if `path` is there.
fn domid_of(path: &str) -> Option<u16> {
    let rest = path.strip_prefix("/local/domain/")?;
    rest.split('/').next()?.parse().ok()
}

impl<X: Xenstore + Clone> Backend<X> {
    /// A backend; finds its own domain id (to skip it).
    pub async fn new(cfg: Config, platform: Arc<dyn Platform>, xs: Xs<X>) -> Result<Self> {
        let own = match xs.read("domid").await? {
            Some(v) => v.trim().parse().unwrap_or(0),
            None => 0,
        };
        Ok(Self {
            cfg: Arc::new(cfg),
            platform,
            xs,
            own,
            guests: BTreeMap::new(),
            ignored: BTreeSet::new(),
            stats: Arc::default(),
        })
    }

    /// The counters the control endpoint reports.
    pub fn stats(&self) -> Arc<metrics::Registry> {
        self.stats.clone()
    }

    /// Runs until `shutdown` resolves or xenstore fails, then tears every guest down.
    pub async fn run(mut self, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
        let span = info_span!("backend", domid = self.own);
        async move {
            let r = self.watch_loop(shutdown).await;
            self.stop_all().await;
            info!("stopped");
            r
        }
        .instrument(span)
        .await
    }

    async fn watch_loop(&mut self, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
        sockets::prepare_run_dir(&self.cfg.run_dir)?;
        // Dropped (the socket removed, the servers stopped) when this returns.
        let _control = self.start_control().await?;
        let dirty = Arc::new(Dirty::default());
        let mut forwarders = Vec::new();
        for path in ["/local/domain", "@introduceDomain", "@releaseDomain"] {
            let w = self.xs.watch(path).await?;
            forwarders.push(tokio::spawn(forward(
                w,
                path,
                dirty.clone(),
                self.cfg.channel_path.clone(),
            )));
        }
        info!(run_dir = %self.cfg.run_dir.display(), "watching for agents");
        tokio::pin!(shutdown);
        // The xenstore client reports neither a closed connection nor the end of
        // a watch when xenstored goes away; an occasional request (bounded by its
        // deadline) turns that into an error and an exit instead of a backend
        // that silently stops seeing guests.
        let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + XS_PING, XS_PING);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let r = loop {
            tokio::select! {
                _ = ping.tick() => {
                    if let Err(e) = self.xs.read("domid").await {
                        break Err(e.into());
                    }
                }
                () = dirty.notify.notified() => {
                    let relist = dirty.take_relist();
                    let (ids, rescan, ended) = dirty.take();
                    if let Some(p) = ended {
                        break Err(Error::WatchEnded(p));
                    }
                    if relist {
                        self.relist();
                    }
                    if let Err(e) = self.look_again(ids, rescan).await {
                        break Err(e);
                    }
                }
                () = &mut shutdown => break Ok(()),
            }
        };
        for f in forwarders {
            f.abort();
        }
        r
    }

    async fn look_again(&mut self, ids: BTreeSet<u16>, rescan: bool) -> Result<()> {
        if rescan {
            self.rescan().await?;
        }
        for id in ids {
            self.touched(id).await?;
        }
        Ok(())
    }

    /// After lost watch events: every served guest looks at its nodes again, and
    /// domains skipped for their name are considered again (the name may have changed).
    fn relist(&mut self) {
        // Registration fires the same event, before any guest is served.
        if !self.guests.is_empty() {
            info!(
                guests = self.guests.len(),
                "xenstore watch events were lost: looking at every domain again"
            );
        }
        for e in self.guests.values() {
            e.kick.notify_one();
        }
        self.ignored.clear();
    }

    /// Something changed for domain `id`: its agent's nodes, or its name.
    async fn touched(&mut self, id: u16) -> Result<()> {
        if let Some(e) = self.guests.get(&id) {
            e.kick.notify_one();
            return Ok(());
        }
        if self.ignored.contains(&id) {
            return Ok(());
        }
        self.consider(id).await
    }

    /// Lists the domains: starts tasks for new ones, stops those that are gone.
    async fn rescan(&mut self) -> Result<()> {
        let present: BTreeSet<u16> = self
            .xs
            .directory("/local/domain")
            .await?
            .iter()
            .filter_map(|s| s.parse().ok())
            .collect();
        let gone: Vec<u16> = self
            .guests
            .keys()
            .filter(|id| !present.contains(id))
            .copied()
            .collect();
        for id in gone {
            self.stop_guest(id).await;
        }
        self.ignored.retain(|id| present.contains(id));
        for id in present {
            if !self.guests.contains_key(&id) && !self.ignored.contains(&id) {
                self.consider(id).await?;
            }
        }
        Ok(())
    }

    /// Decides whether to serve `id`, and starts its task if so.
    async fn consider(&mut self, id: u16) -> Result<()> {
        if id == self.own {
            self.ignored.insert(id);
            return Ok(());
        }
        let name = match self.xs.read(&format!("/local/domain/{id}/name")).await? {
            Some(n) => n,
            // Not fully introduced yet; a later event brings us back.
            None => return Ok(()),
        };
        if !self.cfg.selects(id, Some(&name)) {
            self.ignored.insert(id);
            return Ok(());
        }
        let (stop_tx, stop_rx) = watch::channel(false);
        let kick = Arc::new(Notify::new());
        let stats = Arc::new(metrics::GuestStats::new(id, &name));
        self.stats.add(stats.clone());
        let g = Guest {
            stats,
            domid: id,
            name: name.clone(),
            cfg: self.cfg.clone(),
            platform: self.platform.clone(),
            xs: self.xs.clone(),
            kick: kick.clone(),
            stop: stop_rx,
        };
        info!(guest = id, name = ?name, "serving guest");
        let task = tokio::spawn(
            g.run()
                .instrument(info_span!("guest", domid = id, name = %name)),
        );
        self.guests.insert(
            id,
            Entry {
                kick,
                stop: stop_tx,
                task,
            },
        );
        Ok(())
    }

    async fn stop_guest(&mut self, id: u16) {
        self.stats.remove(id);
        if let Some(e) = self.guests.remove(&id) {
            info!(guest = id, "guest gone: tearing down");
            let _ = e.stop.send(true);
            if let Err(err) = e.task.await {
                warn!(guest = id, "guest task failed: {err}");
            }
        }
    }

    /// Binds the control socket (and the TCP address, if any) and serves them.
    async fn start_control(&self) -> Result<Control> {
        let (l, file) = xenvt_ring::control::bind_unix(&self.cfg.control).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("control socket {}: {e}", self.cfg.control.display()),
            )
        })?;
        let h: Arc<dyn xenvt_ring::control::Handler> = self.stats.clone();
        let mut tasks = vec![tokio::spawn(
            xenvt_ring::control::serve_unix(l, h.clone()).in_current_span(),
        )];
        info!(socket = %self.cfg.control.display(), "control endpoint");
        if let Some(a) = self.cfg.control_tcp {
            let l = tokio::net::TcpListener::bind(a)
                .await
                .map_err(|e| std::io::Error::new(e.kind(), format!("control address {a}: {e}")))?;
            info!(addr = %l.local_addr()?, "control endpoint");
            tasks.push(tokio::spawn(
                xenvt_ring::control::serve_tcp(l, h).in_current_span(),
            ));
        }
        Ok(Control { _file: file, tasks })
    }

    async fn stop_all(&mut self) {
        let ids: Vec<u16> = self.guests.keys().copied().collect();
        for e in self.guests.values() {
            let _ = e.stop.send(true);
        }
        for id in ids {
            self.stop_guest(id).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xenvt_ring::xenstore::MemStore;

    #[test]
    fn domain_ids_from_paths() {
        assert_eq!(domid_of("/local/domain/7/data/xenvt/state"), Some(7));
        assert_eq!(domid_of("/local/domain/7"), Some(7));
        assert_eq!(domid_of("/local/domain"), None);
        assert_eq!(domid_of("/local/domain/x/y"), None);
        assert_eq!(domid_of("/local/domain/70000"), None);
        assert_eq!(domid_of("@releaseDomain"), None);
    }

    #[tokio::test]
    async fn watch_events_are_coalesced_into_flags() {
        let m = MemStore::new();
        let w = m.watch("/local/domain").await.unwrap();
        let dirty = Arc::new(Dirty::default());
        let f = tokio::spawn(forward(
            w,
            "/local/domain",
            dirty.clone(),
            "data/xenvt".into(),
        ));
        // The registration event (the watch's own path, which our client also yields
        // after losing events) asks for a full scan and a look at every guest.
        dirty.notify.notified().await;
        assert!(dirty.take_relist());
        assert_eq!(dirty.take(), (BTreeSet::new(), true, None));
        // A guest hammering its own nodes outside the agent's path is ignored;
        // writes to the agent's path mark that domain, however many there are.
        for i in 0..100 {
            m.write("/local/domain/4/data/other", &i.to_string())
                .await
                .unwrap();
            m.write("/local/domain/4/data/xenvt/state", "x")
                .await
                .unwrap();
            m.write("/local/domain/4/data/xenvtx", "x").await.unwrap();
        }
        m.write("/local/domain/5/name", "vm5").await.unwrap();
        m.write("/local/domain/6", "").await.unwrap();
        loop {
            dirty.notify.notified().await;
            let g = dirty.lock();
            if g.rescan && g.ids.contains(&5) {
                break;
            }
        }
        let (ids, rescan, ended) = dirty.take();
        assert_eq!(ids, BTreeSet::from([4, 5]));
        assert!(rescan, "a domain's home changed");
        assert!(
            !dirty.take_relist(),
            "changes below the root are not a loss"
        );
        assert_eq!(ended, None);
        f.abort();
    }
}
