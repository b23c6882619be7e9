//! Per-connection plumbing: the outgoing queue with C xenstored's rules for
//! watch events, and the tasks that read requests from and write replies to
//! one socket.
//!
//! What Xen 4.17's C xenstored does with output a client has not read yet,
//! and what is modelled here:
//! - It never closes a connection because its output backs up.
//! - A watch event identical (same path and token) to one still queued for
//!   the connection is dropped; `@` events are never merged.
//! - For an unprivileged domain, queued output counts against the domain's
//!   hard memory quota (2.5 MiB by default; in C it also holds the domain's
//!   nodes, watches and transactions): an event that would cross it is
//!   dropped, and the domain's requests are not read while it is crossed.
//! - For an unprivileged domain an event not consumed within 20 s (`-w`) is
//!   dropped.
//! - A request of an unprivileged domain stays outstanding until its reply
//!   and every watch event it caused (to any connection) are written or
//!   dropped; while 20 (`-Q outstanding`) are, the domain's requests are not
//!   read. A slow watcher, dom0's included, so slows down the writers.
//! - Privileged domains (dom0) have neither quota nor timeout: their queue
//!   grows. Here a large per-connection bound (`out_queue_max`) still closes
//!   the connection, so that a stuck dom0 client cannot grow the simulated
//!   host without end; that is the one departure.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::wire::{DecodeError, Decoder};
use super::Xenstored;

/// Output a domain has queued on all its connections; the quota is per domain.
#[derive(Default)]
pub struct DomainUse {
    bytes: AtomicUsize,
    /// Wakes readers of the domain's connections when output was consumed.
    freed: Notify,
    /// Watch events dropped: over quota or timed out.
    pub dropped: AtomicU64,
    /// Watch events merged into an identical queued one.
    pub merged: AtomicU64,
    /// Requests whose reply or events are still queued somewhere.
    outstanding: AtomicUsize,
}

/// One outstanding request of an unprivileged domain (C xenstored's
/// `nboutstanding`): its reply and the events it caused hold it, and the
/// last one written or dropped ends it.
pub struct Outstanding(Arc<DomainUse>);

impl Outstanding {
    /// Counts a request of `domain` as outstanding until dropped.
    pub fn new(domain: Arc<DomainUse>) -> Arc<Self> {
        domain.outstanding.fetch_add(1, Ordering::Relaxed);
        Arc::new(Outstanding(domain))
    }
}

impl Drop for Outstanding {
    fn drop(&mut self) {
        self.0.outstanding.fetch_sub(1, Ordering::Relaxed);
        self.0.freed.notify_waiters();
    }
}

impl DomainUse {
    /// Bytes queued for the domain.
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Its requests still outstanding.
    pub fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Relaxed)
    }

    fn sub(&self, n: usize) {
        if n > 0 {
            self.bytes.fetch_sub(n, Ordering::Relaxed);
            self.freed.notify_waiters();
        }
    }
}

/// The rules a queue follows; they depend on the domain it belongs to.
#[derive(Clone, Debug)]
pub struct Policy {
    /// Privileged domains have no quota and no event timeout.
    pub privileged: bool,
    /// Hard quota on the domain's queued output (unprivileged only).
    pub domain_quota: usize,
    /// How long an unprivileged domain's event may wait to be read.
    pub event_timeout: Option<Duration>,
    /// Outstanding requests past which an unprivileged domain is not read.
    pub outstanding_max: usize,
    /// Bytes one connection may have queued before it is closed (the
    /// simulation's own bound, see the module doc).
    pub conn_max: usize,
}

/// Outgoing frames of one connection. Replies and watch events share it so
/// their order is kept.
pub struct Outbox {
    inner: Mutex<OutInner>,
    policy: Policy,
    domain: Arc<DomainUse>,
    /// Wakes the writer (new frame or closed).
    to_writer: Notify,
    /// Wakes the reader (room freed or closed).
    to_reader: Notify,
    /// Wakes whoever waits for the close.
    on_close: Notify,
}

