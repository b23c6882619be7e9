//! The local sockets a stream pumps to and from.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::task::{Context, Poll};

use tokio::io::Interest;
use tokio::net::{TcpStream, UnixStream};

/// A local connection carried by one stream.
#[derive(Debug)]
pub enum Socket {
    /// A TCP connection (the agent's side, usually).
    Tcp(TcpStream),
    /// A unix-domain connection (the backend's side, usually).
    Unix(UnixStream),
}

impl From<TcpStream> for Socket {
    fn from(s: TcpStream) -> Self {
        Socket::Tcp(s)
    }
}

impl From<UnixStream> for Socket {
    fn from(s: UnixStream) -> Self {
        Socket::Unix(s)
    }
}

impl AsRawFd for Socket {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Socket::Tcp(s) => s.as_raw_fd(),
            Socket::Unix(s) => s.as_raw_fd(),
        }
    }
}

impl Socket {
    pub(crate) fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Socket::Tcp(s) => s.poll_read_ready(cx),
            Socket::Unix(s) => s.poll_read_ready(cx),
        }
    }

    pub(crate) fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Socket::Tcp(s) => s.poll_write_ready(cx),
            Socket::Unix(s) => s.poll_write_ready(cx),
        }
    }

    /// One raw I/O attempt; tokio clears its readiness if `f` would block.
    pub(crate) fn try_io<R>(
        &self,
        interest: Interest,
        f: impl FnOnce() -> io::Result<R>,
    ) -> io::Result<R> {
        match self {
            Socket::Tcp(s) => s.try_io(interest, f),
            Socket::Unix(s) => s.try_io(interest, f),
        }
    }

    /// Sends FIN / shuts down our write half: the peer's socket reads EOF.
    pub(crate) fn shutdown_write(&self) -> io::Result<()> {
        let fd = self.as_raw_fd();
        // SAFETY: `fd` is our open socket, borrowed for this call only.
        let r = unsafe { libc::shutdown(fd, libc::SHUT_WR) };
        if r < 0 {
            let e = io::Error::last_os_error();
            // The other end already went away: nothing left to tell it.
            if e.raw_os_error() == Some(libc::ENOTCONN) {
                return Ok(());
            }
            return Err(e);
        }
        Ok(())
    }

    /// Makes closing this socket abortive (TCP RST), so a reset stream does not look
    /// like a clean end to the local peer. Unix sockets have no such thing.
    pub(crate) fn abort_on_close(&self) {
        if let Socket::Tcp(s) = self {
            let l = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            // SAFETY: valid fd; `l` is a properly sized linger struct that outlives
            // the call, and the kernel only reads it.
            let _ = unsafe {
                libc::setsockopt(
                    s.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    (&l as *const libc::linger).cast(),
                    std::mem::size_of::<libc::linger>() as libc::socklen_t,
                )
            };
        }
    }
}
