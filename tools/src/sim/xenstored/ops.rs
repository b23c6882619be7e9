//! The daemon's state and the request handlers.
//!
//! Everything runs under one lock, like xenstored's single thread: a request
//! is handled to completion, its reply and the watch events it causes are
//! queued in order, and only then does the next request run.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch as tokio_watch;

use super::conn::{DomainUse, Fate, Outbox, Outstanding, Policy};
use super::perms::{Perms, OWNER, READ, WRITE};
use super::tree::{self, Node, Tree};
use super::txn::{self, Caller, Txn, View};
use super::watch::{Event, Watch};
use super::wire::{self, Errno, Frame, MsgType, PAYLOAD_MAX};
use super::XenstoredConfig;

/// Special watch fired when a domain is introduced.
pub const INTRODUCE_DOMAIN: &str = "@introduceDomain";
/// Special watch fired when a domain goes away.
pub const RELEASE_DOMAIN: &str = "@releaseDomain";

/// One client connection.
pub struct Conn {
    pub domid: u32,
    pub pid: Option<i32>,
    /// The peer's command name at connect time, for log lines.
    pub comm: Option<String>,
    pub watches: Vec<Watch>,
    pub txns: HashMap<u32, Txn>,
    next_txid: u32,
    pub outbox: Arc<Outbox>,
}

impl Conn {
    fn caller(&self) -> Caller {
        Caller {
            domid: self.domid,
            privileged: self.domid == 0,
        }
    }

    /// Who the peer is, for log lines: pid and command name (from
    /// SO_PEERCRED and the kernel), and its watches (the first few paths).
    pub fn describe(&self) -> String {
        let mut paths: Vec<String> = self
            .watches
            .iter()
            .take(4)
            .map(|w| w.path.chars().take(64).collect())
            .collect();
        if self.watches.len() > 4 {
            paths.push("...".into());
        }
        format!(
            "pid {} ({}), {} watches [{}]",
            self.pid.map_or_else(|| "?".into(), |p| p.to_string()),
            self.comm.as_deref().unwrap_or("?").escape_debug(),
            self.watches.len(),
            paths.join(" "),
        )
    }

    fn home(&self) -> String {
        format!("/local/domain/{}", self.domid)
    }

    /// Resolves a client path: relative ones live under the domain's home.
    fn canonical(&self, p: &str) -> String {
        if p.starts_with('/') || p.starts_with('@') {
            p.to_owned()
        } else {
            format!("{}/{}", self.home(), p)
        }
    }
}

/// The command name of process `pid` (at most 16 bytes, kernel-provided).
fn comm_of(pid: i32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/comm")).ok()?;
    let s: String = String::from_utf8_lossy(&raw[..raw.len().min(16)])
        .trim_end()
        .chars()
        .filter(|c| !c.is_control())
        .collect();
    Some(s)
}

/// A domain the daemon knows about.
pub struct Domain {
    pub introduced: bool,
    /// Set to `true` when the domain is released; `serve` stops on it.
    pub released: tokio_watch::Sender<bool>,
    /// Output queued for its connections, against its quota.
    pub usage: Arc<DomainUse>,
}

/// Bounded logging of bad input: a burst per window, then one summary.
struct LogLimit {
    window: Instant,
    count: u32,
    suppressed: u64,
}

const LOG_BURST: u32 = 20;
const LOG_WINDOW: Duration = Duration::from_secs(10);

/// The whole daemon state.
pub struct State {
    pub cfg: XenstoredConfig,
    pub tree: Tree,
    pub conns: HashMap<u64, Conn>,
    next_conn: u64,
    pub domains: BTreeMap<u32, Domain>,
    special: HashMap<&'static str, Perms>,
    log: LogLimit,
    /// Events to queue right after the current reply (a new watch's first
    /// one): connection, frame, whether it is an `@` event.
    after_reply: Vec<(u64, Vec<u8>, bool)>,
    /// The unprivileged request being handled: its reply and the events it
    /// causes hold it outstanding.
    current: Option<Arc<Outstanding>>,
}

type Reply = Result<Vec<u8>, Errno>;

fn ok() -> Reply {
    Ok(b"OK\0".to_vec())
}

fn utf8(b: &[u8]) -> Result<&str, Errno> {
    std::str::from_utf8(b).map_err(|_| Errno::Inval)
}

/// C `atoi` as xenstored uses it for domids: optional blanks and sign, then
/// digits; junk after them is ignored; no digits gives 0.
fn atoi(s: &str) -> u32 {
    let s = s.trim_start_matches([' ', '\t', '\n', '\r', '\x0b', '\x0c']);
    let (neg, digits) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let mut v: i64 = 0;
    for b in digits.bytes().take_while(u8::is_ascii_digit) {
        v = (v * 10 + i64::from(b - b'0')).min(i64::from(u32::MAX));
    }
    let v = if neg { -v } else { v };
    v as i32 as u32
}

impl State {
    pub fn new(cfg: XenstoredConfig) -> Self {
        let mut domains = BTreeMap::new();
        domains.insert(
            0,
            Domain {
                introduced: true,
                released: tokio_watch::channel(false).0,
                usage: Arc::default(),
            },
        );
        let mut special = HashMap::new();
        special.insert(INTRODUCE_DOMAIN, Perms::owned(0, 0));
        special.insert(RELEASE_DOMAIN, Perms::owned(0, 0));
        let mut s = State {
            cfg,
            tree: Tree::new(Perms::owned(0, 0)),
            conns: HashMap::new(),
            next_conn: 1,
            domains,
            special,
            log: LogLimit {
                window: Instant::now(),
                count: 0,
                suppressed: 0,
            },
            after_reply: Vec::new(),
            current: None,
        };
        // What xenstored creates itself, then what xen-init-dom0 writes.
        let dom0 = Caller {
            domid: 0,
            privileged: true,
        };
        let mut v = View::new(&mut s.tree, None, dom0, usize::MAX);
        for (path, value) in [
            ("/tool/xenstored", ""),
            ("/local/domain/0/domid", "0"),
            ("/local/domain/0/name", "Domain-0"),
            ("/vm", ""),
            ("/libxl", ""),
        ] {
            // Cannot fail: dom0 has no quotas and the paths are valid.
            let _ = create_node(&mut v, &s.cfg, path, value.as_bytes());
        }
        s
    }