struct Out {
    frame: Arc<[u8]>,
    /// A watch event that may be merged with an identical one.
    mergeable: bool,
    /// An event: past this, it is dropped unread.
    deadline: Option<Instant>,
    event: bool,
    /// The unprivileged request it answers or was caused by.
    _req: Option<Arc<Outstanding>>,
}

#[derive(Default)]
struct OutInner {
    q: VecDeque<Out>,
    /// The mergeable events in `q`.
    pending: HashSet<Arc<[u8]>>,
    bytes: usize,
    closed: bool,
    /// Over the lag mark since it was last under a quarter of it.
    lagging: bool,
    /// The crossing is yet to be reported.
    lag_unreported: bool,
}

/// Queued bytes past which a connection counts as falling behind, and is
/// named in the log once, until it catches up again.
pub const LAG_MARK: usize = 64 * 1024;

/// What became of a watch event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    Queued,
    /// An identical event was still queued.
    Merged,
    /// The domain is over its quota.
    Dropped,
    /// The connection is going away (its peer is gone and the write
    /// failed, or it was closed): the frame is discarded. Not an overflow.
    Closed,
}

/// What a queue held when it overflowed, for the log line.
#[derive(Debug, Default)]
pub struct Backlog {
    pub bytes: usize,
    pub frames: usize,
    pub events: usize,
}

