//! A vchan-compatible channel: one control page, two rings, one event channel.
//!
//! The server is the granting side (the guest, in xenvt): it shares the control
//! page and ring pages and allocates an unbound port. The client maps them by the
//! ring-ref and port the server published. On the wire this is libxenvchan's
//! protocol, so either end may be libxenvchan.
//!
//! Non-blocking byte operations live here; waiting lives in [`crate::stream`].
//! Any protocol violation by the peer latches the channel broken and closes it.

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use futures::StreamExt;

use crate::layout::{self, Geometry, Placement};
use crate::notify::Notifier;
use crate::platform::{DomId, EventChannel, GrantRef, Pages, Platform, PAGE_SIZE};
use crate::ring::{Consumer, Producer, Segments};
use crate::shm::ShmView;
use crate::xenstore::Xenstore;
use crate::{Error, Result};

/// Ring sizes, as vchan orders (size = 2^order bytes, 10..=20).
///
/// `left` carries client-to-server bytes, `right` server-to-client. The default,
/// order 17 (128 KiB) both ways, keeps two 64 KiB writes in flight so a producer
/// rarely waits on its consumer, at a cost of 65 granted pages per channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChannelConfig {
    /// Order of the client-to-server ring.
    pub left_order: u8,
    /// Order of the server-to-client ring.
    pub right_order: u8,
}

impl Default for ChannelConfig {
    fn default() -> Self {
        Self {
            left_order: 17,
            right_order: 17,
        }
    }
}

/// What the peer's live byte says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerState {
    /// The client has not connected yet (server side only).
    NotYet,
    /// The peer is connected.
    Connected,
    /// The peer closed, exited or died.
    Closed,
}

/// Which end of the channel this is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The granting side.
    Server,
    /// The mapping side.
    Client,
}

/// One end of a channel.
pub struct Channel {
    role: Role,
    ctrl: ShmView,
    geometry: Geometry,
    tx: Mutex<Producer<ShmView>>,
    rx: Mutex<Consumer<ShmView>>,
    notifier: Notifier<ShmView>,
    ring_ref: GrantRef,
    closed: AtomicBool,
    broken: AtomicBool,
    // Declared before `evt` so the mappings (whose unmap-notify kicks our port) go
    // first on drop.
    _pages: Vec<Box<dyn Pages>>,
    evt: Box<dyn EventChannel>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Maps or allocates one ring's bytes.
fn ring_view(
    ctrl: ShmView,
    placement: Placement,
    order: u8,
    pages: &mut Vec<Box<dyn Pages>>,
    get: impl FnOnce(usize, usize) -> Result<Box<dyn Pages>>,
) -> Result<ShmView> {
    let size = 1usize << order;
    match placement {
        Placement::InPage(off) => ctrl.sub(off, size),
        Placement::Granted { first, count } => {
            let p = get(first, count)?;
            if p.len() < size {
                return Err(Error::Invalid("ring mapping too small".into()));
            }
            let v = ShmView::of(&*p);
            pages.push(p);
            Ok(v)
        }
    }
}

impl Channel {
    /// Sets up the granting side for `peer`: control page, ring pages and an unbound
    /// port. The client can connect with [`Channel::ring_ref`] and
    /// [`Channel::event_port`].
    pub fn server(p: &dyn Platform, peer: DomId, cfg: ChannelConfig) -> Result<Channel> {
        let geo = Geometry::new(cfg.left_order.into(), cfg.right_order.into())
            .map_err(|e| Error::Invalid(e.to_string()))?;
        let evt = p.alloc_unbound(peer)?;
        let ctrl_pages = p.share_pages(peer, 1, true)?;
        let ctrl = ShmView::of(&*ctrl_pages);
        let ring_ref = *ctrl_pages
            .grant_refs()
            .first()
            .ok_or_else(|| Error::Invalid("control page has no grant ref".into()))?;
        ctrl.fill(0, PAGE_SIZE, 0)?;
        ctrl_pages.set_unmap_notify(layout::SRV_LIVE, Some(evt.local_port()))?;
        let mut pages = vec![ctrl_pages];
        let share = |first: usize, count: usize| -> Result<Box<dyn Pages>> {
            let sp = p.share_pages(peer, count, true)?;
            for (i, r) in sp.grant_refs().iter().enumerate() {
                ctrl.store_u32(layout::GRANTS + 4 * (first + i), *r, Ordering::Relaxed)?;
            }
            Ok(sp)
        };
        let mut ring_pages = Vec::new();
        let left = ring_view(ctrl, geo.left, geo.left_order, &mut ring_pages, share)?;
        let right = ring_view(ctrl, geo.right, geo.right_order, &mut ring_pages, share)?;
        pages.append(&mut ring_pages);
        ctrl.store_u16(layout::LEFT_ORDER, geo.left_order.into(), Ordering::Relaxed)?;
        ctrl.store_u16(
            layout::RIGHT_ORDER,
            geo.right_order.into(),
            Ordering::Relaxed,
        )?;
        ctrl.store_u8(layout::CLI_LIVE, layout::LIVE_NOT_YET, Ordering::Relaxed)?;
        // The server wants to hear about the client's first write.
        ctrl.store_u8(layout::CLI_NOTIFY, layout::NOTIFY_WRITE, Ordering::Relaxed)?;
        ctrl.store_u8(layout::SRV_LIVE, layout::LIVE_CONNECTED, Ordering::Release)?;
        let tx = Producer::new(ctrl, layout::RIGHT, right, 1 << geo.right_order, 0)?;
        let rx = Consumer::new(ctrl, layout::LEFT, left, 1 << geo.left_order, 0)?;
        Ok(Channel {
            role: Role::Server,
            ctrl,
            geometry: geo,
            tx: Mutex::new(tx),
            rx: Mutex::new(rx),
            notifier: Notifier::new(ctrl, layout::CLI_NOTIFY, layout::SRV_NOTIFY),
            ring_ref,
            closed: AtomicBool::new(false),
            broken: AtomicBool::new(false),
            _pages: pages,
            evt,
        })
    }

