//! Where console bytes come from: the guest console's pty (on Xen, the path in
//! `/local/domain/<id>/console/tty`) or a unix socket, read without blocking the runtime.
//!
//! [`pump`] reads in bounded chunks up to a per-call byte budget and then yields, so a
//! console that writes as fast as it can costs one budget of work per turn and cannot
//! starve other domains. [`Pacer`] limits how often a busy console is rendered.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use nix::fcntl::{self, OFlag};
use nix::sys::stat::Mode;
use nix::sys::termios;
use tokio::io::unix::AsyncFd;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

use super::log::ConsoleLog;
use super::{Console, Error, Result};

/// A readable and writable console byte stream.
#[derive(Debug)]
pub enum ConsoleSource {
    /// A terminal device (or any file descriptor that polls), non-blocking.
    Fd(AsyncFd<std::fs::File>),
    /// A connected unix stream socket.
    Unix(UnixStream),
}

fn io(what: &'static str) -> impl FnOnce(io::Error) -> Error {
    move |source| Error::Io {
        what: what.into(),
        source,
    }
}

/// End of input on a pty shows as EIO once the other side has closed.
fn closed(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::EIO)
}

impl ConsoleSource {
    /// Opens a pty (or other tty) by path, without making it our controlling terminal, and
    /// puts it in raw mode so the line discipline passes bytes through unchanged.
    pub fn open_pty(path: &Path) -> Result<Self> {
        let fd = fcntl::open(
            path,
            OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| Error::Io {
            what: "pty open".into(),
            source: e.into(),
        })?;
        // SAFETY: `open` just returned this descriptor and nothing else owns it.
        let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let mut t = termios::tcgetattr(fd.as_fd()).map_err(|e| Error::Io {
            what: "tcgetattr".into(),
            source: e.into(),
        })?;
        termios::cfmakeraw(&mut t);
        termios::tcsetattr(fd.as_fd(), termios::SetArg::TCSANOW, &t).map_err(|e| Error::Io {
            what: "tcsetattr".into(),
            source: e.into(),
        })?;
        Self::from_fd(fd)
    }

    /// Wraps an open descriptor (a pty master, a pipe, a socket) and makes it non-blocking;
    /// terminal modes are left alone.
    pub fn from_fd(fd: OwnedFd) -> Result<Self> {
        let flags = fcntl::fcntl(fd.as_raw_fd(), fcntl::F_GETFL).map_err(|e| Error::Io {
            what: "fcntl".into(),
            source: e.into(),
        })?;
        let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
        fcntl::fcntl(fd.as_raw_fd(), fcntl::F_SETFL(flags)).map_err(|e| Error::Io {
            what: "fcntl".into(),
            source: e.into(),
        })?;
        // SAFETY: the `File` owns the descriptor and keeps it open and unchanged until the
        // `AsyncFd` (its only owner) is dropped or unwrapped.
        let afd = unsafe { AsyncFd::register(std::fs::File::from(fd)) }.map_err(|e| Error::Io {
            what: "register fd".into(),
            source: e.into(),
        })?;
        Ok(ConsoleSource::Fd(afd))
    }

    /// Connects to a console served on a unix socket.
    pub async fn connect_unix(path: &Path) -> Result<Self> {
        Ok(ConsoleSource::Unix(
            UnixStream::connect(path).await.map_err(io("connect"))?,
        ))
    }

    /// A second handle on the same console, for a writer task: typed input then never
    /// waits behind (or blocks) the reading and rendering.
    pub fn try_clone(&self) -> Result<Self> {
        let fd = match self {
            ConsoleSource::Fd(afd) => afd.get_ref().as_fd().try_clone_to_owned(),
            ConsoleSource::Unix(s) => s.as_fd().try_clone_to_owned(),
        }
        .map_err(io("dup"))?;
        match self {
            ConsoleSource::Fd(_) => Self::from_fd(fd),
            ConsoleSource::Unix(_) => {
                let s = std::os::unix::net::UnixStream::from(fd);
                s.set_nonblocking(true).map_err(io("fcntl"))?;
                Ok(ConsoleSource::Unix(
                    UnixStream::from_std(s).map_err(io("register fd"))?,
                ))
            }
        }
    }

    /// Waits for and reads some bytes; [`Error::ConsoleClosed`] at end of input.
    pub async fn read(&mut self, buf: &mut [u8]) -> Result<usize> {
        loop {
            match self {
                ConsoleSource::Fd(afd) => {
                    let mut guard = afd.readable().await.map_err(io("poll"))?;
                    match guard.try_io(|f| f.get_ref().read(buf)) {
                        Ok(r) => return done(r),
                        Err(_would_block) => continue,
                    }
                }
                ConsoleSource::Unix(s) => {
                    s.readable().await.map_err(io("poll"))?;
                    match s.try_read(buf) {
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                        r => return done(r),
                    }
                }
            }
        }
    }