    /// Logs bad input from a peer, at most a burst per window.
    pub fn bad_input(&mut self, conn: u64, domid: u32, what: std::fmt::Arguments<'_>) {
        self.peer_warn(conn, domid, format_args!("bad input: {what}"));
    }

    /// Logs something a peer caused, at most a burst per window (shared
    /// with bad input).
    fn peer_warn(&mut self, conn: u64, domid: u32, what: std::fmt::Arguments<'_>) {
        let now = Instant::now();
        if now.duration_since(self.log.window) >= LOG_WINDOW {
            if self.log.suppressed > 0 {
                tracing::warn!(
                    suppressed = self.log.suppressed,
                    "xenstored: peer-caused messages suppressed"
                );
            }
            self.log.window = now;
            self.log.count = 0;
            self.log.suppressed = 0;
        }
        if self.log.count < LOG_BURST {
            self.log.count += 1;
            tracing::warn!(conn, domid, "xenstored: {what}");
        } else {
            self.log.suppressed += 1;
        }
    }

    /// Adds a connection for `domid`; `None` if the domain was released.
    pub fn add_conn(&mut self, domid: u32, pid: Option<i32>) -> Option<(u64, Arc<Outbox>)> {
        let d = self.domains.get(&domid)?;
        if *d.released.borrow() {
            return None;
        }
        if domid != 0
            && self.conns.values().filter(|c| c.domid == domid).count() >= self.cfg.conns_per_domain
        {
            self.bad_input(0, domid, format_args!("too many connections, refusing one"));
            return None;
        }
        let usage = d.usage.clone();
        let id = self.next_conn;
        self.next_conn += 1;
        let policy = Policy {
            privileged: domid == 0,
            domain_quota: self.cfg.domain_quota,
            event_timeout: self.cfg.watch_event_timeout,
            outstanding_max: self.cfg.outstanding_max,
            conn_max: self.cfg.out_queue_max,
        };
        let outbox = Outbox::new(policy, usage);
        self.conns.insert(
            id,
            Conn {
                domid,
                pid,
                comm: pid.and_then(comm_of),
                watches: Vec::new(),
                txns: HashMap::new(),
                next_txid: 1,
                outbox: outbox.clone(),
            },
        );
        Some((id, outbox))
    }

    /// Forgets a connection (its watches and transactions go with it).
    pub fn drop_conn(&mut self, id: u64) {
        if let Some(c) = self.conns.remove(&id) {
            c.outbox.close();
        }
    }

    /// Whether a domain exists as far as permissions are concerned.
    fn domain_exists(&self, domid: u32) -> bool {
        self.domains.contains_key(&domid)
    }

    fn watches_of(&self, domid: u32) -> usize {
        self.conns
            .values()
            .filter(|c| c.domid == domid)
            .map(|c| c.watches.len())
            .sum()
    }

    /// Handles one request from connection `id` and queues the reply.
    pub fn handle(&mut self, id: u64, frame: Frame) {
        let Some(conn) = self.conns.get(&id) else {
            return;
        };
        let h = frame.header;
        let domid = conn.domid;
        if domid != 0 {
            self.current = self
                .domains
                .get(&domid)
                .map(|d| Outstanding::new(d.usage.clone()));
        }
        let result = self.dispatch(id, &frame);
        let (ty, payload) = match result {
            Ok((ty, p)) if p.len() <= PAYLOAD_MAX => (ty, p),
            Ok(_) => (MsgType::Error, Errno::TooBig.as_str().as_bytes().to_vec()),
            Err(e) => {
                if matches!(e, Errno::NoSys) {
                    self.bad_input(id, domid, format_args!("unknown message type {}", h.ty));
                }
                (MsgType::Error, e.as_str().as_bytes().to_vec())
            }
        };
        let mut payload = payload;
        if ty == MsgType::Error {
            payload.push(0);
        }
        self.send(id, wire::encode(ty, h.req_id, h.tx_id, &payload), None);
        // A new watch's first event is nobody's request's, as in C.
        self.current = None;
        for (to, f, special) in std::mem::take(&mut self.after_reply) {
            self.send(to, f, Some(special));
        }
    }

