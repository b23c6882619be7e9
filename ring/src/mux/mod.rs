//! Many byte streams over one [`Channel`], modelled on virtio-vsock.
//!
//! One driver task per channel owns the rings and every stream's socket. It moves
//! socket bytes straight into the ring (`readv(2)` after a reserved header) and
//! ring bytes straight to the destination socket (`sendmsg(2)` from the ring);
//! only what a destination does not take right away is copied into that stream's
//! private buffer, which per-stream credit bounds. So a stalled reader costs its
//! own buffer and never blocks the ring or the other streams.
//!
//! Everything the peer sends is copied out once and validated: framing errors
//! close the channel ([`CloseReason::Protocol`]), stream-level errors reset only
//! that stream. docs/protocol.md describes the wire format.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, watch};

use crate::channel::{Channel, Role};
use crate::{Error, Result};

mod driver;
pub mod frame;
mod segs;
mod socket;

pub use socket::Socket;

/// Limits of one multiplexer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MuxConfig {
    /// Streams (open or pending, both directions) at once; REQUESTs beyond it are refused.
    pub max_streams: u32,
    /// Receive credit per stream (`buf_alloc`): the most bytes we ever buffer for it.
    pub stream_buf: u32,
    /// Largest RW payload we send; smaller frames share the ring more fairly.
    pub max_frame: u32,
}

impl Default for MuxConfig {
    fn default() -> Self {
        Self {
            max_streams: 256,
            stream_buf: 256 << 10,
            max_frame: 64 << 10,
        }
    }
}

impl MuxConfig {
    fn validate(&self) -> Result<()> {
        if !(1..=1 << 16).contains(&self.max_streams) {
            return Err(Error::Invalid(format!(
                "max_streams {} not in 1..=65536",
                self.max_streams
            )));
        }
        if !(4096..=16 << 20).contains(&self.stream_buf) {
            return Err(Error::Invalid(format!(
                "stream_buf {} not in 4096..=16 MiB",
                self.stream_buf
            )));
        }
        if !(1024..=frame::MAX_PAYLOAD).contains(&self.max_frame) {
            return Err(Error::Invalid(format!(
                "max_frame {} not in 1024..={}",
                self.max_frame,
                frame::MAX_PAYLOAD
            )));
        }
        Ok(())
    }
}

/// Which end of the channel: decides stream id parity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The granting (server) end, in the guest: opens odd stream ids.
    Guest,
    /// The mapping (client) end, in dom0: opens even stream ids.
    Dom0,
}

impl Side {
    fn of(role: Role) -> Side {
        match role {
            Role::Server => Side::Guest,
            Role::Client => Side::Dom0,
        }
    }

    /// Whether `id` is one this side allocates.
    pub fn owns(self, id: u32) -> bool {
        (id % 2 == 1) == (self == Side::Guest)
    }
}

/// Why a multiplexer finished.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The peer closed the channel, exited or died.
    PeerClosed,
    /// [`MuxHandle::shutdown`] was called or every handle was dropped.
    Shutdown,
    /// The peer speaks another protocol version.
    Version {
        /// Ours.
        ours: u16,
        /// The peer's.
        theirs: u16,
    },
    /// The peer broke the framing rules.
    Protocol(String),
    /// The channel itself failed (ring protocol, platform error).
    Channel(String),
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::PeerClosed => write!(f, "peer closed the channel"),
            CloseReason::Shutdown => write!(f, "shut down"),
            CloseReason::Version { ours, theirs } => {
                write!(f, "protocol version mismatch: ours {ours}, peer {theirs}")
            }
            CloseReason::Protocol(m) => write!(f, "peer protocol violation: {m}"),
            CloseReason::Channel(m) => write!(f, "channel failed: {m}"),
        }
    }
}

/// How one stream finished.
///
/// `peer_first` says which side began the end: it is false only when our local
/// socket reached EOF (and we sent SHUTDOWN) before the peer sent any SHUTDOWN or
/// RST. A peer can make it true by acting first, never false: that takes our own
/// socket's EOF.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamEnd {
    /// Both directions were shut down cleanly and every byte delivered.
    Closed {
        /// The peer shut down first (or asked us to stop sending).
        peer_first: bool,
    },
    /// The peer reset (or refused) it.
    ResetByPeer {
        /// The reset (or a SHUTDOWN before it) came before our own SHUTDOWN.
        peer_first: bool,
    },
    /// We reset it: a local socket error or the peer broke the stream rules.
    ResetLocal(String),
    /// The multiplexer finished first.
    MuxClosed,
}

