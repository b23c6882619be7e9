//! Tokio `AsyncRead`/`AsyncWrite` over a [`Channel`], splittable into halves.
//!
//! Waiting follows vchan: try the operation; if it cannot progress, post a notify
//! request, look at the ring again, and only then wait for the event channel.
//!
//! # One event fd, two waiters
//!
//! Both halves share one event channel, and a kick does not say which half it is
//! for. If the read half drained the event fd while the write half was between its
//! re-check and its wait, the write half would sleep through the kick meant for it.
//! Two rules prevent that:
//!
//! 1. Each half stores its waker in `Hub` *before* it posts its request and
//!    re-checks the ring.
//! 2. Whoever drains the event fd then wakes every stored waker.
//!
//! So a drain either happens before a half's re-check (which then sees the new
//! indices, because the ring and not the event is the truth) or after its waker was
//! stored (and the drainer wakes it). Both halves poll the fd with one shared
//! "fan-out" waker that wakes both, because tokio keeps only the most recent waker
//! per direction of an `AsyncFd`: with the halves' own wakers, the second poll would
//! silently evict the first. `tests/stream.rs` stresses this with two tasks.
//!
//! # Spinning before the wait
//!
//! Before it arms its request, a reader that cannot progress looks at the ring for
//! a short budget ([`crate::spin`]; [`ChannelStream::set_spin`]), because an
//! event-channel wakeup costs far more than the ring when the peer is about to
//! answer. The spin blocks the calling worker thread for at most the budget and
//! only delays the usual request, re-check and sleep, so it cannot lose a wakeup
//! (`tests/loom.rs` models it) and an idle stream still sleeps.

use std::future::poll_fn;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};

use crate::channel::{Channel, PeerState};
use crate::ring::Segments;
use crate::spin::Spinner;
use crate::Error;

const READ: usize = 0;
const WRITE: usize = 1;

/// The event fd, borrowed from the channel's event channel.
struct EvFd(RawFd);

impl AsRawFd for EvFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// The halves' wakers; as a `Wake`, it wakes both.
#[derive(Default)]
struct Hub {
    wakers: Mutex<[Option<Waker>; 2]>,
}

impl Hub {
    fn register(&self, half: usize, w: &Waker) {
        let mut g = self.wakers.lock().unwrap_or_else(|p| p.into_inner());
        match &mut g[half] {
            Some(old) if old.will_wake(w) => {}
            slot => *slot = Some(w.clone()),
        }
    }

    fn wake_all(&self) {
        let taken = {
            let mut g = self.wakers.lock().unwrap_or_else(|p| p.into_inner());
            [g[0].take(), g[1].take()]
        };
        for w in taken.into_iter().flatten() {
            w.wake();
        }
    }
}

impl Wake for Hub {
    fn wake(self: Arc<Self>) {
        self.wake_all();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.wake_all();
    }
}

struct Shared {
    // Declared before `chan`: deregister the fd before the channel closes it.
    fd: AsyncFd<EvFd>,
    hub: Arc<Hub>,
    fanout: Waker,
    /// Each half's spin policy.
    spin: [Spinner; 2],
    chan: Channel,
}

fn io_err(e: Error) -> io::Error {
    e.into()
}