    /// Connects to `peer`'s server by its control page's grant ref and its port.
    ///
    /// Orders and grants are read once into private memory and validated before
    /// anything is mapped; the server cannot change our view of them afterwards.
    pub fn client(p: &dyn Platform, peer: DomId, ring_ref: GrantRef, port: u32) -> Result<Channel> {
        let evt = p.bind_interdomain(peer, port)?;
        let ctrl_pages = p.map_pages(peer, &[ring_ref], true)?;
        if ctrl_pages.len() < PAGE_SIZE {
            return Err(Error::Invalid("control mapping too small".into()));
        }
        ctrl_pages.set_unmap_notify(layout::CLI_LIVE, Some(evt.local_port()))?;
        let ctrl = ShmView::of(&*ctrl_pages);
        let lo = ctrl.load_u16(layout::LEFT_ORDER, Ordering::Acquire)?;
        let ro = ctrl.load_u16(layout::RIGHT_ORDER, Ordering::Acquire)?;
        let geo = Geometry::new(lo, ro)?;
        let grants = (0..geo.grant_count())
            .map(|i| ctrl.load_u32(layout::GRANTS + 4 * i, Ordering::Relaxed))
            .collect::<Result<Vec<GrantRef>>>()?;
        let mut pages = vec![ctrl_pages];
        let mut ring_pages = Vec::new();
        // We write the left ring and only read the right one.
        let left = ring_view(ctrl, geo.left, geo.left_order, &mut ring_pages, |f, n| {
            p.map_pages(peer, &grants[f..f + n], true)
        })?;
        let right = ring_view(ctrl, geo.right, geo.right_order, &mut ring_pages, |f, n| {
            p.map_pages(peer, &grants[f..f + n], false)
        })?;
        pages.append(&mut ring_pages);
        // Our own starting indices, read once (non-zero if reconnecting); the
        // producer and consumer check them against the peer's on first use.
        let prod = ctrl.load_u32(layout::LEFT + layout::PROD, Ordering::Acquire)?;
        let cons = ctrl.load_u32(layout::RIGHT + layout::CONS, Ordering::Acquire)?;
        let tx = Producer::new(ctrl, layout::LEFT, left, 1 << geo.left_order, prod)?;
        let rx = Consumer::new(ctrl, layout::RIGHT, right, 1 << geo.right_order, cons)?;
        // The client wants to hear about the server's writes.
        ctrl.store_u8(layout::SRV_NOTIFY, layout::NOTIFY_WRITE, Ordering::Relaxed)?;
        ctrl.store_u8(layout::CLI_LIVE, layout::LIVE_CONNECTED, Ordering::Release)?;
        let ch = Channel {
            role: Role::Client,
            ctrl,
            geometry: geo,
            tx: Mutex::new(tx),
            rx: Mutex::new(rx),
            notifier: Notifier::new(ctrl, layout::SRV_NOTIFY, layout::CLI_NOTIFY),
            ring_ref,
            closed: AtomicBool::new(false),
            broken: AtomicBool::new(false),
            _pages: pages,
            evt,
        };
        // Wake the server: it may be waiting for us.
        ch.evt.notify()?;
        Ok(ch)
    }

