//! Per-domain counters of the proxy: cheap relaxed atomics bumped where the
//! events happen, read only when the control endpoint is asked.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};

/// Why a viewer's session ended, as counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disconnect {
    /// The viewer closed the connection.
    Left,
    /// The handshake failed: version, security, password, timeout.
    Handshake,
    /// The viewer broke the RFB rules or exceeded a limit.
    Protocol,
    /// The connection failed (reset, write error).
    Io,
    /// The proxy closed it (the domain went away or the proxy stopped).
    Closed,
}

impl Disconnect {
    /// Every reason, in label order.
    pub const ALL: [Disconnect; 5] = [
        Disconnect::Left,
        Disconnect::Handshake,
        Disconnect::Protocol,
        Disconnect::Io,
        Disconnect::Closed,
    ];

    /// The `reason` label.
    pub fn label(self) -> &'static str {
        match self {
            Disconnect::Left => "left",
            Disconnect::Handshake => "handshake",
            Disconnect::Protocol => "protocol",
            Disconnect::Io => "io",
            Disconnect::Closed => "closed",
        }
    }

    /// The reason for how `run_viewer` ended.
    pub fn of(r: &crate::Result<()>) -> Disconnect {
        use crate::rfb::Error as R;
        use crate::Error as E;
        match r {
            // The reader returns Ok at the viewer's end of stream.
            Ok(()) | Err(E::Rfb(R::Closed)) => Disconnect::Left,
            Err(E::Refused(m)) if m.contains("stopping") => Disconnect::Closed,
            Err(E::Rfb(R::Io(_)) | E::Io { .. }) => Disconnect::Io,
            Err(E::Rfb(R::Version(_) | R::NoSecurity | R::AuthFailed(_))) => Disconnect::Handshake,
            Err(E::Refused(m)) if m.contains("handshake") => Disconnect::Handshake,
            Err(_) => Disconnect::Protocol,
        }
    }
}

/// One domain's counters.
#[derive(Debug, Default)]
pub struct DomainStats {
    /// FramebufferUpdates sent to viewers.
    pub updates_sent: AtomicU64,
    /// Bytes handed to viewers' connections.
    pub bytes_to_viewers: AtomicU64,
    /// Bytes read from upstream desktops (and other upstream views).
    pub upstream_bytes: Arc<AtomicU64>,
    /// Viewers that completed the handshake.
    pub viewers_connected: AtomicU64,
    disconnects: [AtomicU64; 5],
}

impl DomainStats {
    /// Counts a viewer through the handshake.
    pub fn viewer_connected(&self) {
        self.viewers_connected.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a FramebufferUpdate put together for a viewer, if `sent`.
    pub fn update_sent(&self, sent: bool) {
        if sent {
            self.updates_sent.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts `n` bytes about to be written to a viewer (counted first, so a
    /// viewer that has them is always counted).
    pub fn bytes_sent(&self, n: usize) {
        self.bytes_to_viewers.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Counts a viewer session's end.
    pub fn disconnected(&self, why: Disconnect) {
        let i = Disconnect::ALL.iter().position(|d| *d == why).unwrap_or(0);
        self.disconnects[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Viewer sessions ended for `why`.
    pub fn disconnects(&self, why: Disconnect) -> u64 {
        let i = Disconnect::ALL.iter().position(|d| *d == why).unwrap_or(0);
        self.disconnects[i].load(Ordering::Relaxed)
    }

    /// Wraps an upstream's read half so its bytes are counted here.
    pub fn count_upstream<R>(&self, r: R) -> Counting<R> {
        Counting::new(r, self.upstream_bytes.clone())
    }
}

/// A reader that counts what passes through it.
#[derive(Debug)]
pub struct Counting<R> {
    inner: R,
    n: Arc<AtomicU64>,
}

impl<R> Counting<R> {
    /// Reads from `inner`, adding what it reads to `n`.
    pub fn new(inner: R, n: Arc<AtomicU64>) -> Self {
        Counting { inner, n }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for Counting<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let got = buf.filled().len().saturating_sub(before);
        self.n.fetch_add(got as u64, Ordering::Relaxed);
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn upstream_bytes_are_counted() {
        let s = DomainStats::default();
        let mut r = s.count_upstream(&b"hello world"[..]);
        let mut out = Vec::new();
        r.read_to_end(&mut out).await.unwrap();
        assert_eq!(s.upstream_bytes.load(Ordering::Relaxed), 11);
    }

    #[test]
    fn disconnect_reasons() {
        use crate::rfb::Error as R;
        assert_eq!(Disconnect::of(&Ok(())), Disconnect::Left);
        assert_eq!(
            Disconnect::of(&Err(crate::Error::Refused("the proxy is stopping"))),
            Disconnect::Closed
        );
        assert_eq!(
            Disconnect::of(&Err(crate::Error::Rfb(R::Closed))),
            Disconnect::Left
        );
        assert_eq!(
            Disconnect::of(&Err(crate::Error::Rfb(R::AuthFailed("x".into())))),
            Disconnect::Handshake
        );
        assert_eq!(
            Disconnect::of(&Err(crate::Error::Rfb(R::UnknownMessage(9)))),
            Disconnect::Protocol
        );
        let s = DomainStats::default();
        s.disconnected(Disconnect::Io);
        s.disconnected(Disconnect::Io);
        assert_eq!(s.disconnects(Disconnect::Io), 2);
        assert_eq!(s.disconnects(Disconnect::Left), 0);
    }
}