/// Counters of one multiplexer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MuxStats {
    /// Streams currently open or pending.
    pub streams_open: u64,
    /// Streams we opened (answered by the peer).
    pub streams_opened: u64,
    /// Streams the peer opened and we accepted.
    pub streams_accepted: u64,
    /// Payload bytes sent.
    pub bytes_tx: u64,
    /// Payload bytes received.
    pub bytes_rx: u64,
    /// Received bytes waiting in stream buffers right now.
    pub bytes_buffered: u64,
    /// Times a stream had data to send but no credit.
    pub credit_stalls: u64,
    /// RSTs we sent (including refusals).
    pub resets_sent: u64,
    /// RSTs we received.
    pub resets_received: u64,
    /// Incoming REQUESTs refused (service unknown, limit, nobody listening).
    pub refused: u64,
    /// Streams reset because the peer broke stream rules (credit, state).
    pub stream_violations: u64,
}

#[derive(Default)]
struct Counters {
    streams_open: AtomicU64,
    streams_opened: AtomicU64,
    streams_accepted: AtomicU64,
    bytes_tx: AtomicU64,
    bytes_rx: AtomicU64,
    bytes_buffered: AtomicU64,
    credit_stalls: AtomicU64,
    resets_sent: AtomicU64,
    resets_received: AtomicU64,
    refused: AtomicU64,
    stream_violations: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> MuxStats {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        MuxStats {
            streams_open: g(&self.streams_open),
            streams_opened: g(&self.streams_opened),
            streams_accepted: g(&self.streams_accepted),
            bytes_tx: g(&self.bytes_tx),
            bytes_rx: g(&self.bytes_rx),
            bytes_buffered: g(&self.bytes_buffered),
            credit_stalls: g(&self.credit_stalls),
            resets_sent: g(&self.resets_sent),
            resets_received: g(&self.resets_received),
            refused: g(&self.refused),
            stream_violations: g(&self.stream_violations),
        }
    }
}

fn bump(a: &AtomicU64, n: u64) {
    a.fetch_add(n, Ordering::Relaxed);
}

/// What handles ask of the driver.
enum Cmd {
    Open {
        service: String,
        sock: Socket,
        reply: oneshot::Sender<Result<StreamHandle>>,
    },
    Accept {
        id: u32,
        sock: Socket,
        done: oneshot::Sender<StreamEnd>,
    },
    Refuse {
        id: u32,
    },
    Shutdown,
}

/// A cheap, cloneable handle on a running multiplexer.
#[derive(Clone)]
pub struct MuxHandle {
    cmd: mpsc::UnboundedSender<Cmd>,
    counters: Arc<Counters>,
    closed: watch::Receiver<Option<CloseReason>>,
    side: Side,
}

impl fmt::Debug for MuxHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MuxHandle")
            .field("side", &self.side)
            .finish_non_exhaustive()
    }
}

/// Exchanges HELLOs over `chan` (waiting for the peer's), then runs the driver in a
/// spawned task. Must be called inside a tokio runtime.
pub async fn start(chan: Channel, cfg: MuxConfig) -> Result<(MuxHandle, Incoming)> {
    cfg.validate()?;
    let side = Side::of(chan.role());
    let counters = Arc::new(Counters::default());
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    let (inc_tx, inc_rx) = mpsc::channel(cfg.max_streams as usize);
    let (closed_tx, closed_rx) = watch::channel(None);
    let mut drv = driver::Driver::new(
        chan,
        cfg,
        side,
        counters.clone(),
        cmd_rx,
        cmd_tx.downgrade(),
        inc_tx,
        closed_tx,
    )?;
    drv.hello().await?;
    // The driver logs for every stream: it runs in the caller's span (the
    // daemon's per-domain span), so each line names the domain.
    tokio::spawn(tracing::Instrument::in_current_span(drv.run()));
    Ok((
        MuxHandle {
            cmd: cmd_tx,
            counters,
            closed: closed_rx,
            side,
        },
        Incoming { rx: inc_rx },
    ))
}