    /// Queues a reply (`event` `None`) or a watch event (`Some(special)`) for
    /// a connection; events may be merged or dropped as C xenstored does
    /// (see `conn`). The connection is dropped only past the simulation's
    /// own bound.
    fn send(&mut self, id: u64, frame: Vec<u8>, event: Option<bool>) {
        let Some(c) = self.conns.get(&id) else {
            return;
        };
        let req = self.current.clone();
        let pushed = match event {
            None => c.outbox.push_reply(frame, req),
            Some(special) => c.outbox.push_event(frame, special, req),
        };
        match pushed {
            Ok(Fate::Queued) => {
                if let Some(b) = c.outbox.take_lag_report() {
                    let domid = c.domid;
                    let who = c.describe();
                    self.peer_warn(
                        id,
                        domid,
                        format_args!(
                            "client falling behind: {who}, queued {} bytes in {} frames ({} watch events)",
                            b.bytes, b.frames, b.events
                        ),
                    );
                }
            }
            // Closed: the peer is gone (its reader drops the connection
            // next); nothing overflowed.
            Ok(Fate::Merged | Fate::Closed) => {}
            Ok(Fate::Dropped) => {
                let domid = c.domid;
                let who = c.describe();
                let (bytes, frames) = c.outbox.queued();
                self.peer_warn(
                    id,
                    domid,
                    format_args!(
                        "domain over its quota of queued output, watch event dropped: {who}, this connection has {bytes} bytes in {frames} frames queued"
                    ),
                );
            }
            Err(b) => {
                let c = &self.conns[&id];
                let domid = c.domid;
                let who = c.describe();
                self.peer_warn(
                    id,
                    domid,
                    format_args!(
                        "outgoing queue overflow, disconnecting: {who}, queued {} bytes in {} frames ({} watch events)",
                        b.bytes, b.frames, b.events
                    ),
                );
                self.drop_conn(id);
            }
        }
    }

    fn dispatch(&mut self, id: u64, frame: &Frame) -> Result<(MsgType, Vec<u8>), Errno> {
        use MsgType as T;
        let ty = MsgType::from_u32(frame.header.ty).ok_or(Errno::NoSys)?;
        let conn = self.conns.get(&id).ok_or(Errno::Io)?;
        let privileged = conn.domid == 0;
        let priv_only = matches!(
            ty,
            T::Control | T::Introduce | T::Release | T::IsDomainIntroduced | T::Resume
        );
        if priv_only && !privileged {
            return Err(Errno::Acces);
        }
        let tx = if matches!(ty, T::Watch | T::Unwatch) {
            0
        } else {
            frame.header.tx_id
        };
        if tx != 0 && !conn.txns.contains_key(&tx) {
            return Err(Errno::NoEnt);
        }
        let p = &frame.payload[..];
        let body = match ty {
            T::Read => self.op_read(id, tx, p)?,
            T::Write => self.op_write(id, tx, p)?,
            T::Mkdir => self.op_mkdir(id, tx, p)?,
            T::Rm => self.op_rm(id, tx, p)?,
            T::Directory => self.op_directory(id, tx, p)?,
            T::DirectoryPart => self.op_directory_part(id, tx, p)?,
            T::GetPerms => self.op_get_perms(id, tx, p)?,
            T::SetPerms => self.op_set_perms(id, tx, p)?,
            T::Watch => self.op_watch(id, p)?,
            T::Unwatch => self.op_unwatch(id, p)?,
            T::TransactionStart => self.op_txn_start(id, tx)?,
            T::TransactionEnd => self.op_txn_end(id, tx, p)?,
            T::GetDomainPath => {
                let d = wire::one_arg(p).ok_or(Errno::Inval)?;
                let mut v = format!("/local/domain/{}", atoi(d)).into_bytes();
                v.push(0);
                v
            }
            T::ResetWatches => {
                if let Some(c) = self.conns.get_mut(&id) {
                    c.watches.clear();
                    c.txns.clear();
                }
                ok()?
            }
            T::IsDomainIntroduced => {
                let d = atoi(wire::one_arg(p).ok_or(Errno::Inval)?);
                let yes = self.domains.get(&d).is_some_and(|d| d.introduced);
                if yes {
                    b"T\0".to_vec()
                } else {
                    b"F\0".to_vec()
                }
            }
            T::Introduce => {
                let v = wire::strings(p);
                if v.len() < 3 {
                    return Err(Errno::Inval);
                }
                let d = atoi(utf8(v[0])?);
                if atoi(utf8(v[2])?) as i32 <= 0 {
                    return Err(Errno::Inval);
                }
                self.mark_introduced(d);
                ok()?
            }
            T::Release => {
                let d = atoi(wire::one_arg(p).ok_or(Errno::Inval)?);
                if d == 0 || !self.domains.contains_key(&d) {
                    return Err(Errno::NoEnt);
                }
                self.release(d, false);
                ok()?
            }
            T::Resume => {
                let d = atoi(wire::one_arg(p).ok_or(Errno::Inval)?);
                if !self.domains.contains_key(&d) {
                    return Err(Errno::NoEnt);
                }
                ok()?
            }
            // The simulation has no daemon controls (log files, live update).
            T::Control => return Err(Errno::Inval),
            // Not requests, or (SET_TARGET, for device-model stub domains)
            // not modelled; xenstored 4.17 has no handler for RESTRICT.
            T::WatchEvent | T::Error | T::Restrict | T::SetTarget => return Err(Errno::NoSys),
        };
        Ok((ty, body))
    }

