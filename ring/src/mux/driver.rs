//! The driver: one task per channel that owns the rings, every stream and every
//! stream's socket, so the hot paths need no locks and no handoffs.
//!
//! Each turn it takes commands from handles, parses whole frames in place and
//! forwards RW payloads straight from the ring to their sockets, flushes what
//! sockets did not take earlier, writes queued control frames, then reads ready
//! sockets straight into the ring behind a reserved header. When nothing moves it
//! posts vchan notify requests, looks again, and sleeps on the event channel and
//! the sockets' readiness.

use std::collections::{BTreeMap, VecDeque};
use std::future::poll_fn;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use futures::task::AtomicWaker;
use tokio::io::unix::AsyncFd;
use tokio::io::{Interest, Ready};
use tokio::sync::{mpsc, oneshot, watch};

use super::frame::{
    self, Header, Hello, Op, Violation, HDR_LEN, HELLO_MAX, SHUT_RCV, SHUT_SEND, VERSION,
};
use super::segs::Segs;
use super::{
    bump, CloseReason, Cmd, Counters, IncomingRequest, MuxConfig, Side, Socket, StreamEnd,
    StreamHandle,
};
use crate::channel::Channel;
use crate::ratelimit::RateLimit;
use crate::{Error, Result};

/// Turns of the loop before yielding to other tasks.
const BUDGET: usize = 32;
/// Frames handled per ring look, so one busy peer cannot starve the socket side.
const FRAMES_PER_BATCH: usize = 256;
/// Log lines per window per multiplexer (peer-triggered lines only).
const LOG_BURST: u32 = 10;
const LOG_WINDOW: Duration = Duration::from_secs(10);

/// The event fd, borrowed from the channel's event channel.
struct EvFd(RawFd);

impl AsRawFd for EvFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

const RD: u8 = 1;
const WR: u8 = 2;

/// Which streams' sockets became ready since the driver last looked, so a turn
/// touches only those sockets and not every idle one.
#[derive(Default)]
struct Wakeups {
    ready: Mutex<Vec<(u32, u8)>>,
    driver: AtomicWaker,
}

/// The waker a stream's socket holds for one direction. tokio consumes a waker
/// when it fires, so each registration adds at most one entry to the list.
struct StreamWaker {
    id: u32,
    dir: u8,
    wk: Arc<Wakeups>,
}

impl Wake for StreamWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.wk
            .ready
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((self.id, self.dir));
        self.wk.driver.wake();
    }
}

enum Phase {
    /// We sent REQUEST; waiting for RESPONSE or RST.
    Requesting {
        service: String,
        reply: oneshot::Sender<Result<StreamHandle>>,
        done_rx: oneshot::Receiver<StreamEnd>,
    },
    /// The peer sent REQUEST; waiting for the local accept or refuse.
    PendingAccept,
    /// Data flows.
    Connected,
}

struct Stream {
    phase: Phase,
    rd_waker: Waker,
    wr_waker: Waker,
    /// The socket may have data to read (its readiness was not seen pending since).
    rd_poll: bool,
    /// The socket may take data.
    wr_poll: bool,
    sock: Option<Socket>,
    done: Option<oneshot::Sender<StreamEnd>>,
    // Our sending direction (socket -> ring).
    tx_cnt: u32,
    peer_buf_alloc: u32,
    peer_fwd: u32,
    /// No more data from us: our socket hit EOF or the peer stopped reading.
    tx_eof: bool,
    stalled: bool,
    // Our receiving direction (ring -> socket).
    buf: Vec<u8>,
    head: usize,
    rx_cnt: u32,
    fwd_cnt: u32,
    /// The `fwd_cnt` we last told the peer.
    adv_fwd: u32,
    /// The peer sent SHUTDOWN(send).
    rx_eof: bool,
    /// We shut down our socket's write half.
    wr_shut: bool,
    credit_queued: bool,
    /// Who began the end: `Some(true)` the peer (SHUTDOWN or RST), `Some(false)`
    /// our socket's EOF; set once, by whichever the driver saw first.
    first_shut: Option<bool>,
}

impl Stream {
    fn new(
        id: u32,
        wk: &Arc<Wakeups>,
        phase: Phase,
        sock: Option<Socket>,
        done: Option<oneshot::Sender<StreamEnd>>,
    ) -> Self {
        let waker = |dir| {
            Waker::from(Arc::new(StreamWaker {
                id,
                dir,
                wk: wk.clone(),
            }))
        };
        Stream {
            phase,
            rd_waker: waker(RD),
            wr_waker: waker(WR),
            rd_poll: true,
            wr_poll: true,
            sock,
            done,
            tx_cnt: 0,
            peer_buf_alloc: 0,
            peer_fwd: 0,
            tx_eof: false,
            stalled: false,
            buf: Vec::new(),
            head: 0,
            rx_cnt: 0,
            fwd_cnt: 0,
            adv_fwd: 0,
            rx_eof: false,
            wr_shut: false,
            credit_queued: false,
            first_shut: None,
        }
    }

    /// Notes that one side shut down; only the first one counts.
    fn shut_by(&mut self, peer: bool) {
        self.first_shut.get_or_insert(peer);
    }

    /// Whether the peer began the end. Only our own socket's EOF coming first
    /// makes it false, so a peer cannot claim the end was ours.
    fn peer_first(&self) -> bool {
        self.first_shut != Some(false)
    }

    fn buffered(&self) -> usize {
        self.buf.len() - self.head
    }

    fn credit(&self) -> u32 {
        self.peer_buf_alloc
            .saturating_sub(self.tx_cnt.wrapping_sub(self.peer_fwd))
    }

    fn connected(&self) -> bool {
        matches!(self.phase, Phase::Connected)
    }
}

/// A queued control frame; credit fields are filled in when it is written.
struct Ctrl {
    op: Op,
    flags: u8,
    id: u32,
    payload: Vec<u8>,
}

pub(super) struct Driver {
    // Declared before `chan`: deregister the fd before the channel closes it.
    evfd: AsyncFd<EvFd>,
    chan: Channel,
    st: State,
    cmd_rx: mpsc::UnboundedReceiver<Cmd>,
}

