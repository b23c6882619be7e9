//! The simulated host's grant and event-channel devices, modelled on Linux's
//! gntalloc, gntdev and evtchn drivers and on Xen's grant and port semantics.
//!
//! Each domain has a `SOCK_SEQPACKET` socket; every client object (shared pages,
//! a mapping, a port) is one connection speaking
//! [`xenvt_ring::platform::sim::proto`]. Pages are memfds, event channels are
//! eventfd pairs handed to both ends, so data and notifications never pass through
//! this process. When a connection closes, because the object was dropped or its
//! process died, the object is released here just as the kernel releases a
//! device file: grants end, unmap-notify clears its byte and signals, ports close.

mod state;

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::sys::socket::{
    accept4, bind as nix_bind, getsockopt, listen, socket, sockopt, AddressFamily, Backlog,
    SockFlag, SockType, UnixAddr,
};
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;
use xenvt_ring::platform::sim::proto::{self, Received, Refused, Reply, Request};
use xenvt_ring::platform::DomId;

use state::{ConnId, State};
pub use state::{
    DevicesConfig, DevicesStats, DomainStats, CONNECTION_LIMIT, FIRST_REF, MAP_LIMIT_PAGES,
    PORT_LIMIT, REF_END,
};

/// Log lines about misbehaving clients allowed per second, so a hostile guest
/// cannot flood the host's log.
const LOG_LINES_PER_SEC: u32 = 10;

/// The device model shared by every domain's socket. Cheap to clone.
#[derive(Clone)]
pub struct Devices {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    log: Mutex<LogLimit>,
    /// Bumped after every release or destroy, so waiters need not poll.
    changed: watch::Sender<u64>,
}

struct LogLimit {
    window: Instant,
    lines: u32,
    dropped: u64,
}

impl LogLimit {
    /// Whether a line may be logged at `now`, and how many were suppressed in
    /// the window that just ended (to be reported once).
    fn admit(&mut self, now: Instant) -> (bool, u64) {
        let mut suppressed = 0;
        if now.saturating_duration_since(self.window) >= Duration::from_secs(1) {
            suppressed = std::mem::take(&mut self.dropped);
            self.window = now;
            self.lines = 0;
        }
        if self.lines < LOG_LINES_PER_SEC {
            self.lines += 1;
            (true, suppressed)
        } else {
            self.dropped += 1;
            (false, suppressed)
        }
    }
}

/// Binds a listening, non-blocking `SOCK_SEQPACKET` unix socket at `path` for
/// [`Devices::serve`].
pub fn bind(path: &Path) -> io::Result<OwnedFd> {
    let sock = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    let addr = UnixAddr::new(path)?;
    nix_bind(sock.as_raw_fd(), &addr)?;
    listen(&sock, Backlog::new(128)?)?;
    Ok(sock)
}

