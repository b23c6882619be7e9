//! Xenstore calls with a deadline.
//!
//! The xenstore client never completes a request once xenstored has closed its
//! socket, so every request the backend depends on is bounded in time: a dead
//! xenstored becomes an error (and a restart by the service manager), not a hang.

use std::future::Future;
use std::time::Duration;

use xenvt_ring::xenstore::{WatchStream, Xenstore};

use crate::{Error, Result};

/// How long one xenstore request may take.
pub const XS_TIMEOUT: Duration = Duration::from_secs(10);

/// A xenstore client whose every request has a deadline.
#[derive(Clone, Debug)]
pub struct Xs<X> {
    inner: X,
    timeout: Duration,
}

async fn bounded<T>(
    timeout: Duration,
    op: &'static str,
    path: &str,
    f: impl Future<Output = xenvt_ring::Result<T>>,
) -> Result<T> {
    match tokio::time::timeout(timeout, f).await {
        Ok(r) => r.map_err(Error::from),
        Err(_) => Err(Error::XsTimeout {
            op,
            path: path.to_owned(),
        }),
    }
}

impl<X: Xenstore> Xs<X> {
    /// Wraps `inner` with the default deadline.
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

    /// Reads a node; `None` when missing.
    pub async fn read(&self, path: &str) -> Result<Option<String>> {
        bounded(self.timeout, "read", path, self.inner.read(path)).await
    }

    /// Writes a node.
    pub async fn write(&self, path: &str, value: &str) -> Result<()> {
        bounded(self.timeout, "write", path, self.inner.write(path, value)).await
    }

    /// Removes a node and its children.
    pub async fn rm(&self, path: &str) -> Result<()> {
        bounded(self.timeout, "rm", path, self.inner.rm(path)).await
    }

    /// Registers a watch (the registration is bounded; the events are not).
    pub async fn watch(&self, path: &str) -> Result<WatchStream> {
        bounded(self.timeout, "watch", path, self.inner.watch(path)).await
    }
}

impl<X: Xenstore> Xs<X> {
    /// Lists a node's children.
    pub async fn directory(&self, path: &str) -> Result<Vec<String>> {
        bounded(self.timeout, "directory", path, self.inner.directory(path)).await
    }
}