    /// Runs `f` on the view of connection `id` (its transaction `tx`, or the
    /// committed tree), then fires or queues the events it produced.
    fn with_view<R>(
        &mut self,
        id: u64,
        tx: u32,
        f: impl FnOnce(&mut View<'_>, &XenstoredConfig, &Conn) -> Result<R, Errno>,
    ) -> Result<R, Errno> {
        let conn = self.conns.get_mut(&id).ok_or(Errno::Io)?;
        let caller = conn.caller();
        let mut txn = if tx == 0 {
            None
        } else {
            Some(conn.txns.remove(&tx).ok_or(Errno::NoEnt)?)
        };
        let (res, events) = {
            let conn = self.conns.get(&id).ok_or(Errno::Io)?;
            let mut v = View::new(
                &mut self.tree,
                txn.as_mut(),
                caller,
                self.cfg.transaction_nodes_max,
            );
            let res = f(&mut v, &self.cfg, conn);
            (res, std::mem::take(&mut v.events))
        };
        match txn {
            Some(mut t) => {
                t.events.extend(events);
                if let Some(c) = self.conns.get_mut(&id) {
                    c.txns.insert(tx, t);
                }
            }
            None => self.fire(&events),
        }
        res
    }

    fn op_read(&mut self, id: u64, tx: u32, p: &[u8]) -> Reply {
        let path = wire::one_arg(p).ok_or(Errno::Inval)?;
        self.with_view(id, tx, |v, cfg, c| {
            Ok(get_node(v, cfg, &c.canonical(path), READ)?.value)
        })
    }

    fn op_write(&mut self, id: u64, tx: u32, p: &[u8]) -> Reply {
        let nul = p.iter().position(|&b| b == 0).ok_or(Errno::Inval)?;
        let path = utf8(&p[..nul])?;
        let value = &p[nul + 1..];
        self.with_view(id, tx, |v, cfg, c| {
            let path = c.canonical(path);
            match get_node(v, cfg, &path, WRITE) {
                Ok(mut n) => {
                    n.value = value.to_vec();
                    check_size(v, cfg, &n)?;
                    let owner = n.perms.owner();
                    let perms = n.perms.clone();
                    v.put(&path, n, Some(owner))?;
                    let pp = parent_perms(v, &path);
                    v.events.push(Event {
                        path,
                        exact: false,
                        perms: [Some(perms), pp].into_iter().flatten().collect(),
                    });
                }
                Err(Errno::NoEnt) => create_node(v, cfg, &path, value)?,
                Err(e) => return Err(e),
            }
            ok()
        })
    }

    fn op_mkdir(&mut self, id: u64, tx: u32, p: &[u8]) -> Reply {
        let path = wire::one_arg(p).ok_or(Errno::Inval)?;
        self.with_view(id, tx, |v, cfg, c| {
            let path = c.canonical(path);
            match get_node(v, cfg, &path, WRITE) {
                Ok(_) => {}
                Err(Errno::NoEnt) => create_node(v, cfg, &path, b"")?,
                Err(e) => return Err(e),
            }
            ok()
        })
    }

    fn op_rm(&mut self, id: u64, tx: u32, p: &[u8]) -> Reply {
        let path = wire::one_arg(p).ok_or(Errno::Inval)?;
        self.with_view(id, tx, |v, cfg, c| {
            let path = c.canonical(path);
            match get_node(v, cfg, &path, WRITE) {
                Ok(_) if path == "/" => Err(Errno::Inval),
                Ok(_) => {
                    rm_node(v, &path)?;
                    ok()
                }
                Err(Errno::NoEnt) => {
                    // Not there: fine if its parent is.
                    if v.get(tree::parent(&path))?.is_some() {
                        ok()
                    } else {
                        Err(Errno::NoEnt)
                    }
                }
                Err(e) => Err(e),
            }
        })
    }

    fn op_directory(&mut self, id: u64, tx: u32, p: &[u8]) -> Reply {
        let path = wire::one_arg(p).ok_or(Errno::Inval)?;
        self.with_view(id, tx, |v, cfg, c| {
            let n = get_node(v, cfg, &c.canonical(path), READ)?;
            Ok(child_bytes(&n))
        })
    }

    fn op_directory_part(&mut self, id: u64, tx: u32, p: &[u8]) -> Reply {
        if p.iter().filter(|&&b| b == 0).count() != 2 {
            return Err(Errno::Inval);
        }
        let v0 = wire::strings(p);
        let path = utf8(v0[0])?;
        let off = atoi(utf8(v0[1])?) as usize;
        self.with_view(id, tx, |v, cfg, c| {
            let n = get_node(v, cfg, &c.canonical(path), READ)?;
            let all = child_bytes(&n);
            let mut out = format!("{}", n.gen).into_bytes();
            out.push(0);
            if off >= all.len() {
                out.push(0);
                return Ok(out);
            }
            // Whole names from `off` while they fit, with a final empty
            // string once the list is complete (as xenstored does).
            let maxlen = PAYLOAD_MAX - out.len() - 1;
            let mut len = 0;
            let mut i = off;
            while i < all.len() {
                let l = all[i..]
                    .iter()
                    .position(|&b| b == 0)
                    .unwrap_or(all.len() - i);
                if len + l >= maxlen {
                    break;
                }
                len += l + 1;
                i += l + 1;
            }
            let end = (off + len).min(all.len());
            out.extend_from_slice(&all[off..end]);
            if end == all.len() {
                out.push(0);
            }
            Ok(out)
        })
    }

    fn op_get_perms(&mut self, id: u64, tx: u32, p: &[u8]) -> Reply {
        let path = wire::one_arg(p).ok_or(Errno::Inval)?;
        self.with_view(id, tx, |v, cfg, c| {
            Ok(get_node(v, cfg, &c.canonical(path), READ)?.perms.to_wire())
        })
    }

    fn op_set_perms(&mut self, id: u64, tx: u32, p: &[u8]) -> Reply {
        let items = wire::strings(p);
        if items.len() < 2 {
            return Err(Errno::Inval);
        }
        let conn = self.conns.get(&id).ok_or(Errno::Io)?;
        let caller = conn.caller();
        if !caller.privileged && items.len() - 1 > self.cfg.perms_per_node {
            return Err(Errno::NoSpc);
        }
        let path = utf8(items[0])?;
        let mut perms = Perms::parse(items[1..].iter().copied())?;
        for e in perms.entries_mut() {
            if !self.domain_exists(e.domid) {
                e.ignore = true;
            }
        }
        if perms.entries()[0].ignore {
            return Err(Errno::NoEnt);
        }
        if path.starts_with('@') {
            let key = match path {
                INTRODUCE_DOMAIN => INTRODUCE_DOMAIN,
                RELEASE_DOMAIN => RELEASE_DOMAIN,
                _ => return Err(Errno::Inval),
            };
            let cur = &self.special[key];
            if cur.access_for(caller.domid, caller.privileged) & (WRITE | OWNER) != WRITE | OWNER {
                return Err(Errno::Acces);
            }
            self.special.insert(key, perms);
            return ok();
        }
        self.with_view(id, tx, |v, cfg, c| {
            let path = c.canonical(path);
            let mut n = get_node(v, cfg, &path, WRITE | OWNER)?;
            if !caller.privileged && perms.owner() != n.perms.owner() {
                // xenstored answers EPERM, which its error table turns into EINVAL.
                return Err(Errno::Inval);
            }
            let old = std::mem::replace(&mut n.perms, perms);
            check_size(v, cfg, &n)?;
            let new = n.perms.clone();
            v.put(&path, n, Some(old.owner()))?;
            let pp = parent_perms(v, &path);
            v.events.push(Event {
                path,
                exact: false,
                perms: [Some(old), Some(new), pp].into_iter().flatten().collect(),
            });
            ok()
        })
    }

    fn op_watch(&mut self, id: u64, p: &[u8]) -> Reply {
        let v = wire::strings(p);
        if v.len() != 2 {
            return Err(Errno::Inval);
        }
        let (raw, token) = (utf8(v[0])?, v[1].to_vec());
        let max_watches = self.cfg.watches_per_domain;
        let path_max = self.cfg.path_len_max;
        let conn = self.conns.get(&id).ok_or(Errno::Io)?;
        let domid = conn.domid;
        let (path, relative_to) = if raw.starts_with('@') {
            if raw.len() > wire::REL_PATH_MAX {
                return Err(Errno::Inval);
            }
            (raw.to_owned(), None)
        } else {
            let path = conn.canonical(raw);
            if !tree::valid_path(&path, path_max) {
                return Err(Errno::Inval);
            }
            let rel = (!raw.starts_with('/')).then(|| conn.home());
            (path, rel)
        };
        if conn
            .watches
            .iter()
            .any(|w| w.path == path && w.token == token)
        {
            return Err(Errno::Exist);
        }
        // As in xenstored the count is checked before adding, with `>`.
        if domid != 0 && self.watches_of(domid) > max_watches {
            return Err(Errno::TooBig);
        }
        let w = Watch {
            path,
            token,
            relative_to,
        };
        let first = w.event_payload(&w.path);
        let special = w.path.starts_with('@');
        let conn = self.conns.get_mut(&id).ok_or(Errno::Io)?;
        conn.watches.push(w);
        // Every new watch fires once, right after the ack.
        self.after_reply
            .push((id, wire::encode(MsgType::WatchEvent, 0, 0, &first), special));
        ok()
    }

    fn op_unwatch(&mut self, id: u64, p: &[u8]) -> Reply {
        let v = wire::strings(p);
        if v.len() != 2 {
            return Err(Errno::Inval);
        }
        let conn = self.conns.get_mut(&id).ok_or(Errno::Io)?;
        let path = conn.canonical(utf8(v[0])?);
        let pos = conn
            .watches
            .iter()
            .position(|w| w.path == path && w.token == v[1])
            .ok_or(Errno::NoEnt)?;
        conn.watches.remove(pos);
        ok()
    }

    fn op_txn_start(&mut self, id: u64, tx: u32) -> Reply {
        if tx != 0 {
            return Err(Errno::Busy);
        }
        let max = self.cfg.transactions_per_conn;
        let conn = self.conns.get_mut(&id).ok_or(Errno::Io)?;
        if conn.domid != 0 && conn.txns.len() > max {
            return Err(Errno::NoSpc);
        }
        let mut t = conn.next_txid;
        while t == 0 || conn.txns.contains_key(&t) {
            t = t.wrapping_add(1);
        }
        conn.next_txid = t.wrapping_add(1);
        conn.txns.insert(t, Txn::default());
        let mut out = t.to_string().into_bytes();
        out.push(0);
        Ok(out)
    }

    fn op_txn_end(&mut self, id: u64, tx: u32, p: &[u8]) -> Reply {
        let arg = wire::one_arg(p).ok_or(Errno::Inval)?;
        if arg != "T" && arg != "F" {
            return Err(Errno::Inval);
        }
        let nodes_max = self.cfg.nodes_per_domain;
        let conn = self.conns.get_mut(&id).ok_or(Errno::Io)?;
        let privileged = conn.domid == 0;
        let t = conn.txns.remove(&tx).ok_or(Errno::NoEnt)?;
        if arg == "T" {
            let events = txn::commit(&mut self.tree, t, privileged, nodes_max)?;
            self.fire(&events);
        }
        ok()
    }
}

impl State {
    /// Delivers events to every watch they match, if the watcher may see them.
    pub fn fire(&mut self, events: &[Event]) {
        let mut out: Vec<(u64, Vec<u8>, bool)> = Vec::new();
        for ev in events {
            let special = ev.path.starts_with('@');
            for (&cid, c) in &self.conns {
                let privileged = c.domid == 0;
                let allowed = if special {
                    self.special
                        .get(ev.path.as_str())
                        .is_some_and(|p| p.access_for(c.domid, privileged) & READ != 0)
                } else {
                    privileged
                        || ev
                            .perms
                            .iter()
                            .any(|p| p.access_for(c.domid, false) & READ != 0)
                };
                if !allowed {
                    continue;
                }
                for w in c.watches.iter().filter(|w| w.matches(ev)) {
                    let body = w.event_payload(&ev.path);
                    // xenstored silently skips events too long to send.
                    if body.len() <= PAYLOAD_MAX {
                        out.push((cid, wire::encode(MsgType::WatchEvent, 0, 0, &body), special));
                    }
                }
            }
        }
        for (cid, f, special) in out {
            self.send(cid, f, Some(special));
        }
    }