    /// Shares a channel and publishes `<path>/ring-ref` and `<path>/event-channel`,
    /// as libxenvchan's server does.
    pub async fn serve_xs(
        p: &dyn Platform,
        xs: &impl Xenstore,
        peer: DomId,
        path: &str,
        cfg: ChannelConfig,
    ) -> Result<Channel> {
        let ch = Channel::server(p, peer, cfg)?;
        xs.write(&format!("{path}/ring-ref"), &ch.ring_ref().to_string())
            .await?;
        xs.write(
            &format!("{path}/event-channel"),
            &ch.event_port().to_string(),
        )
        .await?;
        Ok(ch)
    }

    /// Waits (with a watch) until `<path>/ring-ref` and `<path>/event-channel`
    /// exist, then connects as the client.
    pub async fn connect_xs(
        p: &dyn Platform,
        xs: &impl Xenstore,
        peer: DomId,
        path: &str,
    ) -> Result<Channel> {
        let mut watch = xs.watch(path).await?;
        let ring_path = format!("{path}/ring-ref");
        let port_path = format!("{path}/event-channel");
        loop {
            let r = xs.read(&ring_path).await?;
            let e = xs.read(&port_path).await?;
            if let (Some(r), Some(e)) = (r, e) {
                return Channel::client(
                    p,
                    peer,
                    parse_id(&ring_path, &r)?,
                    parse_id(&port_path, &e)?,
                );
            }
            if watch.next().await.is_none() {
                return Err(Error::Xenstore {
                    op: "watch",
                    path: path.to_owned(),
                    source: io::Error::from(io::ErrorKind::UnexpectedEof),
                });
            }
        }
    }

    /// This end's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The grant ref of the control page (what goes in xenstore's `ring-ref`).
    pub fn ring_ref(&self) -> GrantRef {
        self.ring_ref
    }

    /// Our local event-channel port (on the server: what goes in `event-channel`).
    pub fn event_port(&self) -> u32 {
        self.evt.local_port()
    }

    /// The validated orders and placements.
    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    /// The event channel's pollable fd.
    pub fn event_fd(&self) -> RawFd {
        self.evt.as_raw_fd()
    }

    /// Drains pending events and re-arms delivery; whether any were pending.
    pub fn clear_events(&self) -> Result<bool> {
        self.evt.clear()
    }

    fn own_live(&self) -> usize {
        match self.role {
            Role::Server => layout::SRV_LIVE,
            Role::Client => layout::CLI_LIVE,
        }
    }

    fn peer_live(&self) -> usize {
        match self.role {
            Role::Server => layout::CLI_LIVE,
            Role::Client => layout::SRV_LIVE,
        }
    }

