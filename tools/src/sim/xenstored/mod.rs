//! The simulated host's xenstored: the real xenstore wire protocol on unix
//! sockets, modelled on Xen 4.17's C xenstored (permissions, watches,
//! transactions, quotas, `@introduceDomain`/`@releaseDomain`).
//!
//! Each listening socket stands for one domain: every connection accepted on
//! it acts as that domain, domain 0 being privileged. Clients find the socket
//! through `XENSTORED_PATH`, which both libxenstore (the `xenstore-*` tools)
//! and the `xenstore-rs` crate honour.
//!
//! Output a client has not read yet follows the C daemon's rules (see
//! `conn`): identical queued watch events merge; an unprivileged domain's
//! events are dropped over its quota or after a timeout, and its requests
//! wait while it is over quota or has too many outstanding; nobody is
//! disconnected for reading slowly, except past a large per-connection bound
//! that only a stuck dom0 client reaches (real xenstored would let that
//! queue grow).
//!
//! Differences from the C daemon, on purpose: the memory quota counts only
//! queued output (not nodes, watches or transactions); no request-rate
//! limiting (the number of connections per guest is bounded instead); no
//! SET_TARGET or CONTROL; and perm entries naming a dead domain are marked
//! ignored at release rather than lazily by generation.

mod conn;
mod ops;
mod perms;
mod tree;
mod txn;
mod watch;
pub mod wire;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::Serialize;
use tokio::net::UnixListener;

use ops::State;

/// Limits the daemon enforces on unprivileged domains. `Default` gives the
/// C xenstored's defaults.
#[derive(Clone, Debug)]
pub struct XenstoredConfig {
    /// Nodes a domain may own (`-E`, default 1000).
    pub nodes_per_domain: usize,
    /// Watches a domain may hold (`-W`, default 128).
    pub watches_per_domain: usize,
    /// Bytes a node record may take: header, perms, value, child names
    /// (`-S`, default 2048).
    pub node_size_max: usize,
    /// Transactions a connection may have open (`-t`, default 10).
    pub transactions_per_conn: usize,
    /// Permission entries per node (`-A`, default 5).
    pub perms_per_node: usize,
    /// Nodes a transaction may touch (`-Q transaction-nodes`, default 1024).
    pub transaction_nodes_max: usize,
    /// Longest path below a domain's home (`-M`, default 2048).
    pub path_len_max: usize,
    /// Hard quota of an unprivileged domain's queued output (replies and
    /// events on all its connections): events over it are dropped and its
    /// requests wait (`-Q memory`, default 2.5 MiB; in C it also counts the
    /// domain's nodes, watches and transactions).
    pub domain_quota: usize,
    /// How long an unprivileged domain's watch event may wait to be read
    /// before it is dropped (`-w`, default 20 s); `None` never.
    pub watch_event_timeout: Option<Duration>,
    /// Requests of an unprivileged domain whose reply or watch events are
    /// still queued, past which its requests are not read (`-Q
    /// outstanding`, default 20).
    pub outstanding_max: usize,
    /// Bytes queued for one connection past which it is closed. Not in the
    /// C daemon (dom0's queue grows there): the simulation's bound against a
    /// stuck dom0 client, far above what a live one needs.
    pub out_queue_max: usize,
    /// Connections an unprivileged domain may hold at once (a real domain
    /// has one ring; here a guest is a set of processes). Extra ones are
    /// closed on accept.
    pub conns_per_domain: usize,
}

impl Default for XenstoredConfig {
    fn default() -> Self {
        XenstoredConfig {
            nodes_per_domain: 1000,
            watches_per_domain: 128,
            node_size_max: 2048,
            transactions_per_conn: 10,
            perms_per_node: 5,
            transaction_nodes_max: 1024,
            path_len_max: wire::REL_PATH_MAX,
            domain_quota: 2 * 1024 * 1024 + 512 * 1024,
            watch_event_timeout: Some(Duration::from_secs(20)),
            outstanding_max: 20,
            out_queue_max: 16 * 1024 * 1024,
            conns_per_domain: 64,
        }
    }
}

/// Errors of the xenstored control API.
#[derive(Debug, thiserror::Error)]
pub enum XenstoredError {
    /// Domain ids 0 and the reserved range cannot be introduced or released.
    #[error("invalid domain id {0}")]
    InvalidDomain(u32),
    /// The domain was already introduced.
    #[error("domain {0} is already introduced")]
    AlreadyIntroduced(u32),
    /// The domain is not known.
    #[error("no such domain {0}")]
    NoSuchDomain(u32),
    /// The store refused the toolstack's writes.
    #[error("store error {0}")]
    Store(&'static str),
}

/// Counters for one domain.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct DomainStats {
    pub introduced: bool,
    pub nodes: usize,
    pub watches: usize,
    pub transactions: usize,
    pub connections: usize,
    /// Bytes of replies and events queued for its connections.
    pub queued_bytes: usize,
    /// Watch events dropped (over quota or timed out) and merged into an
    /// identical queued one, since the domain was first seen.
    pub events_dropped: u64,
    pub events_merged: u64,
    /// Its requests whose reply or events are still queued.
    pub outstanding: usize,
}