    /// Registers a domain (for `serve`) if it is not known yet.
    pub fn ensure_domain(&mut self, domid: u32) -> tokio_watch::Receiver<bool> {
        let d = self.domains.entry(domid).or_insert_with(|| Domain {
            introduced: false,
            released: tokio_watch::channel(false).0,
            usage: Arc::default(),
        });
        d.released.subscribe()
    }

    /// Marks a domain introduced and fires `@introduceDomain` (INTRODUCE).
    pub fn mark_introduced(&mut self, domid: u32) {
        self.ensure_domain(domid);
        if let Some(d) = self.domains.get_mut(&domid) {
            if !d.introduced {
                d.introduced = true;
                if domid != 0 {
                    self.fire_special(INTRODUCE_DOMAIN);
                }
            }
        }
    }

    fn fire_special(&mut self, name: &str) {
        self.fire(&[Event {
            path: name.to_owned(),
            exact: true,
            perms: Vec::new(),
        }]);
    }

    /// What a toolstack does on domain creation (libxl's layout and
    /// permissions), then INTRODUCE.
    pub fn introduce_domain(&mut self, domid: u32, name: &str) -> Result<(), Errno> {
        let home = format!("/local/domain/{domid}");
        let vm = format!("/vm/00000000-0000-4000-8000-{domid:012x}");
        let libxl = format!("/libxl/{domid}");
        let ro = Perms::owned(0, 0).with(domid, READ);
        let rw = Perms::owned(domid, 0);
        let none = Perms::owned(0, 0);
        let domid_str = domid.to_string();
        // Perm entries naming the domain must be live, so register it first.
        self.ensure_domain(domid);
        let mut layout: Vec<(String, &[u8], &Perms)> = vec![
            (home.clone(), b"", &ro),
            (vm.clone(), b"", &ro),
            (libxl.clone(), b"", &none),
            (format!("{libxl}/device"), b"", &none),
            (format!("{libxl}/type"), b"pv", &none),
            (format!("{home}/vm"), vm.as_bytes(), &ro),
            (format!("{home}/name"), name.as_bytes(), &ro),
            (format!("{home}/domid"), domid_str.as_bytes(), &ro),
            (format!("{home}/cpu"), b"", &ro),
            (format!("{home}/memory"), b"", &ro),
            (format!("{home}/device"), b"", &ro),
            (format!("{home}/device/suspend/event-channel"), b"", &rw),
            (format!("{home}/control"), b"", &ro),
        ];
        for sub in [
            "control/shutdown",
            "control/feature-poweroff",
            "control/feature-reboot",
            "control/feature-suspend",
            "control/sysrq",
            "data",
            "drivers",
            "feature",
            "attr",
            "error",
        ] {
            layout.push((format!("{home}/{sub}"), b"", &rw));
        }
        for sub in [
            "control/platform-feature-multiprocessor-suspend",
            "control/platform-feature-xs_reset_watches",
        ] {
            layout.push((format!("{home}/{sub}"), b"1", &ro));
        }
        layout.push((format!("{vm}/name"), name.as_bytes(), &ro));
        layout.push((format!("{vm}/uuid"), &vm.as_bytes()[4..], &ro));

        let dom0 = Caller {
            domid: 0,
            privileged: true,
        };
        let mut v = View::new(&mut self.tree, None, dom0, usize::MAX);
        rm_node_if_present(&mut v, &home)?;
        for (path, value, perms) in &layout {
            create_node(&mut v, &self.cfg, path, value)?;
            let mut n = v.get(path)?.ok_or(Errno::Io)?;
            let old = n.perms.owner();
            n.perms = (*perms).clone();
            v.put(path, n, Some(old))?;
            v.events.push(Event {
                path: path.clone(),
                exact: false,
                perms: vec![(*perms).clone()],
            });
        }
        let events = std::mem::take(&mut v.events);
        self.fire(&events);
        self.mark_introduced(domid);
        Ok(())
    }