    /// Latches the channel broken on a protocol error, and closes it.
    fn check<T>(&self, r: Result<T>) -> Result<T> {
        if let Err(Error::Protocol(msg)) = &r {
            if !self.broken.swap(true, Ordering::AcqRel) {
                tracing::warn!(role = ?self.role, "closing channel: {msg}");
            }
            self.close();
        }
        r
    }

    fn usable(&self) -> Result<()> {
        if self.broken.load(Ordering::Acquire) {
            return Err(Error::Protocol("channel already failed".into()));
        }
        Ok(())
    }

    /// The peer's live byte (Acquire: everything the peer published before
    /// clearing it is visible after we see it cleared).
    pub fn peer_state(&self) -> Result<PeerState> {
        self.usable()?;
        let r = match self.ctrl.load_u8(self.peer_live(), Ordering::Acquire)? {
            layout::LIVE_CLOSED => Ok(PeerState::Closed),
            layout::LIVE_CONNECTED => Ok(PeerState::Connected),
            layout::LIVE_NOT_YET => Ok(PeerState::NotYet),
            v => Err(Error::Protocol(format!("bad live byte {v}"))),
        };
        self.check(r)
    }

    /// Whether [`Channel::close`] was called on this end.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    fn kick_if(&self, bit: u8) -> Result<()> {
        if self.check(self.notifier.take_request(bit))? {
            self.evt.notify()?;
        }
        Ok(())
    }

    fn writable_check(&self) -> Result<()> {
        self.usable()?;
        if self.is_closed() {
            return Err(Error::Invalid("write on a closed channel".into()));
        }
        if self.peer_state()? == PeerState::Closed {
            return Err(Error::PeerClosed);
        }
        Ok(())
    }

    /// Writes as much of `buf` as fits without waiting. `Ok(0)` means the ring is
    /// full; [`Error::PeerClosed`] that the peer is gone.
    pub fn write(&self, buf: &[u8]) -> Result<usize> {
        self.writable_check()?;
        if buf.is_empty() {
            return Ok(0);
        }
        let n = self.check(lock(&self.tx).write(buf))?;
        if n > 0 {
            self.kick_if(layout::NOTIFY_WRITE)?;
        }
        Ok(n)
    }

    /// Lets `f` fill the ring's free space in place (zero-copy), then publishes
    /// the count it returns. `Ok(None)`: the ring is full and `f` was not called.
    /// The segments are valid only during the call.
    pub fn write_with(
        &self,
        f: impl FnOnce(Segments) -> io::Result<usize>,
    ) -> Result<Option<usize>> {
        self.writable_check()?;
        let mut tx = lock(&self.tx);
        let segs = self.check(tx.free_segments())?;
        if segs[0].1 + segs[1].1 == 0 {
            return Ok(None);
        }
        let n = f(segs)?;
        if n == 0 {
            return Ok(Some(0));
        }
        tx.commit(n)?;
        drop(tx);
        self.kick_if(layout::NOTIFY_WRITE)?;
        Ok(Some(n))
    }

    /// Reads up to `buf.len()` bytes without waiting. `Ok(0)` means nothing is
    /// ready yet (or `buf` is empty); [`Error::PeerClosed`] means end of stream: the
    /// peer closed and every byte it wrote has been read.
    pub fn read(&self, buf: &mut [u8]) -> Result<usize> {
        self.usable()?;
        if buf.is_empty() {
            return Ok(0);
        }
        let mut rx = lock(&self.rx);
        let mut n = self.check(rx.read(buf))?;
        if n == 0 {
            if self.peer_state()? != PeerState::Closed {
                return Ok(0);
            }
            // The peer published its last bytes before clearing its live byte, and
            // we saw that with Acquire: one more look finds them all.
            n = self.check(rx.read(buf))?;
            if n == 0 {
                return Err(Error::PeerClosed);
            }
        }
        drop(rx);
        self.kick_if(layout::NOTIFY_READ)?;
        Ok(n)
    }