impl Outbox {
    /// An empty queue under `policy`, accounted to `domain`.
    pub fn new(policy: Policy, domain: Arc<DomainUse>) -> Arc<Self> {
        Arc::new(Outbox {
            inner: Mutex::new(OutInner::default()),
            policy,
            domain,
            to_writer: Notify::new(),
            to_reader: Notify::new(),
            on_close: Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, OutInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a reply. Over the connection bound the queue closes and what it
    /// held is returned: the caller drops the connection.
    pub fn push_reply(
        &self,
        frame: Vec<u8>,
        req: Option<Arc<Outstanding>>,
    ) -> Result<Fate, Backlog> {
        self.push(frame.into(), false, false, req)
    }

    /// Queues a watch event (`special` for `@...` ones, which are never
    /// merged), or drops it under the rules in the module doc.
    pub fn push_event(
        &self,
        frame: Vec<u8>,
        special: bool,
        req: Option<Arc<Outstanding>>,
    ) -> Result<Fate, Backlog> {
        self.push(frame.into(), true, !special, req)
    }

    fn push(
        &self,
        frame: Arc<[u8]>,
        event: bool,
        mergeable: bool,
        req: Option<Arc<Outstanding>>,
    ) -> Result<Fate, Backlog> {
        let mut g = self.lock();
        if g.closed {
            return Ok(Fate::Closed);
        }
        if mergeable && g.pending.contains(&frame) {
            drop(g);
            self.domain.merged.fetch_add(1, Ordering::Relaxed);
            return Ok(Fate::Merged);
        }
        let now = Instant::now();
        if event && !self.policy.privileged {
            self.expire(&mut g, now);
            if self.domain.bytes() + frame.len() > self.policy.domain_quota {
                drop(g);
                self.domain.dropped.fetch_add(1, Ordering::Relaxed);
                return Ok(Fate::Dropped);
            }
        }
        if g.bytes + frame.len() > self.policy.conn_max {
            let b = Backlog {
                bytes: g.bytes,
                frames: g.q.len(),
                events: g.q.iter().filter(|o| o.event).count(),
            };
            drop(g);
            self.close();
            return Err(b);
        }
        let deadline = match self.policy.event_timeout {
            Some(t) if event && !self.policy.privileged => Some(now + t),
            _ => None,
        };
        g.bytes += frame.len();
        if g.bytes > LAG_MARK && !g.lagging {
            g.lagging = true;
            g.lag_unreported = true;
        }
        self.domain.bytes.fetch_add(frame.len(), Ordering::Relaxed);
        if mergeable {
            g.pending.insert(frame.clone());
        }
        g.q.push_back(Out {
            frame,
            mergeable,
            deadline,
            event,
            _req: req,
        });
        drop(g);
        self.to_writer.notify_one();
        Ok(Fate::Queued)
    }

    /// What was queued when the connection started falling behind, once
    /// per episode.
    pub fn take_lag_report(&self) -> Option<Backlog> {
        let mut g = self.lock();
        if !std::mem::take(&mut g.lag_unreported) {
            return None;
        }
        Some(Backlog {
            bytes: g.bytes,
            frames: g.q.len(),
            events: g.q.iter().filter(|o| o.event).count(),
        })
    }

    /// Takes `o` out of the accounting.
    fn forget(&self, g: &mut OutInner, o: &Out) {
        g.bytes -= o.frame.len();
        if g.bytes < LAG_MARK / 4 {
            g.lagging = false;
        }
        if o.mergeable {
            g.pending.remove(&o.frame);
        }
        self.domain.sub(o.frame.len());
    }

    /// Drops the events whose time is up.
    fn expire(&self, g: &mut OutInner, now: Instant) {
        if !g.q.iter().any(|o| o.deadline.is_some_and(|d| d <= now)) {
            return;
        }
        let q = std::mem::take(&mut g.q);
        for o in q {
            if o.deadline.is_some_and(|d| d <= now) {
                self.forget(g, &o);
                self.domain.dropped.fetch_add(1, Ordering::Relaxed);
            } else {
                g.q.push_back(o);
            }
        }
        self.to_reader.notify_one();
    }

    /// Closes the queue; pending frames are dropped and both tasks stop.
    pub fn close(&self) {
        let mut g = self.lock();
        g.closed = true;
        g.q.clear();
        g.pending.clear();
        let n = std::mem::take(&mut g.bytes);
        drop(g);
        self.domain.sub(n);
        self.to_writer.notify_one();
        self.to_reader.notify_one();
        self.on_close.notify_waiters();
        self.on_close.notify_one();
    }

    /// Whether the queue was closed.
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Bytes and frames queued.
    pub fn queued(&self) -> (usize, usize) {
        let g = self.lock();
        (g.bytes, g.q.len())
    }

    /// The next frame to write (dropped once written); `None` once closed.
    async fn pop(&self) -> Option<Out> {
        loop {
            {
                let mut g = self.lock();
                if g.closed {
                    return None;
                }
                let now = Instant::now();
                while let Some(o) = g.q.pop_front() {
                    self.forget(&mut g, &o);
                    if o.deadline.is_some_and(|d| d <= now) {
                        self.domain.dropped.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    drop(g);
                    self.to_reader.notify_one();
                    return Some(o);
                }
            }
            self.to_writer.notified().await;
        }
    }

    /// Whether one more request may be read: for an unprivileged domain, not
    /// while it is over its quota (as C xenstored stops reading its ring);
    /// for any connection, not while half its bound is used.
    fn has_room(&self, g: &mut OutInner) -> bool {
        if !self.policy.privileged {
            self.expire(g, Instant::now());
            if self.domain.bytes() >= self.policy.domain_quota
                || self.domain.outstanding() >= self.policy.outstanding_max
            {
                return false;
            }
        }
        g.bytes <= self.policy.conn_max / 2
    }

    /// Waits until one more request may be handled; `false` once closed.
    async fn wait_room(&self) -> bool {
        loop {
            let own = self.to_reader.notified();
            let dom = self.domain.freed.notified();
            tokio::pin!(own, dom);
            own.as_mut().enable();
            dom.as_mut().enable();
            let next_expiry = {
                let mut g = self.lock();
                if g.closed {
                    return false;
                }
                if self.has_room(&mut g) {
                    return true;
                }
                g.q.iter().filter_map(|o| o.deadline).min()
            };
            let expiry = async {
                match next_expiry {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = own => {}
                () = dom => {}
                () = expiry => {}
            }
        }
    }

    /// Resolves once the queue is closed.
    pub async fn closed(&self) {
        loop {
            let n = self.on_close.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            if self.is_closed() {
                return;
            }
            n.await;
        }
    }
}

/// Runs one accepted connection as `domid` until the peer goes away, breaks
/// the protocol, or is dropped by the daemon.
pub async fn run(xsd: Xenstored, stream: UnixStream, domid: u32) {
    let pid = stream.peer_cred().ok().and_then(|c| c.pid());
    let Some((id, outbox)) = xsd.register_conn(domid, pid) else {
        return;
    };
    let (mut rd, mut wr) = stream.into_split();

    let wbox = outbox.clone();
    let writer = tokio::spawn(async move {
        while let Some(out) = wbox.pop().await {
            let res = tokio::select! {
                r = wr.write_all(&out.frame) => r,
                _ = wbox.closed() => return,
            };
            if res.is_err() {
                wbox.close();
                return;
            }
        }
    });

    let mut dec = Decoder::new();
    let mut buf = vec![0u8; 8192];
    'conn: loop {
        let n = tokio::select! {
            r = rd.read(&mut buf) => match r {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            },
            _ = outbox.closed() => break,
        };
        let mut off = 0;
        while off < n {
            match dec.feed(&buf[off..n]) {
                Ok((used, frame)) => {
                    off += used;
                    if let Some(frame) = frame {
                        if !outbox.wait_room().await {
                            break 'conn;
                        }
                        xsd.handle(id, frame);
                    }
                }
                Err(DecodeError::TooLong(len)) => {
                    xsd.bad_input(id, domid, format_args!("payload length {len} over limit"));
                    break 'conn;
                }
            }
        }
    }
    xsd.drop_conn(id);
    outbox.close();
    let _ = writer.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(privileged: bool, quota: usize, conn_max: usize) -> Policy {
        Policy {
            privileged,
            domain_quota: quota,
            event_timeout: Some(Duration::from_secs(20)),
            outstanding_max: 20,
            conn_max,
        }
    }

    fn ev(path: &str) -> Vec<u8> {
        super::super::wire::encode(
            super::super::wire::MsgType::WatchEvent,
            0,
            0,
            format!("{path}\0tok\0").as_bytes(),
        )
    }

    #[tokio::test]
    async fn over_the_bound_closes() {
        let o = Outbox::new(policy(true, 0, 100), Arc::default());
        assert!(o.push_reply(vec![0; 60], None).is_ok());
        let b = o.push_reply(vec![0; 60], None).unwrap_err();
        assert_eq!((b.bytes, b.frames, b.events), (60, 1, 0));
        assert!(o.is_closed());
        assert_eq!(o.queued(), (0, 0));
        // Later frames are discarded quietly: that is no second overflow.
        assert_eq!(o.push_event(vec![0; 1], false, None).unwrap(), Fate::Closed);
        assert!(o.pop().await.is_none());
        o.closed().await;
    }

    #[tokio::test]
    async fn fifo_and_room() {
        let o = Outbox::new(policy(true, 0, 100), Arc::default());
        assert!(o.push_reply(vec![1; 60], None).is_ok());
        assert!(o.push_reply(vec![2; 30], None).is_ok());
        let o2 = o.clone();
        let waiter = tokio::spawn(async move { o2.wait_room().await });
        assert_eq!(o.pop().await.unwrap().frame[0], 1);
        assert!(waiter.await.unwrap());
        assert_eq!(o.pop().await.unwrap().frame[0], 2);
        o.close();
        assert!(!o.wait_room().await);
    }

    #[tokio::test]
    async fn identical_queued_events_merge() {
        let dom = Arc::new(DomainUse::default());
        let o = Outbox::new(policy(true, 0, 1 << 20), dom.clone());
        assert_eq!(o.push_event(ev("/a"), false, None).unwrap(), Fate::Queued);
        assert_eq!(o.push_event(ev("/b"), false, None).unwrap(), Fate::Queued);
        assert_eq!(o.push_event(ev("/a"), false, None).unwrap(), Fate::Merged);
        // Special events are never merged.
        assert_eq!(o.push_event(ev("@r"), true, None).unwrap(), Fate::Queued);
        assert_eq!(o.push_event(ev("@r"), true, None).unwrap(), Fate::Queued);
        assert_eq!(o.queued().1, 4);
        assert_eq!(dom.merged.load(Ordering::Relaxed), 1);
        // Once written, the same event queues again.
        assert_eq!(&*o.pop().await.unwrap().frame, &ev("/a")[..]);
        assert_eq!(o.push_event(ev("/a"), false, None).unwrap(), Fate::Queued);
    }

    #[tokio::test]
    async fn unprivileged_events_drop_over_quota_without_closing() {
        let dom = Arc::new(DomainUse::default());
        let quota = 3 * ev("/x/0").len();
        let a = Outbox::new(policy(false, quota, 1 << 20), dom.clone());
        let b = Outbox::new(policy(false, quota, 1 << 20), dom.clone());
        assert_eq!(a.push_event(ev("/x/0"), false, None).unwrap(), Fate::Queued);
        assert_eq!(b.push_event(ev("/x/1"), false, None).unwrap(), Fate::Queued);
        assert_eq!(a.push_event(ev("/x/2"), false, None).unwrap(), Fate::Queued);
        // The quota is the domain's, over both connections.
        assert_eq!(
            b.push_event(ev("/x/3"), false, None).unwrap(),
            Fate::Dropped
        );
        assert_eq!(dom.dropped.load(Ordering::Relaxed), 1);
        assert!(!a.is_closed() && !b.is_closed());
        // Replies still queue, and the domain's requests wait for room.
        assert!(b.push_reply(vec![0; 8], None).is_ok());
        let b2 = b.clone();
        let waiter = tokio::spawn(async move { b2.wait_room().await });
        a.pop().await.unwrap();
        a.pop().await.unwrap();
        assert!(waiter.await.unwrap());
        assert_eq!(dom.bytes(), ev("/x/1").len() + 8);
        a.close();
        b.close();
        assert_eq!(dom.bytes(), 0);
    }

    #[tokio::test]
    async fn unprivileged_events_time_out_privileged_do_not() {
        let dom = Arc::new(DomainUse::default());
        let pol = |privileged, t| Policy {
            event_timeout: Some(t),
            ..policy(privileged, 1 << 20, 1 << 20)
        };
        // An unprivileged domain's event past its time is dropped unread;
        // the reply behind it still goes.
        let u = Outbox::new(pol(false, Duration::ZERO), dom.clone());
        u.push_event(ev("/old"), false, None).unwrap();
        u.push_reply(vec![7; 4], None).unwrap();
        assert_eq!(&*u.pop().await.unwrap().frame, &[7; 4][..]);
        assert_eq!(dom.dropped.load(Ordering::Relaxed), 1);
        assert_eq!(dom.bytes(), 0);
        // Within its time it is delivered.
        let u = Outbox::new(pol(false, Duration::from_secs(3600)), dom.clone());
        u.push_event(ev("/new"), false, None).unwrap();
        assert_eq!(&*u.pop().await.unwrap().frame, &ev("/new")[..]);
        // Privileged domains have no timeout.
        let p = Outbox::new(pol(true, Duration::ZERO), Arc::default());
        p.push_event(ev("/old"), false, None).unwrap();
        assert_eq!(&*p.pop().await.unwrap().frame, &ev("/old")[..]);
    }

    #[tokio::test]
    async fn outstanding_requests_hold_the_domain_until_their_events_go() {
        let dom = Arc::new(DomainUse::default());
        let g = Outbox::new(
            Policy {
                outstanding_max: 2,
                ..policy(false, 1 << 20, 1 << 20)
            },
            dom.clone(),
        );
        let watcher = Outbox::new(policy(true, 0, 1 << 20), Arc::default());
        for i in 0..2u8 {
            let r = Outstanding::new(dom.clone());
            g.push_reply(vec![i], Some(r.clone())).unwrap();
            watcher
                .push_event(ev(&format!("/x/{i}")), false, Some(r))
                .unwrap();
        }
        // A merged event holds nothing.
        let r = Outstanding::new(dom.clone());
        watcher.push_event(ev("/x/0"), false, Some(r)).unwrap();
        assert_eq!(dom.outstanding(), 2);
        // The guest has its replies, but the watcher has not read the
        // events: the guest's next request waits.
        drop(g.pop().await);
        drop(g.pop().await);
        assert_eq!(dom.outstanding(), 2);
        let g2 = g.clone();
        let waiter = tokio::spawn(async move { g2.wait_room().await });
        drop(watcher.pop().await.unwrap());
        assert!(waiter.await.unwrap());
        assert_eq!(dom.outstanding(), 1);
    }
}