    /// A write by a dom0 tool (xenconsoled publishing `console/tty`, say): the
    /// node is created or updated as domain 0, owned by domain 0 and readable by
    /// `reader`, and watches fire as for any write.
    pub fn dom0_write(
        &mut self,
        path: &str,
        value: &[u8],
        reader: Option<u32>,
    ) -> Result<(), Errno> {
        let perms = match reader {
            Some(d) => Perms::owned(0, 0).with(d, READ),
            None => Perms::owned(0, 0),
        };
        let dom0 = Caller {
            domid: 0,
            privileged: true,
        };
        let mut v = View::new(&mut self.tree, None, dom0, usize::MAX);
        if v.get(path)?.is_none() {
            create_node(&mut v, &self.cfg, path, value)?;
        }
        let mut n = v.get(path)?.ok_or(Errno::Io)?;
        let old = n.perms.owner();
        n.value = value.to_vec();
        n.perms = perms.clone();
        v.put(path, n, Some(old))?;
        v.events.push(Event {
            path: path.to_owned(),
            exact: false,
            perms: vec![perms],
        });
        let events = std::mem::take(&mut v.events);
        self.fire(&events);
        Ok(())
    }

    /// The domain is gone: the toolstack removes its home, xenstored drops
    /// its connections and the nodes it still owns, stops honouring grants
    /// naming it, and fires `@releaseDomain`.
    pub fn release(&mut self, domid: u32, remove_home: bool) {
        let Some(d) = self.domains.remove(&domid) else {
            return;
        };
        let _ = d.released.send(true);
        let ids: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| c.domid == domid)
            .map(|(&i, _)| i)
            .collect();
        for i in ids {
            self.drop_conn(i);
        }
        let dom0 = Caller {
            domid: 0,
            privileged: true,
        };
        let mut v = View::new(&mut self.tree, None, dom0, usize::MAX);
        if remove_home {
            let _ = rm_node_if_present(&mut v, &format!("/local/domain/{domid}"));
            let _ = rm_node_if_present(&mut v, &format!("/libxl/{domid}"));
        }
        // Orphans: nodes the dead domain still owns are deleted.
        let mut owned: Vec<String> = v
            .tree
            .paths()
            .into_iter()
            .filter(|p| v.tree.get(p).is_some_and(|n| n.perms.owner() == domid))
            .collect();
        owned.sort();
        for p in owned {
            // An ancestor may have taken it already.
            let _ = rm_node_if_present(&mut v, &p);
        }
        let events = std::mem::take(&mut v.events);
        for p in self.tree.paths() {
            if let Some(n) = self.tree.get_mut_quiet(&p) {
                for e in n.perms.entries_mut().iter_mut().skip(1) {
                    if e.domid == domid {
                        e.ignore = true;
                    }
                }
            }
        }
        for perms in self.special.values_mut() {
            let kept: Vec<_> = perms
                .entries()
                .iter()
                .enumerate()
                .filter(|(i, e)| *i == 0 || e.domid != domid)
                .map(|(_, e)| *e)
                .collect();
            let mut np = Perms::owned(kept[0].domid, kept[0].access);
            for e in &kept[1..] {
                np = np.with(e.domid, e.access);
            }
            if np.owner() == domid {
                np.set_owner(0);
            }
            *perms = np;
        }
        self.fire(&events);
        self.fire_special(RELEASE_DOMAIN);
    }
}