    /// Reads what is there without waiting; `None` when nothing is.
    pub fn try_read(&mut self, buf: &mut [u8]) -> Result<Option<usize>> {
        let r = match self {
            ConsoleSource::Fd(afd) => afd.get_ref().read(buf),
            ConsoleSource::Unix(s) => s.try_read(buf),
        };
        match r {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            r => done(r).map(Some),
        }
    }

    /// Writes all of `bytes` (typed input) to the guest.
    pub async fn write_all(&mut self, mut bytes: &[u8]) -> Result<()> {
        match self {
            ConsoleSource::Fd(afd) => {
                while !bytes.is_empty() {
                    let mut guard = afd.writable().await.map_err(io("poll"))?;
                    match guard.try_io(|f| f.get_ref().write(bytes)) {
                        Ok(Ok(0)) => return Err(Error::ConsoleClosed),
                        Ok(Ok(n)) => bytes = &bytes[n..],
                        Ok(Err(e)) if closed(&e) => return Err(Error::ConsoleClosed),
                        Ok(Err(e)) => {
                            return Err(Error::Io {
                                what: "write".into(),
                                source: e,
                            })
                        }
                        Err(_would_block) => {}
                    }
                }
                Ok(())
            }
            ConsoleSource::Unix(s) => s.write_all(bytes).await.map_err(|e| {
                if e.kind() == io::ErrorKind::BrokenPipe {
                    Error::ConsoleClosed
                } else {
                    Error::Io {
                        what: "write".into(),
                        source: e,
                    }
                }
            }),
        }
    }
}

fn done(r: io::Result<usize>) -> Result<usize> {
    match r {
        Ok(0) => Err(Error::ConsoleClosed),
        Ok(n) => Ok(n),
        Err(e) if closed(&e) || e.kind() == io::ErrorKind::ConnectionReset => {
            Err(Error::ConsoleClosed)
        }
        Err(e) => Err(Error::Io {
            what: "read".into(),
            source: e,
        }),
    }
}

/// Read sizes for [`pump`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PumpLimits {
    /// Bytes per read.
    pub chunk: usize,
    /// Bytes per call before yielding to other tasks.
    pub budget: usize,
}

impl Default for PumpLimits {
    fn default() -> Self {
        PumpLimits {
            chunk: 4096,
            budget: 64 * 1024,
        }
    }
}

/// Waits for console output, then feeds the console (and log) with what is available, up
/// to the budget; returns the bytes taken. It yields to the runtime when the budget ran
/// out. Cancel-safe: the only waits are the first readiness wait and that final yield,
/// and nothing read is held across either.
pub async fn pump(
    src: &mut ConsoleSource,
    console: &mut Console,
    mut log: Option<&mut ConsoleLog>,
    limits: PumpLimits,
) -> Result<usize> {
    let chunk = limits.chunk.clamp(1, 1 << 20);
    let mut buf = vec![0u8; chunk];
    let mut total = src.read(&mut buf).await?;
    let mut take = |bytes: &[u8], log: &mut Option<&mut ConsoleLog>| {
        console.feed(bytes);
        if let Some(l) = log {
            // A failing log (a full disk) costs the log, not the console; it says so once.
            if let Err(e) = l.write(bytes) {
                tracing::warn!("console log {} stopped: {e}", l.path().display());
            }
        }
    };
    take(&buf[..total], &mut log);
    while total < limits.budget {
        match src.try_read(&mut buf)? {
            Some(n) => {
                take(&buf[..n], &mut log);
                total += n;
            }
            None => return Ok(total),
        }
    }
    tokio::task::yield_now().await;
    Ok(total)
}

/// Coalesces rendering while output streams: at most one render per interval.
#[derive(Clone, Debug)]
pub struct Pacer {
    interval: Duration,
    /// The earliest next render.
    next: Instant,
    dirty: bool,
}

impl Pacer {
    /// At most `per_second` renders a second (at least 1).
    pub fn new(per_second: u32) -> Self {
        Pacer {
            interval: Duration::from_secs(1) / per_second.max(1),
            next: Instant::now(),
            dirty: false,
        }
    }

    /// The console changed.
    pub fn mark_dirty(&mut self) {
        self.dirty = true;
    }

    /// When the next render should happen; `None` when nothing changed.
    pub fn due(&self) -> Option<Instant> {
        self.dirty.then_some(self.next)
    }

    /// True when a render is due at `now`.
    pub fn ready(&self, now: Instant) -> bool {
        self.due().is_some_and(|t| t <= now)
    }

    /// Records a render at `now`.
    pub fn rendered(&mut self, now: Instant) {
        self.next = now + self.interval;
        self.dirty = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacer_spaces_renders() {
        let mut p = Pacer::new(10);
        assert_eq!(p.due(), None);
        p.mark_dirty();
        let t0 = Instant::now();
        assert!(p.ready(t0));
        p.rendered(t0);
        assert_eq!(p.due(), None);
        p.mark_dirty();
        assert_eq!(p.due(), Some(t0 + Duration::from_millis(100)));
        assert!(!p.ready(t0 + Duration::from_millis(99)));
        assert!(p.ready(t0 + Duration::from_millis(100)));
    }
}
