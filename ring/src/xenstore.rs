//! The xenstore seam.
//!
//! Real Xen and the simulated host both speak the xenstore wire protocol, so both
//! use [`XsClient`] (the `xenstore-rs` crate, which honours `XENSTORED_PATH` and
//! falls back to `/dev/xen/xenbus`). [`MemStore`] is an in-process store for unit
//! tests of code that publishes or watches nodes.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use xenstore_rs::{AsyncWatch, AsyncXs};

use crate::{Error, Result};

/// A stream of watch events: each item is the path that fired. The first event
/// fires at registration, as xenstored does.
///
/// Events may be merged or lost (xenstored itself merges identical queued
/// events and may drop some; [`XsClient`] merges too), so a consumer treats
/// an event as "look again", never as a count. When [`XsClient`] had to drop
/// events it yields the watched path itself: re-list everything below it.
pub type WatchStream = Pin<Box<dyn Stream<Item = String> + Send>>;

/// The xenstore operations the daemons need.
pub trait Xenstore: Send + Sync + 'static {
    /// Reads a node; `Ok(None)` when it does not exist.
    fn read(&self, path: &str) -> impl Future<Output = Result<Option<String>>> + Send;
    /// Writes a node, creating its parents.
    fn write(&self, path: &str, value: &str) -> impl Future<Output = Result<()>> + Send;
    /// Removes a node and its children; removing a missing node is not an error.
    fn rm(&self, path: &str) -> impl Future<Output = Result<()>> + Send;
    /// Lists a node's children; empty when it does not exist.
    fn directory(&self, path: &str) -> impl Future<Output = Result<Vec<String>>> + Send;
    /// Watches a node and everything below it (or a special `@...` path).
    fn watch(&self, path: &str) -> impl Future<Output = Result<WatchStream>> + Send;
}

fn xs_err(op: &'static str, path: &str, source: io::Error) -> Error {
    Error::Xenstore {
        op,
        path: path.to_owned(),
        source,
    }
}

/// A xenstore client over the xenstored socket (`XENSTORED_PATH`) or `/dev/xen/xenbus`.
///
/// Every request has a deadline: `xenstore-rs` 0.8 never completes a request sent
/// after xenstored has closed the connection, and a daemon must not hang on that.
#[derive(Clone, Debug)]
pub struct XsClient {
    inner: xenstore_rs::tokio::XsTokio,
    deadline: Duration,
}

/// How long a single xenstore request may take before it counts as failed.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(30);

impl XsClient {
    /// Connects the way libxenstore does: the socket first, then the device.
    pub async fn connect() -> Result<Self> {
        let inner = xenstore_rs::tokio::XsTokio::new()
            .await
            .map_err(|e| xs_err("connect", "", e))?;
        Ok(Self {
            inner,
            deadline: DEFAULT_DEADLINE,
        })
    }

    /// The same client with another per-request deadline.
    pub fn with_deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    async fn timed<T>(
        &self,
        op: &'static str,
        path: &str,
        f: impl Future<Output = io::Result<T>>,
    ) -> Result<io::Result<T>> {
        within(self.deadline, op, path, f).await
    }
}

/// `f`'s output, or a xenstore error for `op` on `path` once `deadline` has passed.
async fn within<T>(
    deadline: Duration,
    op: &'static str,
    path: &str,
    f: impl Future<Output = T>,
) -> Result<T> {
    tokio::time::timeout(deadline, f).await.map_err(|_| {
        xs_err(
            op,
            path,
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no answer from xenstored in {deadline:?}"),
            ),
        )
    })
}