/// Reads `path` for an access check of `perm`. Like xenstored, a missing node
/// is ENOENT only if the nearest existing ancestor grants some of `perm`
/// (else EACCES), so a guest cannot probe for nodes it may not see.
pub fn get_node(
    v: &mut View<'_>,
    cfg: &XenstoredConfig,
    path: &str,
    perm: u8,
) -> Result<Node, Errno> {
    if !tree::valid_path(path, cfg.path_len_max) {
        return Err(Errno::Inval);
    }
    let c = v.caller;
    match v.get(path)? {
        Some(n) if n.perms.access_for(c.domid, c.privileged) & perm == perm => Ok(n),
        Some(_) => Err(Errno::Acces),
        None => {
            let mut p = path;
            while p != "/" {
                p = tree::parent(p);
                if let Some(a) = v.get(p)? {
                    return if a.perms.access_for(c.domid, c.privileged) & perm != 0 {
                        Err(Errno::NoEnt)
                    } else {
                        Err(Errno::Acces)
                    };
                }
            }
            Err(Errno::Acces)
        }
    }
}

fn parent_perms(v: &mut View<'_>, path: &str) -> Option<Perms> {
    if path == "/" {
        return None;
    }
    v.get(tree::parent(path)).ok().flatten().map(|n| n.perms)
}

fn check_size(v: &View<'_>, cfg: &XenstoredConfig, n: &Node) -> Result<(), Errno> {
    if !v.caller.privileged && n.record_size() >= cfg.node_size_max {
        return Err(Errno::NoSpc);
    }
    Ok(())
}

/// Creates `path` with `value` and any missing parents. New nodes inherit
/// their parent's permissions; an unprivileged creator becomes the owner.
/// All quotas are checked before anything is stored.
pub fn create_node(
    v: &mut View<'_>,
    cfg: &XenstoredConfig,
    path: &str,
    value: &[u8],
) -> Result<(), Errno> {
    if !tree::valid_path(path, cfg.path_len_max) {
        return Err(Errno::Inval);
    }
    let c = v.caller;
    let mut missing = vec![path.to_owned()];
    let mut anc_path = tree::parent(path).to_owned();
    let mut anc = loop {
        if let Some(n) = v.get(&anc_path)? {
            break n;
        }
        if anc_path == "/" {
            return Err(Errno::Io);
        }
        missing.push(anc_path.clone());
        anc_path = tree::parent(&anc_path).to_owned();
    };
    missing.reverse();
    let anc_owner = anc.perms.owner();
    let mut new_nodes: Vec<(String, Node)> = Vec::with_capacity(missing.len());
    let mut parent_perms = anc.perms.clone();
    anc.children.push(tree::basename(&missing[0]).to_owned());
    for (i, p) in missing.iter().enumerate() {
        let mut perms = parent_perms.clone();
        if !c.privileged {
            perms.set_owner(c.domid);
        }
        let mut n = Node::new(perms.clone());
        if let Some(next) = missing.get(i + 1) {
            n.children.push(tree::basename(next).to_owned());
        } else {
            n.value = value.to_vec();
        }
        parent_perms = perms;
        new_nodes.push((p.clone(), n));
    }
    if !c.privileged && v.owned_by(c.domid) + new_nodes.len() > cfg.nodes_per_domain {
        return Err(Errno::NoSpc);
    }
    check_size(v, cfg, &anc)?;
    for (_, n) in &new_nodes {
        check_size(v, cfg, n)?;
    }
    v.put(&anc_path, anc, Some(anc_owner))?;
    for (p, n) in new_nodes {
        let perms = n.perms.clone();
        v.put(&p, n, None)?;
        v.events.push(Event {
            path: p,
            exact: false,
            perms: vec![perms],
        });
    }
    Ok(())
}

