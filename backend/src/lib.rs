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
use std::path::PathBuf;
use std::sync::Arc;

use futures::StreamExt;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tracing::{info, info_span, warn, Instrument};
use xenvt_ring::xenstore::Xenstore;
use xenvt_ring::Platform;

pub mod config;
pub mod guest;
pub mod ratelimit;
pub mod sockets;
pub mod xs;

pub use config::Config;
use guest::Guest;
use xs::Xs;

/// Everything that stops the backend.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is invalid.
    #[error("{}: {problem}", file.as_ref().map_or("built-in defaults".into(), |f| f.display().to_string()))]
    Config {
        /// The file, if the config came from one.
        file: Option<PathBuf>,
        /// What is wrong.
        problem: String,
    },
    /// The configuration file cannot be read.
    #[error("cannot read {}: {source}", file.display())]
    ConfigRead {
        /// The file.
        file: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A channel, mux, platform or xenstore failure.
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
        })
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
        let mut local = self.xs.watch("/local/domain").await?;
        let mut intro = self.xs.watch("@introduceDomain").await?;
        let mut release = self.xs.watch("@releaseDomain").await?;
        info!(run_dir = %self.cfg.run_dir.display(), "watching for agents");
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                ev = local.next() => {
                    let ev = ev.ok_or_else(|| Error::WatchEnded("/local/domain".into()))?;
                    match domid_of(&ev) {
                        Some(id) => self.touched(id, &ev).await?,
                        None => self.rescan().await?,
                    }
                }
                ev = intro.next() => {
                    ev.ok_or_else(|| Error::WatchEnded("@introduceDomain".into()))?;
                    self.rescan().await?;
                }
                ev = release.next() => {
                    ev.ok_or_else(|| Error::WatchEnded("@releaseDomain".into()))?;
                    self.rescan().await?;
                }
                () = &mut shutdown => return Ok(()),
            }
        }
    }

    /// Something changed under `/local/domain/<id>`.
    async fn touched(&mut self, id: u16, path: &str) -> Result<()> {
        if let Some(e) = self.guests.get(&id) {
            let base = format!("/local/domain/{id}/{}", self.cfg.channel_path);
            let home = format!("/local/domain/{id}");
            if path.starts_with(&base) || path == home {
                e.kick.notify_one();
            }
            if path == home {
                // Possibly removed: only a rescan can tell.
                self.rescan().await?;
            }
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
        let g = Guest {
            domid: id,
            name: name.clone(),
            cfg: self.cfg.clone(),
            platform: self.platform.clone(),
            xs: self.xs.clone(),
            kick: kick.clone(),
            stop: stop_rx,
        };
        info!(guest = id, name = ?name, "serving guest");
        let task = tokio::spawn(g.run().instrument(info_span!("guest", domid = id)));
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
        if let Some(e) = self.guests.remove(&id) {
            info!(guest = id, "guest gone: tearing down");
            let _ = e.stop.send(true);
            if let Err(err) = e.task.await {
                warn!(guest = id, "guest task failed: {err}");
            }
        }
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