impl Xenstore for XsClient {
    async fn read(&self, path: &str) -> Result<Option<String>> {
        match self.timed("read", path, self.inner.read(path)).await? {
            Ok(v) => Ok(Some(v.into())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(xs_err("read", path, e)),
        }
    }

    async fn write(&self, path: &str, value: &str) -> Result<()> {
        self.timed("write", path, self.inner.write(path, value))
            .await?
            .map_err(|e| xs_err("write", path, e))
    }

    async fn rm(&self, path: &str) -> Result<()> {
        match self.timed("rm", path, self.inner.rm(path)).await? {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(xs_err("rm", path, e)),
        }
    }

    async fn directory(&self, path: &str) -> Result<Vec<String>> {
        match self
            .timed("directory", path, self.inner.directory(path))
            .await?
        {
            Ok(v) => Ok(v.into_iter().map(String::from).collect()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(xs_err("directory", path, e)),
        }
    }

    async fn watch(&self, path: &str) -> Result<WatchStream> {
        let w = self
            .timed("watch", path, self.inner.watch(path))
            .await?
            .map_err(|e| xs_err("watch", path, e))?;
        Ok(Box::pin(Drained::spawn(
            w.map(String::from),
            path.to_owned(),
            PENDING_MAX,
        )))
    }
}

/// Distinct paths a watch holds for a slow consumer before it gives up on
/// them and asks for a re-list instead.
pub const PENDING_MAX: usize = 1024;

/// A watch drained by its own task into a small merged set.
///
/// `xenstore-rs` hands every event of a connection, and every reply, through
/// one task that waits whenever a watch's 8-slot channel is full: one
/// consumer that is slow for a moment stalls the whole connection, replies
/// included, while xenstored queues more for it. Draining at once into a set
/// of distinct paths keeps the connection moving whatever the consumer does,
/// in bounded memory.
struct Drained {
    shared: Arc<Mutex<Pending>>,
    task: tokio::task::JoinHandle<()>,
    /// The watched path, yielded after a loss.
    root: String,
}

struct Pending {
    /// Distinct paths in arrival order.
    order: std::collections::VecDeque<String>,
    set: std::collections::HashSet<String>,
    /// Events were dropped: the next item is the watched path.
    lost: bool,
    ended: bool,
    waker: Option<std::task::Waker>,
}

impl Pending {
    fn lock(m: &Mutex<Pending>) -> std::sync::MutexGuard<'_, Pending> {
        m.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wake(&mut self) {
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }
}

impl Drained {
    fn spawn(
        mut inner: impl Stream<Item = String> + Send + Unpin + 'static,
        root: String,
        max: usize,
    ) -> Self {
        let shared = Arc::new(Mutex::new(Pending {
            order: Default::default(),
            set: Default::default(),
            lost: false,
            ended: false,
            waker: None,
        }));
        let sh = shared.clone();
        let root2 = root.clone();
        let task = tokio::spawn(async move {
            let root = root2;
            let mut lost_count = 0u64;
            while let Some(p) = inner.next().await {
                let mut g = Pending::lock(&sh);
                if g.lost || g.set.contains(&p) {
                    // Already covered by a queued event or the re-list.
                } else if g.set.len() >= max {
                    g.order.clear();
                    g.set.clear();
                    g.lost = true;
                    lost_count += 1;
                    if lost_count == 1 || lost_count.is_power_of_two() {
                        tracing::warn!(
                            watch = %root.escape_debug(),
                            times = lost_count,
                            "watch consumer fell behind {max} distinct events: it will re-list"
                        );
                    }
                } else {
                    g.set.insert(p.clone());
                    g.order.push_back(p);
                }
                g.wake();
            }
            let mut g = Pending::lock(&sh);
            g.ended = true;
            g.wake();
        });
        Drained { shared, task, root }
    }
}

impl Stream for Drained {
    type Item = String;

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<String>> {
        use std::task::Poll;
        let mut g = Pending::lock(&self.shared);
        if g.lost {
            g.lost = false;
            return Poll::Ready(Some(self.root.clone()));
        }
        if let Some(p) = g.order.pop_front() {
            g.set.remove(&p);
            return Poll::Ready(Some(p));
        }
        if g.ended {
            return Poll::Ready(None);
        }
        g.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for Drained {
    fn drop(&mut self) {
        // Dropping the inner watch (with the task) unregisters it.
        self.task.abort();
    }
}

/// How long the agent and the backend wait for one xenstore request: a dead
/// xenstored becomes an error (and a restart by the service manager), not a hang.
pub const XS_TIMEOUT: Duration = Duration::from_secs(10);

/// Any [`Xenstore`] with a deadline on every request, whatever it is: the daemons
/// run over [`XsClient`] and their tests over [`MemStore`] or a simulated host,
/// and none of them may wait forever on a store that stopped answering.
#[derive(Clone, Debug)]
pub struct Xs<X> {
    inner: X,
    timeout: Duration,
}

impl Xs<XsClient> {
    /// Connects to xenstored (see [`XsClient::connect`]) within [`XS_TIMEOUT`].
    pub async fn connect() -> Result<Self> {
        let client = within(XS_TIMEOUT, "connect", "", XsClient::connect()).await??;
        Ok(Self::new(client))
    }
}

impl<X: Xenstore> Xs<X> {
    /// Wraps `inner` with [`XS_TIMEOUT`] per request.
    pub fn new(inner: X) -> Self {
        Self::with_timeout(inner, XS_TIMEOUT)
    }

    /// Wraps `inner` with `timeout` per request.
    pub fn with_timeout(inner: X, timeout: Duration) -> Self {
        Self { inner, timeout }
    }

    /// The wrapped client, for calls that take one (the channel rendezvous).
    pub fn inner(&self) -> &X {
        &self.inner
    }
}

impl<X: Xenstore> Xenstore for Xs<X> {
    async fn read(&self, path: &str) -> Result<Option<String>> {
        within(self.timeout, "read", path, self.inner.read(path)).await?
    }

    async fn write(&self, path: &str, value: &str) -> Result<()> {
        within(self.timeout, "write", path, self.inner.write(path, value)).await?
    }

    async fn rm(&self, path: &str) -> Result<()> {
        within(self.timeout, "rm", path, self.inner.rm(path)).await?
    }

    async fn directory(&self, path: &str) -> Result<Vec<String>> {
        within(self.timeout, "directory", path, self.inner.directory(path)).await?
    }

    /// The registration is bounded; the events are not.
    async fn watch(&self, path: &str) -> Result<WatchStream> {
        within(self.timeout, "watch", path, self.inner.watch(path)).await?
    }
}

/// An in-process store for tests: absolute paths only, watches fire on any change
/// at or below the watched path. Not a xenstored model (no permissions, no
/// transactions): the simulated host has the real one.
#[derive(Clone, Default)]
pub struct MemStore {
    inner: Arc<Mutex<MemInner>>,
}

#[derive(Default)]
struct MemInner {
    nodes: BTreeMap<String, String>,
    watches: Vec<(String, mpsc::UnboundedSender<String>)>,
}

fn under(path: &str, watched: &str) -> bool {
    path == watched
        || (path.starts_with(watched) && path.as_bytes().get(watched.len()) == Some(&b'/'))
}

impl MemInner {
    /// Fires the watches at or above `path`; with `removed`, also those below it
    /// (with their own path, as xenstored reports a watched child of a removed node).
    fn fire(&mut self, path: &str, removed: bool) {
        self.watches.retain(|(w, tx)| {
            if under(path, w) {
                tx.send(path.to_owned()).is_ok()
            } else if removed && under(w, path) {
                tx.send(w.clone()).is_ok()
            } else {
                true
            }
        });
    }
}

impl MemStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Xenstore for MemStore {
    async fn read(&self, path: &str) -> Result<Option<String>> {
        Ok(self.lock().nodes.get(path).cloned())
    }

    async fn write(&self, path: &str, value: &str) -> Result<()> {
        let mut g = self.lock();
        g.nodes.insert(path.to_owned(), value.to_owned());
        g.fire(path, false);
        Ok(())
    }

    async fn rm(&self, path: &str) -> Result<()> {
        let mut g = self.lock();
        let doomed: Vec<String> = g.nodes.keys().filter(|k| under(k, path)).cloned().collect();
        for k in &doomed {
            g.nodes.remove(k);
        }
        g.fire(path, true);
        Ok(())
    }

    async fn directory(&self, path: &str) -> Result<Vec<String>> {
        let g = self.lock();
        let prefix = format!("{}/", path.trim_end_matches('/'));
        let mut out: Vec<String> = g
            .nodes
            .keys()
            .filter_map(|k| k.strip_prefix(&prefix))
            .map(|rest| rest.split('/').next().unwrap_or(rest).to_owned())
            .collect();
        out.dedup();
        Ok(out)
    }

    async fn watch(&self, path: &str) -> Result<WatchStream> {
        let (tx, rx) = mpsc::unbounded_channel();
        // Like xenstored, a new watch fires once straight away.
        let _ = tx.send(path.to_owned());
        self.lock().watches.push((path.to_owned(), tx));
        Ok(Box::pin(stream_from(rx)))
    }
}

fn stream_from(mut rx: mpsc::UnboundedReceiver<String>) -> impl Stream<Item = String> + Send {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store that never answers, as a xenstored that accepts and then hangs.
    struct Silent;

    impl Xenstore for Silent {
        async fn read(&self, _: &str) -> Result<Option<String>> {
            std::future::pending().await
        }
        async fn write(&self, _: &str, _: &str) -> Result<()> {
            std::future::pending().await
        }
        async fn rm(&self, _: &str) -> Result<()> {
            std::future::pending().await
        }
        async fn directory(&self, _: &str) -> Result<Vec<String>> {
            std::future::pending().await
        }
        async fn watch(&self, _: &str) -> Result<WatchStream> {
            std::future::pending().await
        }
    }

    #[tokio::test]
    async fn xs_turns_a_silent_store_into_errors_that_name_the_request() {
        let xs = Xs::with_timeout(Silent, Duration::from_millis(20));
        let e = xs.read("/local/domain/3/name").await.unwrap_err();
        match &e {
            Error::Xenstore { op, path, source } => {
                assert_eq!((*op, path.as_str()), ("read", "/local/domain/3/name"));
                assert_eq!(source.kind(), io::ErrorKind::TimedOut);
            }
            other => panic!("{other:?}"),
        }
        assert!(e.to_string().contains("no answer from xenstored"), "{e}");
        assert!(xs.write("/x", "1").await.is_err());
        assert!(xs.rm("/x").await.is_err());
        assert!(xs.directory("/x").await.is_err());
        assert!(xs.watch("/x").await.is_err());
    }

    #[tokio::test]
    async fn xs_passes_a_live_store_through() {
        let xs = Xs::new(MemStore::new());
        xs.write("/a/b", "1").await.unwrap();
        assert_eq!(xs.read("/a/b").await.unwrap().as_deref(), Some("1"));
        assert_eq!(xs.directory("/a").await.unwrap(), vec!["b"]);
        xs.rm("/a").await.unwrap();
        assert_eq!(xs.inner().read("/a/b").await.unwrap(), None);
    }

    #[tokio::test]
    async fn memstore_read_write_watch() {
        let s = MemStore::new();
        let mut w = s.watch("/local/domain/1/data").await.unwrap();
        assert_eq!(w.next().await.as_deref(), Some("/local/domain/1/data"));
        s.write("/local/domain/1/data/x", "1").await.unwrap();
        s.write("/local/domain/2/data/x", "1").await.unwrap();
        assert_eq!(w.next().await.as_deref(), Some("/local/domain/1/data/x"));
        assert_eq!(
            s.read("/local/domain/1/data/x").await.unwrap().as_deref(),
            Some("1")
        );
        assert_eq!(s.directory("/local/domain").await.unwrap(), vec!["1", "2"]);
        s.rm("/local/domain/1").await.unwrap();
        assert_eq!(s.read("/local/domain/1/data/x").await.unwrap(), None);
        assert_eq!(w.next().await.as_deref(), Some("/local/domain/1/data"));
    }

    /// A source like `xenstore-rs`'s: an 8-slot channel whose sender waits
    /// when it is full.
    fn source() -> (
        mpsc::Sender<String>,
        impl Stream<Item = String> + Send + Unpin,
    ) {
        let (tx, mut rx) = mpsc::channel::<String>(8);
        (
            tx,
            Box::pin(futures::stream::poll_fn(move |cx| rx.poll_recv(cx))),
        )
    }

    /// Returns once the drain task has taken everything sent so far: all 8
    /// slots are free again.
    async fn drained(tx: &mpsc::Sender<String>) {
        drop(tx.reserve_many(8).await.unwrap());
    }

    #[tokio::test]
    async fn drained_watch_never_holds_up_the_source() {
        let (tx, rx) = source();
        let mut w = Drained::spawn(rx, "/w".into(), 16);
        // Far more events than the channel holds, nobody polling: the sends
        // complete because the drain task takes them at once.
        for i in 0..1000 {
            tx.send(format!("/w/{}", i % 10)).await.unwrap();
        }
        drained(&tx).await;
        drop(tx);
        // Ten distinct paths, merged, in arrival order.
        let got: Vec<String> = w.by_ref().collect().await;
        let want: Vec<String> = (0..10).map(|i| format!("/w/{i}")).collect();
        assert_eq!(got, want);
    }

    #[tokio::test]
    async fn drained_watch_asks_for_a_relist_after_a_loss() {
        let (tx, rx) = source();
        let mut w = Drained::spawn(rx, "/w".into(), 4);
        for i in 0..100 {
            tx.send(format!("/w/{i}")).await.unwrap();
        }
        drained(&tx).await;
        // The loss is reported by the watched path; what came before is
        // covered by it.
        assert_eq!(w.next().await.as_deref(), Some("/w"));
        tx.send("/w/after".into()).await.unwrap();
        assert_eq!(w.next().await.as_deref(), Some("/w/after"));
        drop(tx);
        assert_eq!(w.next().await, None);
    }

    #[tokio::test]
    async fn dropping_a_drained_watch_drops_the_source() {
        let (tx, rx) = source();
        let w = Drained::spawn(rx, "/w".into(), 4);
        drop(w);
        // The drain task was stopped and the source dropped with it.
        tx.closed().await;
    }
}