    /// Lets `f` take ready data in place (zero-copy), then releases the count it
    /// returns. `Ok(None)`: nothing ready and `f` was not called;
    /// [`Error::PeerClosed`]: end of stream. The segments are valid only during the call.
    pub fn read_with(
        &self,
        f: impl FnOnce(Segments) -> io::Result<usize>,
    ) -> Result<Option<usize>> {
        self.usable()?;
        let mut rx = lock(&self.rx);
        let mut segs = self.check(rx.data_segments())?;
        if segs[0].1 == 0 {
            if self.peer_state()? != PeerState::Closed {
                return Ok(None);
            }
            segs = self.check(rx.data_segments())?;
            if segs[0].1 == 0 {
                return Err(Error::PeerClosed);
            }
        }
        let n = f(segs)?;
        if n == 0 {
            return Ok(Some(0));
        }
        rx.consume(n)?;
        drop(rx);
        self.kick_if(layout::NOTIFY_READ)?;
        Ok(Some(n))
    }

    /// Before waiting to read: asks the peer to kick us on its next write, then
    /// looks again. `true` means there is no need to wait (data, end of stream or
    /// an error to report).
    pub fn prepare_read_wait(&self) -> Result<bool> {
        self.usable()?;
        self.check(self.notifier.request(layout::NOTIFY_WRITE))?;
        let ready = match self.check(lock(&self.rx).readable()) {
            Ok(n) => n,
            Err(_) => return Ok(true),
        };
        Ok(ready > 0 || self.peer_state()? == PeerState::Closed)
    }

    /// Before waiting to write: asks the peer to kick us when it consumes, then
    /// looks again. `true` means there is no need to wait.
    pub fn prepare_write_wait(&self) -> Result<bool> {
        self.prepare_write_wait_for(1)
    }

    /// Like [`Channel::prepare_write_wait`], but there is only no need to wait once
    /// `need` bytes are free (a writer of whole frames cannot use less).
    pub fn prepare_write_wait_for(&self, need: u32) -> Result<bool> {
        self.usable()?;
        self.check(self.notifier.request(layout::NOTIFY_READ))?;
        let space = match self.check(lock(&self.tx).writable()) {
            Ok(n) => n,
            Err(_) => return Ok(true),
        };
        Ok(space >= need.max(1) || self.is_closed() || self.peer_state()? == PeerState::Closed)
    }

    /// Whether a waiter to read (`read`) or to write has anything to do: data or
    /// space, the peer gone, our end closed, or an error to report. Only loads
    /// (Acquire, through the ring's accessors): what a spin polls.
    pub fn wait_over(&self, read: bool) -> bool {
        let n = if read {
            self.readable()
        } else {
            if self.is_closed() {
                return true;
            }
            self.writable()
        };
        match n {
            Ok(0) => !matches!(
                self.peer_state(),
                Ok(PeerState::Connected | PeerState::NotYet)
            ),
            _ => true,
        }
    }

    /// Bytes ready to read (one validated look at the peer's index).
    pub fn readable(&self) -> Result<u32> {
        self.usable()?;
        self.check(lock(&self.rx).readable())
    }

    /// Free space to write (one validated look at the peer's index).
    pub fn writable(&self) -> Result<u32> {
        self.usable()?;
        self.check(lock(&self.tx).writable())
    }

    /// Closes our end: clears our live byte and kicks the peer. The peer still
    /// reads everything we wrote before it sees the end. We may still read.
    pub fn close(&self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        // Release: every index we published is visible before the peer sees 0.
        let _ = self
            .ctrl
            .store_u8(self.own_live(), layout::LIVE_CLOSED, Ordering::Release);
        let _ = self.evt.notify();
    }
}

impl Drop for Channel {
    fn drop(&mut self) {
        self.close();
    }
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("role", &self.role)
            .field("geometry", &self.geometry)
            .field("ring_ref", &self.ring_ref)
            .field("port", &self.evt.local_port())
            .finish_non_exhaustive()
    }
}