impl Shared {
    /// Drains the event fd if it is readable; otherwise registers the fan-out waker.
    fn poll_event(&self) -> Poll<io::Result<()>> {
        let mut cx = Context::from_waker(&self.fanout);
        match self.fd.poll_read_ready(&mut cx) {
            Poll::Ready(Ok(mut guard)) => {
                self.chan.clear_events().map_err(io_err)?;
                guard.clear_ready();
                // Rule 2: the other half may be between its re-check and its wait.
                self.hub.wake_all();
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Runs `attempt` until it yields, waiting for kicks in between.
    fn poll_until<T>(
        &self,
        half: usize,
        cx: &mut Context<'_>,
        mut attempt: impl FnMut(&Channel) -> Option<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        let mut spun = false;
        let spin = &self.spin[half];
        loop {
            if let Some(r) = attempt(&self.chan) {
                spin.ready();
                return Poll::Ready(r);
            }
            // Once per poll, and only readers (see `crate::spin`).
            if !spun && half == READ {
                spun = true;
                if spin.spin(|| self.chan.wait_over(half == READ)) {
                    continue;
                }
            }
            // Rule 1: waker first, then request and re-check.
            self.hub.register(half, cx.waker());
            let ready = if half == READ {
                self.chan.prepare_read_wait()
            } else {
                self.chan.prepare_write_wait()
            };
            match ready {
                Ok(true) => continue,
                Ok(false) => {}
                Err(e) => return Poll::Ready(Err(io_err(e))),
            }
            match self.poll_event() {
                Poll::Ready(Ok(())) => continue,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    spin.sleeping();
                    return Poll::Pending;
                }
            }
        }
    }

    fn poll_read(&self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let dst = buf.initialize_unfilled();
        let r = self.poll_until(READ, cx, |ch| match ch.read(dst) {
            Ok(0) => None,
            Ok(n) => Some(Ok(n)),
            Err(Error::PeerClosed) => Some(Ok(0)),
            Err(e) => Some(Err(io_err(e))),
        });
        r.map_ok(|n| {
            self.spin[READ].moved(n);
            buf.advance(n)
        })
    }

    fn poll_write(&self, cx: &mut Context<'_>, src: &[u8]) -> Poll<io::Result<usize>> {
        if src.is_empty() {
            return Poll::Ready(Ok(0));
        }
        self.poll_until(WRITE, cx, |ch| match ch.write(src) {
            Ok(0) => None,
            r => Some(r.map_err(io_err)),
        })
    }

    /// Ready when data can be read (`true`) or the stream ended (`false`).
    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        self.poll_until(READ, cx, |ch| match ch.readable() {
            Ok(0) => match ch.peer_state() {
                Ok(PeerState::Closed) => match ch.readable() {
                    Ok(n) => Some(Ok(n > 0)),
                    Err(e) => Some(Err(io_err(e))),
                },
                Ok(_) => None,
                Err(e) => Some(Err(io_err(e))),
            },
            Ok(_) => Some(Ok(true)),
            Err(e) => Some(Err(io_err(e))),
        })
    }

    /// Ready when there is space to write.
    fn poll_writable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_until(WRITE, cx, |ch| {
            if ch.is_closed() {
                return Some(Err(io::ErrorKind::BrokenPipe.into()));
            }
            match ch.peer_state() {
                Ok(PeerState::Closed) => return Some(Err(io_err(Error::PeerClosed))),
                Err(e) => return Some(Err(io_err(e))),
                Ok(_) => {}
            }
            match ch.writable() {
                Ok(0) => None,
                Ok(_) => Some(Ok(())),
                Err(e) => Some(Err(io_err(e))),
            }
        })
    }
}

/// A channel as one bidirectional async byte stream.
pub struct ChannelStream {
    shared: Arc<Shared>,
}

impl ChannelStream {
    /// Wraps `chan`. Must be called inside a tokio runtime (registers the event fd).
    pub fn new(chan: Channel) -> io::Result<Self> {
        tokio::runtime::Handle::try_current().map_err(io::Error::other)?;
        // SAFETY: the fd belongs to the channel's event channel, which `Shared` owns
        // and drops after this `AsyncFd` (field order), so it stays open and the
        // same for the `AsyncFd`'s whole life; `EvFd` always returns that fd.
        let fd =
            unsafe { AsyncFd::register_with_interest(EvFd(chan.event_fd()), Interest::READABLE) }
                .map_err(|e| e.into_parts().1)?;
        let hub = Arc::new(Hub::default());
        let fanout = Waker::from(hub.clone());
        Ok(Self {
            shared: Arc::new(Shared {
                fd,
                hub,
                fanout,
                spin: Default::default(),
                chan,
            }),
        })
    }

    /// The channel underneath.
    pub fn channel(&self) -> &Channel {
        &self.shared.chan
    }

    /// Sets how long a read that cannot progress looks at the ring before it
    /// sleeps on the event channel (zero: never). The default is
    /// [`crate::spin::default_budget`] (500 us unless the environment says
    /// otherwise); see [`crate::spin`] for when a reader spins and how it
    /// shortens the budget. Writers waiting for space never spin.
    pub fn set_spin(&self, budget: Duration) {
        for s in &self.shared.spin {
            s.set_budget(budget);
        }
    }

    /// The spin budget (see [`ChannelStream::set_spin`]).
    pub fn spin(&self) -> Duration {
        self.shared.spin[READ].budget()
    }