/// Counters for status output and leak checks.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct XenstoredStats {
    /// Nodes in the store.
    pub nodes: usize,
    /// Per domain id (every domain that is known or owns nodes).
    pub domains: BTreeMap<u32, DomainStats>,
}

/// First domain id Xen reserves (`DOMID_FIRST_RESERVED`).
const DOMID_FIRST_RESERVED: u32 = 0x7ff0;

/// The simulated xenstored. Cheap to clone; clones share one store.
#[derive(Clone)]
pub struct Xenstored {
    inner: Arc<Mutex<State>>,
}

impl Xenstored {
    /// A store laid out as on a freshly booted dom0: `/tool/xenstored`,
    /// `/local/domain/0` with `name` "Domain-0" and `domid` "0", `/vm`, `/libxl`.
    pub fn new(cfg: XenstoredConfig) -> Self {
        Xenstored {
            inner: Arc::new(Mutex::new(State::new(cfg))),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Serves every connection accepted on `listener`; each connection acts
    /// as domain `domid` (0 is privileged). Returns when the listener fails
    /// or the domain is released.
    pub async fn serve(&self, listener: UnixListener, domid: u32) -> std::io::Result<()> {
        let mut released = self.lock().ensure_domain(domid);
        loop {
            tokio::select! {
                r = listener.accept() => {
                    let (stream, _) = r?;
                    tokio::spawn(conn::run(self.clone(), stream, domid));
                }
                _ = released.wait_for(|r| *r) => return Ok(()),
            }
        }
    }

    /// What a toolstack does when it creates a domain: `/local/domain/<id>`
    /// with `name`, `domid`, `vm` and the guest-writable subtrees (`data`,
    /// `device/suspend/event-channel`, `control/shutdown`...) with libxl's
    /// permissions, `/vm/<uuid>` and `/libxl/<id>`; then `@introduceDomain`.
    pub fn introduce_domain(&self, domid: u32, name: &str) -> Result<(), XenstoredError> {
        if domid == 0 || domid >= DOMID_FIRST_RESERVED {
            return Err(XenstoredError::InvalidDomain(domid));
        }
        let mut s = self.lock();
        if s.domains.get(&domid).is_some_and(|d| d.introduced) {
            return Err(XenstoredError::AlreadyIntroduced(domid));
        }
        s.introduce_domain(domid, name)
            .map_err(|e| XenstoredError::Store(e.as_str()))
    }

    /// The domain died: its home and `/libxl/<id>` are removed, its
    /// connections closed (with their watches and transactions), nodes it
    /// still owns deleted, and `@releaseDomain` fired.
    pub fn release_domain(&self, domid: u32) -> Result<(), XenstoredError> {
        if domid == 0 || domid >= DOMID_FIRST_RESERVED {
            return Err(XenstoredError::InvalidDomain(domid));
        }
        let mut s = self.lock();
        if !s.domains.contains_key(&domid) {
            return Err(XenstoredError::NoSuchDomain(domid));
        }
        s.release(domid, true);
        Ok(())
    }

    /// A write by a dom0 tool: `path` (absolute) is created or updated as domain
    /// 0, readable by `reader` as well; watches fire as for a client's write.
    pub fn dom0_write(
        &self,
        path: &str,
        value: &str,
        reader: Option<u32>,
    ) -> Result<(), XenstoredError> {
        self.lock()
            .dom0_write(path, value.as_bytes(), reader)
            .map_err(|e| XenstoredError::Store(e.as_str()))
    }

    /// Pids of the processes connected as `domid` (from SO_PEERCRED).
    pub fn pids(&self, domid: u32) -> Vec<i32> {
        let s = self.lock();
        let mut v: Vec<i32> = s
            .conns
            .values()
            .filter(|c| c.domid == domid)
            .filter_map(|c| c.pid)
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Current counters.
    pub fn stats(&self) -> XenstoredStats {
        let s = self.lock();
        let mut domains: BTreeMap<u32, DomainStats> = BTreeMap::new();
        for (&d, dom) in &s.domains {
            let e = domains.entry(d).or_default();
            e.introduced = dom.introduced;
            e.queued_bytes = dom.usage.bytes();
            e.events_dropped = dom.usage.dropped.load(Ordering::Relaxed);
            e.events_merged = dom.usage.merged.load(Ordering::Relaxed);
            e.outstanding = dom.usage.outstanding();
        }
        for (&d, &n) in s.tree.owner_counts() {
            domains.entry(d).or_default().nodes = n;
        }
        for c in s.conns.values() {
            let e = domains.entry(c.domid).or_default();
            e.connections += 1;
            e.watches += c.watches.len();
            e.transactions += c.txns.len();
        }
        XenstoredStats {
            nodes: s.tree.len(),
            domains,
        }
    }

    fn register_conn(&self, domid: u32, pid: Option<i32>) -> Option<(u64, Arc<conn::Outbox>)> {
        self.lock().add_conn(domid, pid)
    }

    fn handle(&self, id: u64, frame: wire::Frame) {
        self.lock().handle(id, frame);
    }

    fn drop_conn(&self, id: u64) {
        self.lock().drop_conn(id);
    }

    fn bad_input(&self, id: u64, domid: u32, what: std::fmt::Arguments<'_>) {
        self.lock().bad_input(id, domid, what);
    }
}