fn parse_id(path: &str, v: &str) -> Result<u32> {
    match v.trim().parse::<u32>() {
        Ok(n) if n != 0 => Ok(n),
        _ => Err(Error::Protocol(format!(
            "{path}: not a non-zero number ({} bytes)",
            v.len()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::platform::heap::HeapHost;
    use crate::xenstore::MemStore;

    fn pair(cfg: ChannelConfig) -> (HeapHost, Channel, Channel) {
        let host = HeapHost::new();
        let s = Channel::server(&host.domain(1), 0, cfg).unwrap();
        let c = Channel::client(&host.domain(0), 1, s.ring_ref(), s.event_port()).unwrap();
        (host, s, c)
    }

    #[test]
    fn both_ways_in_page_and_granted() {
        for (l, r) in [(10, 11), (11, 10), (12, 16), (20, 11), (13, 13)] {
            let (_h, s, c) = pair(ChannelConfig {
                left_order: l,
                right_order: r,
            });
            assert_eq!(s.peer_state().unwrap(), PeerState::Connected);
            assert_eq!(c.peer_state().unwrap(), PeerState::Connected);
            assert_eq!(c.write(b"to server").unwrap(), 9);
            assert_eq!(s.write(b"to client").unwrap(), 9);
            let mut b = [0u8; 64];
            assert_eq!(s.read(&mut b).unwrap(), 9);
            assert_eq!(&b[..9], b"to server");
            assert_eq!(c.read(&mut b).unwrap(), 9);
            assert_eq!(&b[..9], b"to client");
            assert_eq!(c.writable().unwrap(), 1 << l);
            assert_eq!(s.writable().unwrap(), 1 << r);
        }
    }

    #[test]
    fn server_page_matches_vchan() {
        let host = HeapHost::new();
        let s = Channel::server(
            &host.domain(1),
            0,
            ChannelConfig {
                left_order: 11,
                right_order: 13,
            },
        )
        .unwrap();
        let c = &s.ctrl;
        assert_eq!(c.load_u16(16, Ordering::Relaxed).unwrap(), 11);
        assert_eq!(c.load_u16(18, Ordering::Relaxed).unwrap(), 13);
        assert_eq!(c.load_u8(20, Ordering::Relaxed).unwrap(), 2, "cli_live");
        assert_eq!(c.load_u8(21, Ordering::Relaxed).unwrap(), 1, "srv_live");
        assert_eq!(c.load_u8(22, Ordering::Relaxed).unwrap(), 1, "cli_notify");
        assert_eq!(s._pages.len(), 2);
        let refs = s._pages[1].grant_refs();
        assert_eq!(refs.len(), 2);
        assert_eq!(c.load_u32(24, Ordering::Relaxed).unwrap(), refs[0]);
        assert_eq!(c.load_u32(28, Ordering::Relaxed).unwrap(), refs[1]);
        assert_eq!(s.peer_state().unwrap(), PeerState::NotYet);
        let cl = Channel::client(&host.domain(0), 1, s.ring_ref(), s.event_port()).unwrap();
        assert_eq!(c.load_u8(20, Ordering::Relaxed).unwrap(), 1, "cli_live");
        assert_eq!(c.load_u8(23, Ordering::Relaxed).unwrap(), 1, "srv_notify");
        assert!(s.clear_events().unwrap(), "client kicked the server");
        drop(cl);
        assert_eq!(s.peer_state().unwrap(), PeerState::Closed);
    }

    #[test]
    fn eof_is_exact() {
        let (_h, s, c) = pair(ChannelConfig::default());
        c.write(b"last words").unwrap();
        c.close();
        assert!(matches!(c.write(b"x"), Err(Error::Invalid(_))));
        assert!(matches!(s.write(b"x"), Err(Error::PeerClosed)));
        let mut b = [0u8; 4];
        let mut got = Vec::new();
        loop {
            match s.read(&mut b) {
                Ok(n) => got.extend_from_slice(&b[..n]),
                Err(Error::PeerClosed) => break,
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(got, b"last words");
    }

    #[test]
    fn kicks_only_when_requested() {
        let (_h, s, c) = pair(ChannelConfig::default());
        s.clear_events().unwrap();
        c.clear_events().unwrap();
        // The server asked at setup to hear the client's first write.
        c.write(b"a").unwrap();
        assert!(s.clear_events().unwrap());
        // Request consumed: no kick for the next write.
        c.write(b"b").unwrap();
        assert!(!s.clear_events().unwrap());
        // Server arms (it would sleep): next write kicks again.
        assert!(s.prepare_read_wait().unwrap(), "data already there");
        c.write(b"c").unwrap();
        assert!(s.clear_events().unwrap());
        // Nobody asked for read notifications: consuming does not kick.
        let mut b = [0u8; 8];
        assert_eq!(s.read(&mut b).unwrap(), 3);
        assert!(!c.clear_events().unwrap());
    }

    #[test]
    fn hostile_index_breaks_the_channel() {
        let (_h, s, c) = pair(ChannelConfig::default());
        // The client claims to have produced more than the ring holds.
        c.ctrl
            .store_u32(layout::LEFT + layout::PROD, 1 << 20, Ordering::Relaxed)
            .unwrap();
        assert!(matches!(s.read(&mut [0; 8]), Err(Error::Protocol(_))));
        // Latched, and our live byte is cleared so the peer sees us gone.
        assert!(matches!(s.write(b"x"), Err(Error::Protocol(_))));
        assert_eq!(c.peer_state().unwrap(), PeerState::Closed);
    }

    #[test]
    fn hostile_control_pages_are_refused() {
        let host = HeapHost::new();
        let srv = host.domain(1);
        let cli = host.domain(0);
        let bad: &[(u16, u16)] = &[(9, 12), (10, 10), (21, 12), (10, 20), (0, 0)];
        for &(l, r) in bad {
            let s = Channel::server(&srv, 0, ChannelConfig::default()).unwrap();
            s.ctrl
                .store_u16(layout::LEFT_ORDER, l, Ordering::Relaxed)
                .unwrap();
            s.ctrl
                .store_u16(layout::RIGHT_ORDER, r, Ordering::Relaxed)
                .unwrap();
            let e = Channel::client(&cli, 1, s.ring_ref(), s.event_port()).unwrap_err();
            assert!(matches!(e, Error::Protocol(_)), "{l} {r}: {e}");
        }
        // Grants naming pages not granted to us.
        let s = Channel::server(&srv, 0, ChannelConfig::default()).unwrap();
        s.ctrl
            .store_u32(layout::GRANTS, 4242, Ordering::Relaxed)
            .unwrap();
        assert!(Channel::client(&cli, 1, s.ring_ref(), s.event_port()).is_err());
        // Nothing leaked on the client side.
        assert_eq!(host.open_ports(0), 0);
    }

    #[tokio::test]
    async fn xenstore_rendezvous() {
        let host = HeapHost::new();
        let xs = MemStore::new();
        let path = "/local/domain/1/data/xenvt";
        let cli = host.domain(0);
        let xs2 = xs.clone();
        let waiter = tokio::spawn(async move {
            Channel::connect_xs(&cli, &xs2, 1, path)
                .await
                .map(|c| c.role())
        });
        tokio::task::yield_now().await;
        let s = Channel::serve_xs(&host.domain(1), &xs, 0, path, ChannelConfig::default())
            .await
            .unwrap();
        assert_eq!(
            xs.read(&format!("{path}/ring-ref")).await.unwrap(),
            Some(s.ring_ref().to_string())
        );
        assert_eq!(waiter.await.unwrap().unwrap(), Role::Client);
        xs.write(&format!("{path}/ring-ref"), "junk").await.unwrap();
        let e = Channel::connect_xs(&host.domain(0), &xs, 1, path)
            .await
            .unwrap_err();
        assert!(matches!(e, Error::Protocol(_)));
    }
}