    /// Splits into halves usable from two tasks.
    pub fn into_split(self) -> (ChannelReader, ChannelWriter) {
        (
            ChannelReader {
                shared: self.shared.clone(),
            },
            ChannelWriter {
                shared: self.shared,
            },
        )
    }
}

/// `AsyncRead` for a type that holds `shared`: the same code the halves and
/// the whole stream run, written once.
macro_rules! impl_async_read {
    ($t:ty) => {
        impl AsyncRead for $t {
            fn poll_read(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                self.shared.poll_read(cx, buf)
            }
        }
    };
}

/// `AsyncWrite` for a type that holds `shared`. Shutting down closes the
/// channel: vchan has no half-close, so this ends both directions (the peer
/// still reads what we wrote, then EOF; we may still drain ours).
macro_rules! impl_async_write {
    ($t:ty) => {
        impl AsyncWrite for $t {
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                self.shared.poll_write(cx, buf)
            }
            fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
                // Written bytes are already in the ring and the peer was kicked if it asked.
                Poll::Ready(Ok(()))
            }
            fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
                self.shared.chan.close();
                Poll::Ready(Ok(()))
            }
        }
    };
}

impl_async_read!(ChannelStream);
impl_async_write!(ChannelStream);

/// The reading half of a [`ChannelStream`].
pub struct ChannelReader {
    shared: Arc<Shared>,
}

impl ChannelReader {
    /// The channel underneath.
    pub fn channel(&self) -> &Channel {
        &self.shared.chan
    }

    /// Waits until data is ready (`true`) or the stream ended (`false`).
    pub async fn readable(&mut self) -> io::Result<bool> {
        poll_fn(|cx| self.shared.poll_readable(cx)).await
    }

    /// Lets `f` take ready data in place; see [`Channel::read_with`].
    pub fn read_with(
        &mut self,
        f: impl FnOnce(Segments) -> io::Result<usize>,
    ) -> crate::Result<Option<usize>> {
        self.shared.chan.read_with(f)
    }
}

impl_async_read!(ChannelReader);

/// The writing half of a [`ChannelStream`]. Dropping or shutting it down closes
/// the channel, like shutting down a socket's write side (the peer reads what we
/// wrote, then EOF). vchan has no half-close, so the peer's writes then fail.
pub struct ChannelWriter {
    shared: Arc<Shared>,
}

impl ChannelWriter {
    /// The channel underneath.
    pub fn channel(&self) -> &Channel {
        &self.shared.chan
    }

    /// Waits until there is space to write.
    pub async fn writable(&mut self) -> io::Result<()> {
        poll_fn(|cx| self.shared.poll_writable(cx)).await
    }

    /// Lets `f` fill free space in place; see [`Channel::write_with`].
    pub fn write_with(
        &mut self,
        f: impl FnOnce(Segments) -> io::Result<usize>,
    ) -> crate::Result<Option<usize>> {
        self.shared.chan.write_with(f)
    }
}

impl_async_write!(ChannelWriter);

impl Drop for ChannelWriter {
    fn drop(&mut self) {
        self.shared.chan.close();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::platform::heap::HeapHost;
    use crate::ChannelConfig;

    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Rule 2, deterministically: when one half drains the event fd, a waker the
    /// other half stored before its re-check is woken. (Fails if the drainer does
    /// not call `wake_all`.)
    #[tokio::test]
    async fn draining_the_event_wakes_the_other_half() {
        let host = HeapHost::new();
        let s = Channel::server(&host.domain(1), 0, ChannelConfig::default()).unwrap();
        let c = Channel::client(&host.domain(0), 1, s.ring_ref(), s.event_port()).unwrap();
        let st = ChannelStream::new(s).unwrap();
        let sh = &st.shared;
        // Wait (without the hub) until the reactor has seen the client's kick.
        let guard = sh.fd.readable().await.unwrap();
        drop(guard); // keep the readiness
                     // The read half stored its waker and is "between re-check and wait".
        let count = Arc::new(Count(AtomicUsize::new(0)));
        sh.hub.register(READ, &Waker::from(count.clone()));
        // The write half drains the event.
        assert!(sh.poll_event().is_ready());
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "reader woken");
        drop(c);
    }
}