impl Devices {
    /// A device model with no domains yet.
    pub fn new(cfg: DevicesConfig) -> Self {
        Devices {
            inner: Arc::new(Inner {
                state: Mutex::new(State::new(cfg)),
                log: Mutex::new(LogLimit {
                    window: Instant::now(),
                    lines: 0,
                    dropped: 0,
                }),
                changed: watch::channel(0).0,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Serves every connection on `listener` (a listening `SOCK_SEQPACKET` unix
    /// socket, as [`bind`] makes) as domain `domid`, until the domain is destroyed.
    /// Serving a destroyed domain id again brings it back as a new domain.
    pub async fn serve(&self, listener: OwnedFd, domid: u16) -> io::Result<()> {
        set_nonblocking(&listener)?;
        let listener = register(listener)?;
        let mut dead = self.lock().open_domain(domid);
        loop {
            let accepted = tokio::select! {
                _ = dead.wait_for(|d| *d) => return Ok(()),
                r = accept(&listener) => r,
            };
            match accepted {
                Ok(sock) => {
                    let devices = self.clone();
                    let dead = dead.clone();
                    tokio::spawn(async move { devices.run_conn(sock, domid, dead).await });
                }
                Err(e) if transient_accept_error(&e) => {
                    self.log(format_args!("domain {domid}: accept failed: {e}"));
                    // Out of descriptors: the listener stays readable, so back off
                    // instead of spinning.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Destroys domain `domid`: its connections are dropped, its ports close
    /// (bound peers become unbound), its grants can no longer be mapped, and
    /// mappings of its pages held by others stay valid (a zombie in [`Devices::stats`]).
    pub fn destroy_domain(&self, domid: u16) {
        self.lock().destroy_domain(domid);
        self.bump();
    }

    fn bump(&self) {
        self.inner.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Waits until `pred` holds for [`Devices::stats`]; releases happen on the
    /// server's tasks after a client closes, so leak checks wait here (under a
    /// timeout of the caller's choice).
    pub async fn wait_stats(&self, pred: impl Fn(&DevicesStats) -> bool) {
        let mut rx = self.inner.changed.subscribe();
        loop {
            rx.borrow_and_update();
            if pred(&self.stats()) {
                return;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// Process ids (from `SO_PEERCRED`) of `domid`'s connected clients.
    pub fn pids(&self, domid: u16) -> Vec<i32> {
        self.lock().pids(domid)
    }

    /// Counters per domain, for status and leak checks.
    pub fn stats(&self) -> DevicesStats {
        self.lock().stats()
    }

    /// Logs a line about a client, within [`LOG_LINES_PER_SEC`].
    fn log(&self, line: std::fmt::Arguments<'_>) {
        let mut l = self.inner.log.lock().unwrap_or_else(|p| p.into_inner());
        let (allowed, suppressed) = l.admit(Instant::now());
        if suppressed > 0 {
            tracing::info!("devices: {suppressed} log lines suppressed");
        }
        if allowed {
            tracing::info!("devices: {line}");
        }
    }

    async fn run_conn(&self, sock: OwnedFd, domid: DomId, mut dead: watch::Receiver<bool>) {
        let pid = getsockopt(&sock, sockopt::PeerCredentials).map_or(0, |c| c.pid());
        let id = match self.lock().register(domid, pid) {
            Ok(id) => id,
            Err(r) => {
                self.log(format_args!("domain {domid} pid {pid}: {r}"));
                return;
            }
        };
        let sock = match register(sock) {
            Ok(s) => s,
            Err(e) => {
                self.log(format_args!("domain {domid}: {e}"));
                self.lock().release(id, true);
                self.bump();
                return;
            }
        };
        let outcome = tokio::select! {
            _ = dead.wait_for(|d| *d) => Ok(()),
            r = self.conn_loop(&sock, id) => r,
        };
        if let Err(e) = outcome {
            self.log(format_args!(
                "domain {domid} pid {pid}: dropping connection: {e}"
            ));
        }
        // After a destroy this finds nothing left to release.
        self.lock().release(id, true);
        self.bump();
    }

    /// Answers requests until the client hangs up or misbehaves.
    async fn conn_loop(&self, sock: &AsyncFd<OwnedFd>, id: ConnId) -> io::Result<()> {
        loop {
            let Some((msg, _)) = recv(sock).await? else {
                return Ok(());
            };
            let req = match Request::decode(&msg) {
                Ok(r) => r,
                Err(r) => {
                    let _ = send(sock, &Reply::Refused(r.clone()), Vec::new()).await;
                    return Err(io::Error::from(r));
                }
            };
            let (reply, fds) = self.handle(id, req);
            send(sock, &reply, fds).await?;
        }
    }

    fn handle(&self, id: ConnId, req: Request) -> (Reply, Vec<OwnedFd>) {
        let mut st = self.lock();
        let result: Result<(Reply, Vec<OwnedFd>), Refused> = match req {
            Request::Share {
                peer,
                count,
                writable,
            } => st
                .share(id, peer, count as usize, writable)
                .map(|(refs, fds)| (Reply::Shared { refs }, fds)),
            Request::Map {
                peer,
                refs,
                writable,
            } => st
                .map(id, peer, &refs, writable)
                .map(|(runs, fds)| (Reply::Mapped { runs }, fds)),
            Request::UnmapNotify { offset, port } => st
                .set_notify(id, offset, port)
                .map(|()| (Reply::Done, Vec::new())),
            Request::AllocUnbound { peer } => st
                .alloc_unbound(id, peer)
                .map(|(port, fds)| (Reply::Port { port }, fds)),
            Request::BindInterdomain { peer, remote_port } => st
                .bind(id, peer, remote_port)
                .map(|(port, fds)| (Reply::Port { port }, fds)),
        };
        result.unwrap_or_else(|r| (Reply::Refused(r), Vec::new()))
    }
}

fn transient_accept_error(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM | libc::ECONNABORTED)
    )
}

fn register(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: an `OwnedFd` keeps the same open descriptor until it is dropped, and
    // the `AsyncFd` owns it for its whole life.
    Ok(unsafe { AsyncFd::register(fd) }?)
}

fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL)?;
    let flags = OFlag::from_bits_retain(flags) | OFlag::O_NONBLOCK;
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(flags))?;
    Ok(())
}

async fn accept(listener: &AsyncFd<OwnedFd>) -> io::Result<OwnedFd> {
    loop {
        let mut guard = listener.readable().await?;
        let r = guard.try_io(|l| {
            let fd = accept4(
                l.get_ref().as_raw_fd(),
                SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            )?;
            // SAFETY: `accept4` just returned this descriptor; we are its only owner.
            Ok(unsafe { OwnedFd::from_raw_fd(fd) })
        });
        if let Ok(r) = r {
            return r;
        }
    }
}

async fn recv(sock: &AsyncFd<OwnedFd>) -> io::Result<Received> {
    loop {
        let mut guard = sock.readable().await?;
        // No control buffer: any descriptors a client attaches are dropped by the kernel.
        if let Ok(r) = guard.try_io(|s| proto::recv_msg(s.get_ref().as_fd(), false)) {
            return r;
        }
    }
}

async fn send(sock: &AsyncFd<OwnedFd>, reply: &Reply, fds: Vec<OwnedFd>) -> io::Result<()> {
    let bytes = proto::encode(reply)?;
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    loop {
        let mut guard = sock.writable().await?;
        if let Ok(r) = guard.try_io(|s| proto::send_msg(s.get_ref().as_fd(), &bytes, &raw)) {
            // Our copies of the descriptors close here; the client has its own.
            return r;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_are_rate_limited() {
        let t0 = Instant::now();
        let mut l = LogLimit {
            window: t0,
            lines: 0,
            dropped: 0,
        };
        let admitted = (0..1000).filter(|_| l.admit(t0).0).count();
        assert_eq!(admitted, LOG_LINES_PER_SEC as usize);
        let (ok, suppressed) = l.admit(t0 + Duration::from_millis(1500));
        assert!(ok);
        assert_eq!(suppressed, 1000 - u64::from(LOG_LINES_PER_SEC));
        assert_eq!(l.admit(t0 + Duration::from_millis(1600)), (true, 0));
    }
}