struct State {
    cfg: MuxConfig,
    side: Side,
    counters: Arc<Counters>,
    cmd_weak: mpsc::WeakUnboundedSender<Cmd>,
    inc_tx: Option<mpsc::Sender<IncomingRequest>>,
    closed_tx: watch::Sender<Option<CloseReason>>,
    streams: BTreeMap<u32, Stream>,
    wk: Arc<Wakeups>,
    ctrl: VecDeque<Ctrl>,
    next_id: u32,
    /// Round-robin cursor for the sending side.
    rr: u32,
    /// Bounds the log lines a peer can cause.
    log: RateLimit,
    hello_done: bool,
    fatal: Option<CloseReason>,
}

fn readv(fd: RawFd, iov: &[libc::iovec; 2], cnt: usize) -> io::Result<usize> {
    // SAFETY: the iovecs describe free ring space reserved for us by the producer
    // lock during this callback; the kernel writes at most their lengths there and
    // no Rust reference to that memory exists.
    let n = unsafe { libc::readv(fd, iov.as_ptr(), cnt as libc::c_int) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

fn sendv(fd: RawFd, iov: &mut [libc::iovec]) -> io::Result<usize> {
    // SAFETY: an all-zero msghdr is valid (no name, no control data).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = iov.len() as _;
    // SAFETY: the iovecs describe ring data valid during the read callback (or a
    // private buffer); the kernel only reads them. `msg` and `iov` outlive the call.
    let n = unsafe { libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

fn buf_iovec(b: &[u8]) -> libc::iovec {
    libc::iovec {
        iov_base: b.as_ptr() as *mut libc::c_void,
        iov_len: b.len(),
    }
}

fn send_buf(fd: RawFd, b: &[u8]) -> io::Result<usize> {
    sendv(fd, &mut [buf_iovec(b)])
}

fn chan_reason(e: Error) -> CloseReason {
    match e {
        Error::PeerClosed => CloseReason::PeerClosed,
        e => CloseReason::Channel(e.to_string()),
    }
}

impl State {
    fn fatal(&mut self, v: Violation) {
        if self.fatal.is_none() {
            tracing::warn!(side = ?self.side, "mux: closing channel: {v}");
            self.fatal = Some(CloseReason::Protocol(v.to_string()));
        }
    }

    fn queue(&mut self, op: Op, flags: u8, id: u32, payload: Vec<u8>) {
        self.ctrl.push_back(Ctrl {
            op,
            flags,
            id,
            payload,
        });
        // Every stream queues a handful of frames at most; beyond that the peer
        // makes us answer faster than it drains our ring.
        if self.ctrl.len() > 4 * self.cfg.max_streams as usize + 64 {
            self.fatal(Violation::ControlFlood);
        }
    }

    fn sync_open(&self) {
        self.counters
            .streams_open
            .store(self.streams.len() as u64, Ordering::Relaxed);
    }

    fn alloc_id(&mut self) -> Option<u32> {
        for _ in 0..=self.cfg.max_streams {
            let id = self.next_id;
            self.next_id = self.next_id.wrapping_add(2);
            if self.next_id < 2 {
                self.next_id = if self.side == Side::Guest { 1 } else { 2 };
            }
            if id != 0 && !self.streams.contains_key(&id) {
                return Some(id);
            }
        }
        None
    }

    /// Ends a stream. `rst`: tell the peer. The socket closes abortively unless the
    /// stream ended cleanly.
    fn end(&mut self, id: u32, end: StreamEnd, rst: bool) {
        let Some(s) = self.streams.remove(&id) else {
            return;
        };
        if rst {
            bump(&self.counters.resets_sent, 1);
            self.queue(Op::Rst, 0, id, Vec::new());
        }
        if let Some(sock) = &s.sock {
            if !matches!(end, StreamEnd::Closed { .. }) {
                sock.abort_on_close();
            }
        }
        self.counters
            .bytes_buffered
            .fetch_sub(s.buffered() as u64, Ordering::Relaxed);
        match s.phase {
            Phase::Requesting { service, reply, .. } => {
                let err = match end {
                    StreamEnd::ResetByPeer { .. } => Error::Refused(service),
                    StreamEnd::ResetLocal(m) => Error::Protocol(m),
                    _ => Error::MuxClosed(self.fatal.clone().unwrap_or(CloseReason::Shutdown)),
                };
                let _ = reply.send(Err(err));
            }
            _ => {
                if let Some(d) = s.done {
                    let _ = d.send(end);
                }
            }
        }
        self.sync_open();
    }

    /// A stream-level violation: reset that stream only.
    fn violation(&mut self, id: u32, what: &str) {
        bump(&self.counters.stream_violations, 1);
        if let Some(suppressed) = self.log.allow() {
            tracing::warn!(side = ?self.side, stream = id, suppressed, "mux: resetting stream: {what}");
        }
        self.end(id, StreamEnd::ResetLocal(what.to_owned()), true);
    }

    fn local_error(&mut self, id: u32, what: &str, e: io::Error) {
        tracing::debug!(stream = id, "mux: {what}: {e}");
        self.end(id, StreamEnd::ResetLocal(format!("{what}: {e}")), true);
    }

    fn maybe_credit(&mut self, id: u32) {
        let threshold = (self.cfg.stream_buf / 4).max(1);
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        if !s.rx_eof && !s.credit_queued && s.fwd_cnt.wrapping_sub(s.adv_fwd) >= threshold {
            s.credit_queued = true;
            self.queue(Op::CreditUpdate, 0, id, Vec::new());
        }
    }

    fn maybe_close(&mut self, id: u32) {
        let Some(s) = self.streams.get(&id) else {
            return;
        };
        if s.connected() && s.tx_eof && s.rx_eof && s.buffered() == 0 && s.wr_shut {
            let peer_first = s.peer_first();
            self.end(id, StreamEnd::Closed { peer_first }, false);
        }
    }

    /// Our socket read EOF: tell the peer we send no more.
    fn local_eof(&mut self, id: u32) {
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        s.tx_eof = true;
        s.shut_by(false);
        self.queue(Op::Shutdown, SHUT_SEND, id, Vec::new());
        self.maybe_close(id);
    }

    /// Takes the credit fields of a frame from the peer; false if they lie.
    fn take_credit(&mut self, id: u32, h: &Header) -> bool {
        let Some(s) = self.streams.get_mut(&id) else {
            return true;
        };
        // The peer cannot have forwarded more than we sent, nor go backwards.
        let adv = h.fwd_cnt.wrapping_sub(s.peer_fwd);
        if adv > s.tx_cnt.wrapping_sub(s.peer_fwd) {
            return false;
        }
        s.peer_fwd = h.fwd_cnt;
        s.peer_buf_alloc = h.buf_alloc;
        if s.stalled && s.credit() > 0 {
            s.stalled = false;
        }
        true
    }

    /// Parses and handles whole frames in the ring; returns the bytes consumed.
    fn on_frames(&mut self, segs: Segs, stop_after_hello: bool) -> usize {
        let mut off = 0;
        for _ in 0..FRAMES_PER_BATCH {
            let have = segs.len() - off;
            if have == 0 || self.fatal.is_some() {
                break;
            }
            let mut hb = [0u8; HDR_LEN];
            if have < HDR_LEN || !segs.copy_out(off, &mut hb) {
                self.fatal(Violation::Truncated {
                    need: HDR_LEN as u64,
                    have: have as u64,
                });
                break;
            }
            let h = match Header::parse(&hb) {
                Ok(h) => h,
                Err(v) => {
                    self.fatal(v);
                    break;
                }
            };
            if h.frame_len() > have {
                self.fatal(Violation::Truncated {
                    need: h.frame_len() as u64,
                    have: have as u64,
                });
                break;
            }
            self.on_frame(&h, segs, off + HDR_LEN);
            off += h.frame_len();
            if stop_after_hello && self.hello_done {
                break;
            }
        }
        off
    }

    fn on_frame(&mut self, h: &Header, segs: Segs, poff: usize) {
        let id = h.stream;
        if !self.hello_done {
            if h.op != Op::Hello {
                return self.fatal(Violation::NotHello);
            }
            let mut p = [0u8; HELLO_MAX as usize];
            let p = &mut p[..h.len as usize];
            segs.copy_out(poff, p);
            match Hello::parse(p) {
                Ok(hello) if hello.version == VERSION => self.hello_done = true,
                Ok(hello) => {
                    tracing::warn!(
                        ours = VERSION,
                        theirs = hello.version,
                        "mux: version mismatch"
                    );
                    self.fatal = Some(CloseReason::Version {
                        ours: VERSION,
                        theirs: hello.version,
                    });
                }
                Err(v) => self.fatal(v),
            }
            return;
        }
        if h.op.carries_credit() && h.op != Op::Request && !self.take_credit(id, h) {
            return self.violation(id, "credit fields lie (fwd_cnt beyond bytes sent)");
        }
        match h.op {
            Op::Hello => self.fatal(Violation::UnexpectedHello),
            Op::Request => self.on_request(h, segs, poff),
            Op::Response => match self.streams.get_mut(&id) {
                Some(s) => {
                    let phase = std::mem::replace(&mut s.phase, Phase::Connected);
                    match phase {
                        Phase::Requesting { reply, done_rx, .. } => {
                            bump(&self.counters.streams_opened, 1);
                            if reply.send(Ok(StreamHandle { id, rx: done_rx })).is_err() {
                                // Nobody waits for it any more: abandon the stream.
                                self.end(id, StreamEnd::ResetLocal("open cancelled".into()), true);
                            }
                        }
                        other => {
                            s.phase = other;
                            self.violation(id, "RESPONSE on a stream not requested");
                        }
                    }
                }
                None => self.ignored(h),
            },
            Op::Rst => {
                if let Some(s) = self.streams.get(&id) {
                    let peer_first = s.peer_first();
                    bump(&self.counters.resets_received, 1);
                    self.end(id, StreamEnd::ResetByPeer { peer_first }, false);
                }
            }
            Op::Shutdown => match self.streams.get_mut(&id) {
                Some(s) if s.connected() => {
                    s.shut_by(true);
                    if h.flags & SHUT_SEND != 0 {
                        s.rx_eof = true;
                    }
                    if h.flags & SHUT_RCV != 0 && !s.tx_eof {
                        s.tx_eof = true;
                        self.queue(Op::Shutdown, SHUT_SEND, id, Vec::new());
                    }
                    self.maybe_close(id);
                }
                Some(_) => self.violation(id, "SHUTDOWN before the stream was open"),
                None => self.ignored(h),
            },
            Op::Rw => self.on_rw(h, segs, poff),
            Op::CreditUpdate => {}
            Op::CreditRequest => match self.streams.get_mut(&id) {
                Some(s) if s.connected() && !s.rx_eof && !s.credit_queued => {
                    s.credit_queued = true;
                    self.queue(Op::CreditUpdate, 0, id, Vec::new());
                }
                _ => {}
            },
        }
    }

    fn ignored(&mut self, h: &Header) {
        // Late frames for a stream that just ended are normal (they crossed our RST
        // or our close); they are only counted.
        tracing::trace!(op = ?h.op, stream = h.stream, "mux: frame for unknown stream");
    }

    fn on_request(&mut self, h: &Header, segs: Segs, poff: usize) {
        let id = h.stream;
        if self.side.owns(id) {
            return self.fatal(Violation::WrongParity(id));
        }
        let mut name = [0u8; frame::MAX_SERVICE as usize];
        let name = &mut name[..h.len as usize];
        segs.copy_out(poff, name);
        if !frame::valid_service(name) {
            return self.fatal(Violation::BadService);
        }
        // Checked printable ASCII just above, so this cannot fail.
        let service = String::from_utf8_lossy(name).into_owned();
        if self.streams.contains_key(&id) {
            return self.violation(id, "REQUEST for a stream id in use");
        }
        let refuse = |st: &mut State, why: &str| {
            bump(&st.counters.refused, 1);
            bump(&st.counters.resets_sent, 1);
            if let Some(suppressed) = st.log.allow() {
                tracing::info!(side = ?st.side, stream = id, service, suppressed, "mux: refusing stream: {why}");
            }
            st.queue(Op::Rst, 0, id, Vec::new());
        };
        if self.streams.len() >= self.cfg.max_streams as usize {
            return refuse(self, "too many streams");
        }
        if h.fwd_cnt != 0 {
            return refuse(self, "REQUEST with non-zero fwd_cnt");
        }
        let (Some(cmd), Some(inc)) = (self.cmd_weak.upgrade(), self.inc_tx.as_ref()) else {
            return refuse(self, "shutting down");
        };
        let req = IncomingRequest {
            id,
            service: service.clone(),
            cmd: Some(cmd),
        };
        if let Err(e) = inc.try_send(req) {
            let mut req = e.into_inner();
            // Defuse its Drop: we answer right here.
            req.cmd = None;
            return refuse(self, "nobody is accepting");
        }
        let mut s = Stream::new(id, &self.wk, Phase::PendingAccept, None, None);
        s.peer_buf_alloc = h.buf_alloc;
        self.streams.insert(id, s);
        self.sync_open();
    }

    fn on_rw(&mut self, h: &Header, segs: Segs, poff: usize) {
        let id = h.stream;
        let stream_buf = self.cfg.stream_buf;
        let Some(s) = self.streams.get_mut(&id) else {
            return self.ignored(h);
        };
        if !s.connected() || s.rx_eof {
            return self.violation(id, "data on a stream that is not open for it");
        }
        // What the peer may have in flight is bounded by what we last told it.
        let in_flight = u64::from(s.rx_cnt.wrapping_sub(s.adv_fwd)) + u64::from(h.len);
        if in_flight > u64::from(stream_buf) {
            return self.violation(id, "credit overrun");
        }
        let len = h.len as usize;
        s.rx_cnt = s.rx_cnt.wrapping_add(h.len);
        bump(&self.counters.bytes_rx, len as u64);
        // One sendmsg takes what is still buffered, then this payload straight
        // from the ring.
        let old = s.buffered();
        let mut sent = 0;
        let mut err = None;
        if let Some(sock) = &s.sock {
            let mut cx = Context::from_waker(&s.wr_waker);
            match sock.poll_write_ready(&mut cx) {
                Poll::Ready(Ok(())) => {
                    let fd = sock.as_raw_fd();
                    let (ring, cnt) = segs.iovecs(poff, len);
                    let mut iov = [buf_iovec(&s.buf[s.head..]), ring[0], ring[1]];
                    let iov = if old > 0 {
                        &mut iov[..1 + cnt]
                    } else {
                        &mut iov[1..1 + cnt]
                    };
                    match sock.try_io(Interest::WRITABLE, || sendv(fd, iov)) {
                        Ok(n) => sent = n.min(old + len),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            // Registers for writability (readiness was just cleared).
                            if sock.poll_write_ready(&mut cx).is_pending() {
                                s.wr_poll = false;
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => err = Some(e),
                    }
                }
                Poll::Ready(Err(e)) => err = Some(e),
                Poll::Pending => s.wr_poll = false,
            }
        }
        if let Some(e) = err {
            return self.local_error(id, "socket write", e);
        }
        s.fwd_cnt = s.fwd_cnt.wrapping_add(sent as u32);
        let from_buf = sent.min(old);
        s.head += from_buf;
        self.counters
            .bytes_buffered
            .fetch_sub(from_buf as u64, Ordering::Relaxed);
        let from_ring = sent - from_buf;
        if s.buffered() == 0 {
            s.buf.clear();
            s.head = 0;
        }
        if from_ring < len {
            // Drop the delivered prefix now and then, so the buffer stays within
            // about twice the credit (amortised: each byte moves at most once more).
            if s.head > 0 && s.head >= s.buffered() {
                s.buf.drain(..s.head);
                s.head = 0;
            }
            segs.append_to(poff + from_ring, len - from_ring, &mut s.buf);
            bump(&self.counters.bytes_buffered, (len - from_ring) as u64);
        }
        self.maybe_credit(id);
    }

    /// Writes buffered bytes and pending half-closes to the sockets.
    fn flush(&mut self) -> bool {
        let mut progress = false;
        let ids: Vec<u32> = self
            .streams
            .iter()
            .filter(|(_, s)| {
                s.connected()
                    && if s.buffered() > 0 {
                        s.wr_poll
                    } else {
                        s.rx_eof && !s.wr_shut
                    }
            })
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            let Some(s) = self.streams.get_mut(&id) else {
                continue;
            };
            let Some(sock) = &s.sock else { continue };
            let mut err = None;
            let mut cx = Context::from_waker(&s.wr_waker);
            while s.buffered() > 0 {
                match sock.poll_write_ready(&mut cx) {
                    Poll::Pending => {
                        s.wr_poll = false;
                        break;
                    }
                    Poll::Ready(Err(e)) => {
                        err = Some(e);
                        break;
                    }
                    Poll::Ready(Ok(())) => {}
                }
                let fd = sock.as_raw_fd();
                let pending = &s.buf[s.head..];
                match sock.try_io(Interest::WRITABLE, || send_buf(fd, pending)) {
                    Ok(n) => {
                        let n = n.min(pending.len());
                        s.head += n;
                        s.fwd_cnt = s.fwd_cnt.wrapping_add(n as u32);
                        self.counters
                            .bytes_buffered
                            .fetch_sub(n as u64, Ordering::Relaxed);
                        progress = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        err = Some(e);
                        break;
                    }
                }
            }
            if let Some(e) = err {
                self.local_error(id, "socket write", e);
                continue;
            }
            if s.buffered() == 0 {
                s.head = 0;
                s.buf.clear();
                if s.buf.capacity() > 64 << 10 {
                    s.buf = Vec::new();
                }
                if s.rx_eof && !s.wr_shut {
                    s.wr_shut = true;
                    progress = true;
                    if let Err(e) = sock.shutdown_write() {
                        self.local_error(id, "socket shutdown", e);
                        continue;
                    }
                }
            }
            self.maybe_credit(id);
            self.maybe_close(id);
        }
        progress
    }

    /// Marks the streams whose sockets signalled readiness.
    fn take_wakeups(&mut self) {
        let ready = std::mem::take(&mut *self.wk.ready.lock().unwrap_or_else(|p| p.into_inner()));
        for (id, dir) in ready {
            if let Some(s) = self.streams.get_mut(&id) {
                s.rd_poll |= dir == RD;
                s.wr_poll |= dir == WR;
            }
        }
    }

    fn on_cmd(&mut self, cmd: Cmd) -> bool {
        match cmd {
            Cmd::Open {
                service,
                sock,
                reply,
            } => {
                if self.streams.len() >= self.cfg.max_streams as usize {
                    let _ = reply.send(Err(Error::Limit(format!(
                        "{} streams open",
                        self.streams.len()
                    ))));
                    return true;
                }
                let Some(id) = self.alloc_id() else {
                    let _ = reply.send(Err(Error::Limit("no free stream id".into())));
                    return true;
                };
                let (done, done_rx) = oneshot::channel();
                let payload = service.as_bytes().to_vec();
                let phase = Phase::Requesting {
                    service,
                    reply,
                    done_rx,
                };
                let s = Stream::new(id, &self.wk, phase, Some(sock), Some(done));
                self.streams.insert(id, s);
                self.sync_open();
                self.queue(Op::Request, 0, id, payload);
            }
            Cmd::Accept { id, sock, done } => match self.streams.get_mut(&id) {
                Some(s) if matches!(s.phase, Phase::PendingAccept) => {
                    s.phase = Phase::Connected;
                    s.sock = Some(sock);
                    s.done = Some(done);
                    bump(&self.counters.streams_accepted, 1);
                    self.queue(Op::Response, 0, id, Vec::new());
                }
                // The peer gave up on it meanwhile.
                _ => {
                    let _ = done.send(StreamEnd::ResetByPeer { peer_first: true });
                }
            },
            Cmd::Refuse { id } => {
                if matches!(
                    self.streams.get(&id).map(|s| &s.phase),
                    Some(Phase::PendingAccept)
                ) {
                    self.streams.remove(&id);
                    self.sync_open();
                    bump(&self.counters.refused, 1);
                    bump(&self.counters.resets_sent, 1);
                    self.queue(Op::Rst, 0, id, Vec::new());
                }
            }
            Cmd::Shutdown => return false,
        }
        true
    }
}

/// What a sending pass needs before it can continue.
enum Need {
    Nothing,
    /// Ring space of at least this many bytes.
    Space(u32),
}

impl Driver {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        chan: Channel,
        cfg: MuxConfig,
        side: Side,
        counters: Arc<Counters>,
        cmd_rx: mpsc::UnboundedReceiver<Cmd>,
        cmd_weak: mpsc::WeakUnboundedSender<Cmd>,
        inc_tx: mpsc::Sender<IncomingRequest>,
        closed_tx: watch::Sender<Option<CloseReason>>,
    ) -> Result<Self> {
        // SAFETY: the fd belongs to the channel's event channel, which this struct
        // owns and drops after the `AsyncFd` (field order), so it stays open and the
        // same for the `AsyncFd`'s whole life.
        let evfd =
            unsafe { AsyncFd::register_with_interest(EvFd(chan.event_fd()), Interest::READABLE) }
                .map_err(|e| e.into_parts().1)?;
        let mut st = State {
            cfg,
            side,
            counters,
            cmd_weak,
            inc_tx: Some(inc_tx),
            closed_tx,
            streams: BTreeMap::new(),
            wk: Arc::default(),
            ctrl: VecDeque::new(),
            next_id: if side == Side::Guest { 1 } else { 2 },
            rr: 0,
            log: RateLimit::new(LOG_BURST, LOG_WINDOW),
            hello_done: false,
            fatal: None,
        };
        let hello = Hello {
            version: VERSION,
            max_streams: cfg.max_streams,
        };
        st.queue(Op::Hello, 0, 0, hello.encode().to_vec());
        Ok(Self {
            evfd,
            chan,
            st,
            cmd_rx,
        })
    }

    /// Sends our HELLO and waits for the peer's.
    pub(super) async fn hello(&mut self) -> Result<()> {
        match poll_fn(|cx| self.poll_turns(cx, true)).await {
            None => Ok(()),
            Some(reason) => {
                self.chan.close();
                let _ = self.st.closed_tx.send(Some(reason.clone()));
                Err(match reason {
                    CloseReason::PeerClosed => Error::PeerClosed,
                    r @ (CloseReason::Version { .. } | CloseReason::Protocol(_)) => {
                        Error::Protocol(r.to_string())
                    }
                    r => Error::MuxClosed(r),
                })
            }
        }
    }

    /// Runs until the multiplexer finishes.
    pub(super) async fn run(mut self) {
        let reason = poll_fn(|cx| self.poll_turns(cx, false))
            .await
            .unwrap_or(CloseReason::Shutdown);
        self.finish(reason);
    }

    fn finish(&mut self, reason: CloseReason) {
        match &reason {
            CloseReason::PeerClosed | CloseReason::Shutdown => {
                tracing::debug!(side = ?self.st.side, "mux finished: {reason}")
            }
            _ => tracing::warn!(side = ?self.st.side, "mux finished: {reason}"),
        }
        self.st.fatal = Some(reason.clone());
        self.chan.close();
        self.st.inc_tx = None;
        let ids: Vec<u32> = self.st.streams.keys().copied().collect();
        for id in ids {
            self.st.end(id, StreamEnd::MuxClosed, false);
        }
        self.cmd_rx.close();
        while let Ok(cmd) = self.cmd_rx.try_recv() {
            match cmd {
                Cmd::Open { reply, .. } => {
                    let _ = reply.send(Err(Error::MuxClosed(reason.clone())));
                }
                Cmd::Accept { done, .. } => {
                    let _ = done.send(StreamEnd::MuxClosed);
                }
                _ => {}
            }
        }
        let _ = self.st.closed_tx.send(Some(reason));
    }

    /// Drains the event fd if it is readable (registering the waker otherwise).
    fn poll_event(&mut self, cx: &mut Context<'_>) -> Result<bool, CloseReason> {
        match self.evfd.poll_read_ready(cx) {
            Poll::Ready(Ok(mut g)) => {
                self.chan.clear_events().map_err(chan_reason)?;
                g.clear_ready_matching(Ready::READABLE);
                Ok(true)
            }
            Poll::Ready(Err(e)) => Err(CloseReason::Channel(e.to_string())),
            Poll::Pending => Ok(false),
        }
    }

    /// `Ready(None)`: the HELLO exchange is done (hello mode only).
    /// `Ready(Some(reason))`: finished.
    fn poll_turns(&mut self, cx: &mut Context<'_>, hello: bool) -> Poll<Option<CloseReason>> {
        match self.turns(cx, hello) {
            Ok(p) => p.map(|()| None),
            Err(r) => Poll::Ready(Some(r)),
        }
    }

    fn turns(&mut self, cx: &mut Context<'_>, hello: bool) -> Result<Poll<()>, CloseReason> {
        for _ in 0..BUDGET {
            let mut progress = false;
            // Register first, then drain: a socket waking us in between is not lost.
            self.st.wk.driver.register(cx.waker());
            self.st.take_wakeups();
            if !hello {
                loop {
                    match self.cmd_rx.poll_recv(cx) {
                        Poll::Ready(Some(cmd)) => {
                            progress = true;
                            if !self.st.on_cmd(cmd) {
                                return Err(CloseReason::Shutdown);
                            }
                        }
                        // Every handle is gone: nobody can use the streams' results.
                        Poll::Ready(None) => return Err(CloseReason::Shutdown),
                        Poll::Pending => break,
                    }
                }
            }
            progress |= self.poll_event(cx)?;
            progress |= self.receive(hello)?;
            if let Some(r) = self.st.fatal.take() {
                return Err(r);
            }
            if hello && self.st.hello_done {
                // Our HELLO must be out too before the handle is returned.
                if self.send_ctrl()? {
                    return Ok(Poll::Ready(()));
                }
            }
            progress |= self.st.flush();
            let (moved, need) = self.send(hello)?;
            progress |= moved;
            if let Some(r) = self.st.fatal.take() {
                return Err(r);
            }
            if progress {
                continue;
            }
            // Nothing moved: ask for kicks, look again, then sleep.
            if self.chan.prepare_read_wait().map_err(chan_reason)? {
                continue;
            }
            if let Need::Space(n) = need {
                if self.chan.prepare_write_wait_for(n).map_err(chan_reason)? {
                    continue;
                }
            }
            if self.poll_event(cx)? {
                continue;
            }
            return Ok(Poll::Pending);
        }
        cx.waker().wake_by_ref();
        Ok(Poll::Pending)
    }

    /// Handles whole frames from the ring. Whether any were consumed.
    fn receive(&mut self, hello: bool) -> Result<bool, CloseReason> {
        let mut any = false;
        for _ in 0..4 {
            let st = &mut self.st;
            let r = self.chan.read_with(|segs| {
                // SAFETY: these are the segments of this very callback, used only
                // inside it.
                let segs = unsafe { Segs::new(segs) };
                Ok(st.on_frames(segs, hello))
            });
            match r {
                Ok(Some(0)) | Ok(None) => break,
                Ok(Some(_)) => any = true,
                Err(e) => return Err(chan_reason(e)),
            }
            if self.st.fatal.is_some() || (hello && self.st.hello_done) {
                break;
            }
        }
        Ok(any)
    }

    /// Writes queued control frames; true when none is left.
    fn send_ctrl(&mut self) -> Result<bool, CloseReason> {
        if self.st.ctrl.is_empty() {
            return Ok(true);
        }
        let st = &mut self.st;
        let r = self.chan.write_with(|segs| {
            // SAFETY: the segments of this callback, used only inside it.
            let segs = unsafe { Segs::new(segs) };
            let mut off = 0;
            while let Some(c) = st.ctrl.front() {
                let len = HDR_LEN + c.payload.len();
                if segs.len() - off < len {
                    break;
                }
                let mut h = Header::new(c.op, c.flags, c.id, c.payload.len() as u32);
                if c.op.carries_credit() {
                    match st.streams.get_mut(&c.id) {
                        // No credit for a direction the peer has shut down.
                        Some(s) if c.op == Op::CreditUpdate && s.rx_eof => {
                            s.credit_queued = false;
                            st.ctrl.pop_front();
                            continue;
                        }
                        Some(s) => {
                            h.buf_alloc = st.cfg.stream_buf;
                            h.fwd_cnt = s.fwd_cnt;
                            s.adv_fwd = s.fwd_cnt;
                            if c.op == Op::CreditUpdate {
                                s.credit_queued = false;
                            }
                        }
                        None if c.op == Op::CreditUpdate => {
                            st.ctrl.pop_front();
                            continue;
                        }
                        None => h.buf_alloc = st.cfg.stream_buf,
                    }
                }
                segs.copy_in(off, &h.encode());
                segs.copy_in(off + HDR_LEN, &c.payload);
                off += len;
                st.ctrl.pop_front();
            }
            Ok(off)
        });
        match r {
            Ok(_) => Ok(self.st.ctrl.is_empty()),
            Err(Error::PeerClosed) => Ok(false),
            Err(e) => Err(chan_reason(e)),
        }
    }

    /// Control frames, then socket data straight into the ring.
    fn send(&mut self, hello: bool) -> Result<(bool, Need), CloseReason> {
        let before = self.st.ctrl.len();
        if !self.send_ctrl()? {
            let need = self
                .st
                .ctrl
                .front()
                .map_or(HDR_LEN, |c| HDR_LEN + c.payload.len());
            return Ok((self.st.ctrl.len() != before, Need::Space(need as u32)));
        }
        let mut progress = self.st.ctrl.len() != before;
        if hello {
            return Ok((progress, Need::Nothing));
        }
        let ids: Vec<u32> = {
            let rr = self.st.rr;
            let st = &self.st.streams;
            st.range(rr.saturating_add(1)..)
                .chain(st.range(..=rr))
                .filter(|(_, s)| s.rd_poll && s.connected() && !s.tx_eof && s.sock.is_some())
                .map(|(id, _)| *id)
                .collect()
        };
        for id in ids {
            let free = match self.chan.writable() {
                Ok(n) => n as usize,
                Err(Error::PeerClosed) => return Ok((progress, Need::Nothing)),
                Err(e) => return Err(chan_reason(e)),
            };
            if free < HDR_LEN + 1 {
                return Ok((progress, Need::Space(HDR_LEN as u32 + 1)));
            }
            progress |= self.send_stream(id)?;
            if !self.st.ctrl.is_empty() {
                // An EOF queued a SHUTDOWN: it goes out before more data.
                progress = true;
                break;
            }
        }
        Ok((progress, Need::Nothing))
    }

    /// One readv from a stream's socket into the ring, if it has data and credit.
    fn send_stream(&mut self, id: u32) -> Result<bool, CloseReason> {
        let max_frame = self.st.cfg.max_frame;
        let stream_buf = self.st.cfg.stream_buf;
        let Some(s) = self.st.streams.get_mut(&id) else {
            return Ok(false);
        };
        let credit = s.credit();
        if credit == 0 {
            if !s.stalled {
                s.stalled = true;
                bump(&self.st.counters.credit_stalls, 1);
            }
            return Ok(false);
        }
        let Some(sock) = &s.sock else {
            return Ok(false);
        };
        let mut cx = Context::from_waker(&s.rd_waker);
        match sock.poll_read_ready(&mut cx) {
            Poll::Pending => {
                s.rd_poll = false;
                return Ok(false);
            }
            Poll::Ready(Err(e)) => {
                self.st.local_error(id, "socket read", e);
                return Ok(true);
            }
            Poll::Ready(Ok(())) => {}
        }
        let fd = sock.as_raw_fd();
        let fwd_cnt = s.fwd_cnt;
        let max = credit.min(max_frame) as usize;
        let mut eof = false;
        let mut chan_err = None;
        let chan = &self.chan;
        let r = sock.try_io(Interest::READABLE, || {
            let w = chan.write_with(|segs| {
                // SAFETY: the segments of this callback, used only inside it.
                let segs = unsafe { Segs::new(segs) };
                if segs.len() <= HDR_LEN {
                    return Ok(0);
                }
                let max = max.min(segs.len() - HDR_LEN);
                let (iov, cnt) = segs.iovecs(HDR_LEN, max);
                let n = readv(fd, &iov, cnt)?.min(max);
                if n == 0 {
                    eof = true;
                    return Ok(0);
                }
                let h = Header {
                    op: Op::Rw,
                    flags: 0,
                    stream: id,
                    len: n as u32,
                    buf_alloc: stream_buf,
                    fwd_cnt,
                };
                // The header goes in last; the commit publishes header and data at once.
                segs.copy_in(0, &h.encode());
                Ok(HDR_LEN + n)
            });
            match w {
                Ok(v) => Ok(v),
                Err(Error::Io(e)) => Err(e),
                Err(e) => {
                    chan_err = Some(e);
                    Ok(None)
                }
            }
        });
        let mut moved = false;
        match r {
            Ok(Some(n)) if n > HDR_LEN => {
                let n = (n - HDR_LEN) as u32;
                s.tx_cnt = s.tx_cnt.wrapping_add(n);
                s.adv_fwd = fwd_cnt;
                bump(&self.st.counters.bytes_tx, u64::from(n));
                self.st.rr = id;
                moved = true;
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // Readiness was cleared: register for the next edge now, or a
                // sleep right after this would never hear of it.
                if sock.poll_read_ready(&mut cx).is_ready() {
                    return Ok(true);
                }
                s.rd_poll = false;
                return Ok(false);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(true),
            Err(e) => {
                self.st.local_error(id, "socket read", e);
                return Ok(true);
            }
        }
        if eof {
            self.st.local_eof(id);
            return Ok(true);
        }
        match chan_err {
            None => Ok(moved),
            Some(Error::PeerClosed) => Ok(false),
            Some(e) => Err(chan_reason(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(cfg: MuxConfig) -> State {
        let (cmd_tx, _cmd_rx) = mpsc::unbounded_channel();
        let (inc_tx, _inc_rx) = mpsc::channel(4);
        let (closed_tx, _) = watch::channel(None);
        State {
            cfg,
            side: Side::Guest,
            counters: Arc::default(),
            cmd_weak: cmd_tx.downgrade(),
            inc_tx: Some(inc_tx),
            closed_tx,
            streams: BTreeMap::new(),
            wk: Arc::default(),
            ctrl: VecDeque::new(),
            next_id: 1,
            rr: 0,
            log: RateLimit::new(LOG_BURST, LOG_WINDOW),
            hello_done: true,
            fatal: None,
        }
    }

    fn connected() -> Stream {
        Stream::new(1, &Arc::default(), Phase::Connected, None, None)
    }

    #[test]
    fn credit_wraps_and_never_underflows() {
        let mut s = connected();
        s.peer_buf_alloc = 1000;
        s.peer_fwd = u32::MAX - 100;
        s.tx_cnt = u32::MAX - 100;
        assert_eq!(s.credit(), 1000);
        s.tx_cnt = s.tx_cnt.wrapping_add(600);
        assert_eq!(s.credit(), 400);
        // The peer shrank its buffer below what is in flight.
        s.peer_buf_alloc = 100;
        assert_eq!(s.credit(), 0);
    }

    #[test]
    fn credit_lies_are_caught() {
        let mut st = state(MuxConfig::default());
        let mut s = connected();
        s.tx_cnt = 5000;
        st.streams.insert(1, s);
        let h = |fwd| Header {
            buf_alloc: 4096,
            fwd_cnt: fwd,
            ..Header::new(Op::CreditUpdate, 0, 1, 0)
        };
        assert!(st.take_credit(1, &h(3000)));
        assert!(st.take_credit(1, &h(5000)));
        assert!(!st.take_credit(1, &h(5001)), "beyond what we sent");
        assert!(!st.take_credit(1, &h(4000)), "backwards");
        assert_eq!(st.streams[&1].credit(), 4096);
        // Unknown streams carry no credit to check.
        assert!(st.take_credit(7, &h(1 << 30)));
    }

    #[test]
    fn credit_updates_are_batched() {
        let cfg = MuxConfig {
            stream_buf: 4096,
            ..MuxConfig::default()
        };
        let mut st = state(cfg);
        st.streams.insert(1, connected());
        st.streams.get_mut(&1).unwrap().fwd_cnt = 1023;
        st.maybe_credit(1);
        assert!(st.ctrl.is_empty(), "below a quarter of the buffer");
        st.streams.get_mut(&1).unwrap().fwd_cnt = 1024;
        st.maybe_credit(1);
        st.maybe_credit(1);
        assert_eq!(st.ctrl.len(), 1, "one update queued, not two");
        let s = st.streams.get_mut(&1).unwrap();
        s.credit_queued = false;
        s.rx_eof = true;
        st.maybe_credit(1);
        assert_eq!(st.ctrl.len(), 1, "none once the peer stopped sending");
    }

    #[test]
    fn stream_closes_only_when_both_ways_are_done() {
        let mut st = state(MuxConfig::default());
        let (done, mut rx) = oneshot::channel();
        st.streams.insert(
            1,
            Stream::new(1, &Arc::default(), Phase::Connected, None, Some(done)),
        );
        let steps: [fn(&mut Stream); 3] = [
            |s| s.tx_eof = true,
            |s| s.rx_eof = true,
            |s| s.wr_shut = true,
        ];
        for step in steps {
            st.maybe_close(1);
            assert!(st.streams.contains_key(&1));
            step(st.streams.get_mut(&1).unwrap());
        }
        st.streams.get_mut(&1).unwrap().buf = vec![1];
        st.maybe_close(1);
        assert!(st.streams.contains_key(&1), "undelivered bytes");
        st.streams.get_mut(&1).unwrap().head = 1;
        st.maybe_close(1);
        assert!(!st.streams.contains_key(&1));
        assert!(matches!(rx.try_recv().unwrap(), StreamEnd::Closed { .. }));
        assert!(st.ctrl.is_empty(), "a clean close sends no RST");
    }

    /// Stream 1, connected, with its end watched.
    fn watched(st: &mut State) -> oneshot::Receiver<StreamEnd> {
        let (done, rx) = oneshot::channel();
        st.streams.insert(
            1,
            Stream::new(1, &Arc::default(), Phase::Connected, None, Some(done)),
        );
        rx
    }

    /// Frames from the peer, as the driver meets them in the ring.
    fn feed(st: &mut State, frames: &[Header]) {
        let mut buf = Vec::new();
        for h in frames {
            buf.extend_from_slice(&h.encode());
            buf.resize(buf.len() + h.len as usize, b'x');
        }
        let n = buf.len();
        let mut empty = [0u8; 0];
        // SAFETY: `buf` and `empty` outlive `segs`, which is used only within this
        // function, and nothing else touches them meanwhile.
        let segs = unsafe { Segs::new([(buf.as_mut_ptr(), n), (empty.as_mut_ptr(), 0)]) };
        assert_eq!(st.on_frames(segs, false), n);
    }

    fn shut(flags: u8) -> Header {
        Header::new(Op::Shutdown, flags, 1, 0)
    }

    /// What `flush` does for a socket that takes everything: deliver what is
    /// buffered, then pass on the peer's SHUTDOWN.
    fn delivered(st: &mut State) {
        if let Some(s) = st.streams.get_mut(&1) {
            s.head = s.buf.len();
            s.wr_shut |= s.rx_eof;
        }
        st.maybe_close(1);
    }

    #[test]
    fn closed_says_we_shut_down_first() {
        let mut st = state(MuxConfig::default());
        let mut rx = watched(&mut st);
        st.local_eof(1);
        let c = st.ctrl.back().unwrap();
        assert_eq!((c.op, c.flags), (Op::Shutdown, SHUT_SEND));
        // The peer answers with its own SHUTDOWN, even asking us to stop reading.
        feed(&mut st, &[shut(SHUT_SEND | SHUT_RCV)]);
        assert!(rx.try_recv().is_err(), "our socket has not been told yet");
        delivered(&mut st);
        assert_eq!(
            rx.try_recv().unwrap(),
            StreamEnd::Closed { peer_first: false }
        );
    }

    #[test]
    fn closed_says_the_peer_shut_down_first() {
        // SHUTDOWN(send): the peer's socket hit EOF; (rcv): it asks us to stop.
        for flags in [SHUT_SEND, SHUT_RCV, SHUT_SEND | SHUT_RCV] {
            let mut st = state(MuxConfig::default());
            let mut rx = watched(&mut st);
            feed(&mut st, &[shut(flags)]);
            delivered(&mut st);
            if st.streams.get(&1).is_some_and(|s| !s.tx_eof) {
                st.local_eof(1);
            }
            if st.streams.get(&1).is_some_and(|s| !s.rx_eof) {
                feed(&mut st, &[shut(SHUT_SEND)]);
                delivered(&mut st);
            }
            assert_eq!(
                rx.try_recv().unwrap(),
                StreamEnd::Closed { peer_first: true },
                "flags {flags}"
            );
        }
    }

    #[test]
    fn resets_say_who_shut_down_first() {
        let rst = Header::new(Op::Rst, 0, 1, 0);
        // A reset out of the blue, after the peer's SHUTDOWN, after ours.
        let cases: [(&[Header], bool, bool); 3] = [
            (&[], false, true),
            (&[shut(SHUT_SEND)], true, true),
            (&[], true, false),
        ];
        for (before, our_eof, peer_first) in cases {
            let mut st = state(MuxConfig::default());
            let mut rx = watched(&mut st);
            feed(&mut st, before);
            if our_eof {
                st.local_eof(1);
            }
            feed(&mut st, &[rst]);
            assert_eq!(
                rx.try_recv().unwrap(),
                StreamEnd::ResetByPeer { peer_first }
            );
        }
    }

    /// Once the peer has shut down first, nothing it sends afterwards (more
    /// SHUTDOWNs, a reset, data it may no longer send), nor our own EOF later,
    /// makes the end read as ours.
    #[test]
    fn a_peer_cannot_make_its_end_read_as_ours() {
        let follow = [
            shut(SHUT_RCV),
            shut(SHUT_SEND),
            shut(SHUT_SEND | SHUT_RCV),
            Header::new(Op::Rst, 0, 1, 0),
            Header::new(Op::Rw, 0, 1, 1),
            Header::new(Op::CreditRequest, 0, 1, 0),
        ];
        let mut ends = 0;
        for first in [SHUT_RCV, SHUT_SEND, SHUT_SEND | SHUT_RCV] {
            for a in &follow {
                for b in &follow {
                    let mut st = state(MuxConfig::default());
                    let mut rx = watched(&mut st);
                    feed(&mut st, &[shut(first), *a]);
                    delivered(&mut st);
                    if st.streams.get(&1).is_some_and(|s| !s.tx_eof) {
                        st.local_eof(1);
                    }
                    feed(&mut st, &[*b]);
                    delivered(&mut st);
                    let Ok(end) = rx.try_recv() else { continue };
                    ends += 1;
                    assert!(
                        !matches!(
                            end,
                            StreamEnd::Closed { peer_first: false }
                                | StreamEnd::ResetByPeer { peer_first: false }
                        ),
                        "{first} {a:?} {b:?}: {end:?}"
                    );
                }
            }
        }
        assert!(ends > 50, "most sequences end the stream ({ends})");
    }

    #[test]
    fn ids_follow_parity_and_skip_used() {
        let mut st = state(MuxConfig::default());
        assert_eq!(st.alloc_id(), Some(1));
        st.streams.insert(3, connected());
        assert_eq!(st.alloc_id(), Some(5));
        st.next_id = u32::MAX;
        assert_eq!(st.alloc_id(), Some(u32::MAX));
        assert_eq!(st.alloc_id(), Some(1), "wraps past 0 to the first odd id");
        assert!(Side::Guest.owns(1) && !Side::Guest.owns(2));
        assert!(Side::Dom0.owns(2) && !Side::Dom0.owns(3));
    }

    #[test]
    fn control_flood_is_fatal_and_bounded() {
        let mut st = state(MuxConfig {
            max_streams: 1,
            ..MuxConfig::default()
        });
        for i in 0..1000 {
            st.queue(Op::Rst, 0, 2 * i + 2, Vec::new());
        }
        assert!(matches!(&st.fatal, Some(CloseReason::Protocol(m)) if m.contains("drain")));
    }

    #[test]
    fn log_limit() {
        let mut st = state(MuxConfig::default());
        let allowed = (0..100).filter(|_| st.log.allow().is_some()).count();
        assert_eq!(allowed, LOG_BURST as usize);
    }
}