/// Removes `path` and everything below it, firing watches on the removed
/// root (and above) and on each removed descendant's exact path.
pub fn rm_node(v: &mut View<'_>, path: &str) -> Result<(), Errno> {
    let parent_path = tree::parent(path).to_owned();
    let mut parent = v.get(&parent_path)?.ok_or(Errno::Inval)?;
    // Post-order walk, as xenstored deletes children before their parent.
    let mut stack = vec![(path.to_owned(), false)];
    while let Some((p, expanded)) = stack.pop() {
        let Some(n) = v.get(&p)? else { continue };
        if !expanded {
            stack.push((p.clone(), true));
            for ch in n.children.iter().rev() {
                stack.push((tree::child(&p, ch), false));
            }
            continue;
        }
        v.del(&p, n.perms.owner())?;
        v.events.push(Event {
            exact: p != path,
            path: p,
            perms: vec![n.perms],
        });
    }
    let base = tree::basename(path);
    let owner = parent.perms.owner();
    parent.children.retain(|c| c != base);
    v.put(&parent_path, parent, Some(owner))
}

fn rm_node_if_present(v: &mut View<'_>, path: &str) -> Result<(), Errno> {
    if v.get(path)?.is_some() {
        rm_node(v, path)?;
    }
    Ok(())
}

fn child_bytes(n: &Node) -> Vec<u8> {
    let mut out = Vec::new();
    for c in &n.children {
        out.extend_from_slice(c.as_bytes());
        out.push(0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn state() -> (State, u64, u64) {
        let cfg = XenstoredConfig {
            nodes_per_domain: 40,
            out_queue_max: 1 << 30,
            ..XenstoredConfig::default()
        };
        let mut s = State::new(cfg);
        s.introduce_domain(5, "g").unwrap();
        let (g, _) = s.add_conn(5, None).unwrap();
        let (d, _) = s.add_conn(0, None).unwrap();
        (s, g, d)
    }

    /// Every child listed exists, every node is listed by its parent, and
    /// owner counts match the nodes.
    fn check_tree(s: &State) {
        let mut counts: HashMap<u32, usize> = HashMap::new();
        for p in s.tree.paths() {
            let n = s.tree.get(&p).unwrap();
            *counts.entry(n.perms.owner()).or_default() += 1;
            for c in &n.children {
                assert!(s.tree.get(&tree::child(&p, c)).is_some(), "{p}/{c}");
            }
            if p != "/" {
                let parent = s.tree.get(tree::parent(&p)).expect("parent exists");
                assert!(
                    parent.children.iter().any(|c| c == tree::basename(&p)),
                    "{p}"
                );
            }
        }
        assert_eq!(&counts, s.tree.owner_counts());
    }

    fn frame(ty: u32, tx: u32, payload: Vec<u8>) -> Frame {
        Frame {
            header: wire::Header {
                ty,
                req_id: 1,
                tx_id: tx,
                len: payload.len() as u32,
            },
            payload,
        }
    }

    fn path_strategy() -> impl Strategy<Value = String> {
        prop::collection::vec(
            prop::sample::select(vec!["a", "b", "data", "@x", "c"]),
            0..4,
        )
        .prop_flat_map(|parts| {
            prop::sample::select(vec!["", "/", "/local/domain/5/", "/local/domain/0/"])
                .prop_map(move |pre| format!("{pre}{}", parts.join("/")))
        })
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(
            reqs in prop::collection::vec(
                (0u32..30, 0u32..4, prop::collection::vec(any::<u8>(), 0..64)), 1..40)
        ) {
            let (mut s, g, d) = state();
            for (i, (ty, tx, p)) in reqs.into_iter().enumerate() {
                s.handle(if i % 2 == 0 { g } else { d }, frame(ty, tx, p));
            }
            check_tree(&s);
        }

        #[test]
        fn random_requests_keep_the_tree_consistent(
            reqs in prop::collection::vec(
                (prop::sample::select(vec![1u32, 2, 3, 4, 5, 6, 7, 11, 12, 13, 14, 21, 22]),
                 0u32..3, path_strategy(), prop::sample::select(vec!["", "v", "T", "F", "n5", "r0", "b5"]),
                 any::<bool>()), 1..60)
        ) {
            let (mut s, g, d) = state();
            for (ty, tx, path, arg, guest) in reqs {
                let payload = match ty {
                    11 => format!("{path}\0{arg}").into_bytes(),
                    14 => format!("{path}\0{arg}\0").into_bytes(),
                    4 | 5 => format!("{path}\0tok\0").into_bytes(),
                    6 => b"\0".to_vec(),
                    7 => format!("{arg}\0").into_bytes(),
                    22 => format!("{path}\00\0").into_bytes(),
                    _ => format!("{path}\0").into_bytes(),
                };
                s.handle(if guest { g } else { d }, frame(ty, tx, payload));
                check_tree(&s);
            }
        }
    }

    #[test]
    fn release_removes_orphans_and_grants() {
        let (mut s, g, d) = state();
        s.handle(g, frame(MsgType::Write as u32, 0, b"data/x\0v".to_vec()));
        assert!(s.tree.owned_by(5) > 0);
        s.handle(d, frame(MsgType::Write as u32, 0, b"/shared\0v".to_vec()));
        s.handle(
            d,
            frame(MsgType::SetPerms as u32, 0, b"/shared\0n0\0r5\0".to_vec()),
        );
        s.release(5, true);
        assert_eq!(s.tree.owned_by(5), 0);
        assert!(s.tree.get("/local/domain/5").is_none());
        assert!(s.tree.get("/shared").unwrap().perms.entries()[1].ignore);
        assert!(!s.conns.contains_key(&g));
        check_tree(&s);
    }

    #[test]
    fn atoi_like_c() {
        assert_eq!(atoi("12"), 12);
        assert_eq!(atoi(" 7x"), 7);
        assert_eq!(atoi("x"), 0);
        assert_eq!(atoi("-1"), u32::MAX);
    }
}
