//! Zero-copy moves between a socket and a channel.
//!
//! `readv(2)` writes straight into the ring's (up to two) free segments and
//! `sendmsg(2)` sends straight from its (up to two) data segments: the kernel does
//! the only copy, with no bounce buffer in between.

use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, RawFd};

use tokio::io::Interest;

use crate::ring::Segments;
use crate::stream::{ChannelReader, ChannelWriter};
use crate::Error;

/// A tokio socket we can wait on and do raw I/O with.
pub trait AsyncSocket: AsRawFd {
    /// Waits until the socket is ready for `interest`.
    fn ready_for(&self, interest: Interest) -> impl Future<Output = io::Result<()>> + Send;
    /// Runs `f` as a raw I/O attempt, clearing readiness when it would block.
    fn try_io_with<R>(
        &self,
        interest: Interest,
        f: impl FnOnce() -> io::Result<R>,
    ) -> io::Result<R>;
}

macro_rules! async_socket {
    ($t:ty) => {
        impl AsyncSocket for $t {
            fn ready_for(&self, interest: Interest) -> impl Future<Output = io::Result<()>> + Send {
                async move { self.ready(interest).await.map(|_| ()) }
            }
            fn try_io_with<R>(
                &self,
                interest: Interest,
                f: impl FnOnce() -> io::Result<R>,
            ) -> io::Result<R> {
                self.try_io(interest, f)
            }
        }
    };
}

async_socket!(tokio::net::TcpStream);
async_socket!(tokio::net::UnixStream);

fn iovecs(segs: &Segments) -> ([libc::iovec; 2], usize) {
    let iov = segs.map(|(p, len)| libc::iovec {
        iov_base: p.cast(),
        iov_len: len,
    });
    (iov, if segs[1].1 == 0 { 1 } else { 2 })
}

/// `readv(2)` from `fd` into ring segments.
///
/// `segs` must come from [`Channel::write_with`](crate::Channel::write_with) and be
/// used only inside its callback, while they are valid, writable and ours.
pub fn readv_into(fd: RawFd, segs: Segments) -> io::Result<usize> {
    let (iov, cnt) = iovecs(&segs);
    // SAFETY: the iovecs describe free ring space that the producer lock reserves
    // for us during the callback; the kernel writes at most their lengths there.
    // No Rust reference to that memory exists.
    let n = unsafe { libc::readv(fd, iov.as_ptr(), cnt as libc::c_int) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// `sendmsg(2)` ring segments to the socket `fd` (no SIGPIPE).
///
/// `segs` must come from [`Channel::read_with`](crate::Channel::read_with) and be
/// used only inside its callback.
pub fn send_from(fd: RawFd, segs: Segments) -> io::Result<usize> {
    let (mut iov, cnt) = iovecs(&segs);
    // SAFETY: an all-zero msghdr is valid (no name, no control data).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = cnt as _;
    // SAFETY: the iovecs describe ready ring data, mapped for the duration of the
    // callback; the kernel only reads from them. `msg` and `iov` outlive the call.
    let n = unsafe { libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Moves bytes from `sock` into the channel until the socket reaches EOF; returns
/// the count. The channel is left open (drop or shut down `w` to end it).
pub async fn copy_socket_to_channel<S: AsyncSocket>(
    sock: &S,
    w: &mut ChannelWriter,
) -> io::Result<u64> {
    let fd = sock.as_raw_fd();
    let mut total = 0u64;
    loop {
        w.writable().await?;
        sock.ready_for(Interest::READABLE).await?;
        let r = sock.try_io_with(Interest::READABLE, || {
            w.write_with(|segs| readv_into(fd, segs))
                .map_err(io::Error::from)
        });
        match r {
            Ok(Some(0)) => return Ok(total),
            Ok(Some(n)) => total += n as u64,
            Ok(None) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Moves bytes from the channel to `sock` until the channel ends (the peer
/// closed and everything it wrote was sent); returns the count.
pub async fn copy_channel_to_socket<S: AsyncSocket>(
    r: &mut ChannelReader,
    sock: &S,
) -> io::Result<u64> {
    let fd = sock.as_raw_fd();
    let mut total = 0u64;
    loop {
        if !r.readable().await? {
            return Ok(total);
        }
        sock.ready_for(Interest::WRITABLE).await?;
        let res = sock.try_io_with(Interest::WRITABLE, || {
            match r.read_with(|segs| send_from(fd, segs)) {
                Ok(v) => Ok(v),
                // End of stream: `readable` reports it on the next turn.
                Err(Error::PeerClosed) => Ok(None),
                Err(e) => Err(io::Error::from(e)),
            }
        });
        match res {
            Ok(Some(0)) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(Some(n)) => total += n as u64,
            Ok(None) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}