impl MuxHandle {
    /// Opens a stream to `service` on the peer and pumps `sock` through it.
    /// Resolves when the peer accepted (RESPONSE) or refused (RST).
    pub async fn open(&self, service: &str, sock: impl Into<Socket>) -> Result<StreamHandle> {
        if !frame::valid_service(service.as_bytes()) {
            return Err(Error::Invalid(format!(
                "service name {service:?} is not 1..=64 printable ASCII bytes"
            )));
        }
        let (reply, rx) = oneshot::channel();
        let cmd = Cmd::Open {
            service: service.to_owned(),
            sock: sock.into(),
            reply,
        };
        if self.cmd.send(cmd).is_err() {
            return Err(Error::MuxClosed(self.reason()));
        }
        match rx.await {
            Ok(r) => r,
            Err(_) => Err(Error::MuxClosed(self.reason())),
        }
    }

    fn reason(&self) -> CloseReason {
        self.closed
            .borrow()
            .clone()
            .unwrap_or(CloseReason::Shutdown)
    }

    /// This end's side.
    pub fn side(&self) -> Side {
        self.side
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> MuxStats {
        self.counters.snapshot()
    }

    /// Resolves when the multiplexer has finished; every stream is reset by then.
    pub async fn closed(&self) -> CloseReason {
        let mut rx = self.closed.clone();
        let r = match rx.wait_for(|r| r.is_some()).await {
            Ok(r) => r.clone(),
            // The driver is gone without a word: it can only have been shut down.
            Err(_) => None,
        };
        r.unwrap_or_else(|| self.reason())
    }

    /// Whether the multiplexer has finished.
    pub fn is_closed(&self) -> bool {
        self.closed.borrow().is_some() || self.cmd.is_closed()
    }

    /// Resets every stream and closes the channel. Idempotent.
    pub fn shutdown(&self) {
        let _ = self.cmd.send(Cmd::Shutdown);
    }
}

/// Streams the peer asks to open.
#[derive(Debug)]
pub struct Incoming {
    rx: mpsc::Receiver<IncomingRequest>,
}

impl Incoming {
    /// The next REQUEST; `None` once the multiplexer has finished.
    pub async fn next(&mut self) -> Option<IncomingRequest> {
        self.rx.recv().await
    }
}

/// One REQUEST from the peer, waiting for [`accept`](Self::accept) or
/// [`refuse`](Self::refuse). Dropping it refuses.
#[derive(Debug)]
pub struct IncomingRequest {
    id: u32,
    service: String,
    cmd: Option<mpsc::UnboundedSender<Cmd>>,
}

impl IncomingRequest {
    /// The requested service (validated printable ASCII).
    pub fn service(&self) -> &str {
        &self.service
    }

    /// The stream id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Accepts: answers RESPONSE and pumps `sock` through the stream.
    pub fn accept(mut self, sock: impl Into<Socket>) -> StreamHandle {
        let (done, rx) = oneshot::channel();
        if let Some(cmd) = self.cmd.take() {
            // If the driver is gone, `rx` resolves to MuxClosed.
            let _ = cmd.send(Cmd::Accept {
                id: self.id,
                sock: sock.into(),
                done,
            });
        }
        StreamHandle { id: self.id, rx }
    }

    /// Refuses: answers RST.
    pub fn refuse(mut self) {
        if let Some(cmd) = self.cmd.take() {
            let _ = cmd.send(Cmd::Refuse { id: self.id });
        }
    }
}

impl Drop for IncomingRequest {
    fn drop(&mut self) {
        if let Some(cmd) = self.cmd.take() {
            let _ = cmd.send(Cmd::Refuse { id: self.id });
        }
    }
}

/// Watches one stream. Dropping it does not affect the stream.
#[derive(Debug)]
pub struct StreamHandle {
    id: u32,
    rx: oneshot::Receiver<StreamEnd>,
}

impl StreamHandle {
    /// The stream id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Resolves when the stream has finished.
    pub async fn done(self) -> StreamEnd {
        self.rx.await.unwrap_or(StreamEnd::MuxClosed)
    }
}
