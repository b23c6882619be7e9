//! Client of the simulated Xen host's grant and event-channel devices.
//!
//! Every object ([`Pages`], [`EventChannel`]) holds its own connection to the
//! domain's device socket (see [`proto`]). Dropping the object, or the process
//! dying, closes that connection, and the host then does what the kernel does when
//! a `/dev/xen/*` file is released: ends grants, performs unmap-notify, closes ports.
//!
//! Pages are memfds mapped `MAP_SHARED`; event channels are a pair of eventfds, so
//! `notify` is a plain eventfd write with no round trip through the host.

pub mod proto;

use std::ffi::c_void;
use std::io;
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::ptr::NonNull;
use std::sync::Mutex;
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::mman::{mmap, mmap_anonymous, munmap, MapFlags, ProtFlags};
use nix::sys::socket::{
    connect, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, UnixAddr,
};
use nix::sys::time::TimeVal;

use self::proto::{Reply, Request};
use super::{DomId, EventChannel, GrantRef, Pages, Platform, PAGE_SIZE};
use crate::{Error, Result};

/// Environment variable naming this domain's device socket on the simulated host.
pub const ENV_DEV: &str = "XENVT_SIM_DEV";

/// How long a request waits for the host before giving up, so a wedged host
/// cannot hang a daemon forever.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// The simulated host's grant and event-channel devices for one domain.
#[derive(Debug, Clone)]
pub struct SimPlatform {
    path: PathBuf,
}

impl SimPlatform {
    /// Opens the device socket at `path`. Connects once to fail early when no host
    /// listens there.
    pub fn new(path: PathBuf) -> Result<Self> {
        let platform = Self { path };
        drop(platform.connect("connect to simulated host")?);
        Ok(platform)
    }

    fn connect(&self, op: &'static str) -> Result<OwnedFd> {
        let sock = socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(|e| Error::platform(op, e))?;
        let addr = UnixAddr::new(&self.path).map_err(|e| Error::platform(op, e))?;
        connect(sock.as_raw_fd(), &addr).map_err(|e| Error::platform(op, e))?;
        let timeout = TimeVal::new(REPLY_TIMEOUT.as_secs() as _, 0);
        setsockopt(&sock, sockopt::ReceiveTimeout, &timeout).map_err(|e| Error::platform(op, e))?;
        Ok(sock)
    }
}

/// Sends `req` on `conn` and waits for the reply and its descriptors.
fn call(conn: &OwnedFd, req: &Request, op: &'static str) -> Result<(Reply, Vec<OwnedFd>)> {
    let bytes = proto::encode(req).map_err(|e| Error::platform(op, e))?;
    proto::send_msg(conn.as_fd(), &bytes, &[]).map_err(|e| Error::platform(op, e))?;
    let (msg, fds) = proto::recv_msg(conn.as_fd(), true)
        .map_err(|e| Error::platform(op, e))?
        .ok_or_else(|| {
            Error::platform(
                op,
                io::Error::new(io::ErrorKind::ConnectionAborted, "simulated host hung up"),
            )
        })?;
    let reply: Reply = serde_json::from_slice(&msg)
        .map_err(|e| Error::platform(op, io::Error::new(io::ErrorKind::InvalidData, e)))?;
    match reply {
        Reply::Refused(r) => Err(Error::platform(op, io::Error::from(r))),
        other => Ok((other, fds)),
    }
}

fn bad_reply(op: &'static str, what: &str) -> Error {
    Error::platform(
        op,
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected reply: {what}"),
        ),
    )
}

/// A range of our address space that is unmapped on drop.
struct Mapping {
    ptr: NonNull<c_void>,
    len: usize,
}

impl Mapping {
    /// Reserves `len` bytes of address space that cannot be touched.
    fn reserve(len: NonZeroUsize, op: &'static str) -> Result<Mapping> {
        // SAFETY: a fresh anonymous mapping at an address the kernel picks aliases
        // nothing in this process.
        let ptr = unsafe {
            mmap_anonymous(
                None,
                len,
                ProtFlags::PROT_NONE,
                MapFlags::MAP_PRIVATE | MapFlags::MAP_NORESERVE,
            )
        }
        .map_err(|e| Error::platform(op, e))?;
        Ok(Mapping {
            ptr,
            len: len.get(),
        })
    }

    /// Maps `fd` from `offset` over `[at, at + len)` of this mapping.
    fn map_fixed(
        &self,
        at: usize,
        len: NonZeroUsize,
        prot: ProtFlags,
        fd: &OwnedFd,
        offset: usize,
        op: &'static str,
    ) -> Result<()> {
        let end = at
            .checked_add(len.get())
            .filter(|&e| e <= self.len)
            .ok_or_else(|| bad_reply(op, "run outside the mapping"))?;
        debug_assert!(end <= self.len);
        let addr = NonZeroUsize::new(self.ptr.as_ptr() as usize + at)
            .ok_or_else(|| bad_reply(op, "null address"))?;
        let offset = libc::off_t::try_from(offset).map_err(|_| bad_reply(op, "offset"))?;
        // SAFETY: `[addr, addr + len)` lies inside the reservation this object
        // owns (checked above), so MAP_FIXED replaces only our own PROT_NONE or
        // earlier pages, never memory anything else uses.
        unsafe {
            mmap(
                Some(addr),
                len,
                prot,
                MapFlags::MAP_SHARED | MapFlags::MAP_FIXED,
                fd,
                offset,
            )
        }
        .map_err(|e| Error::platform(op, e))?;
        Ok(())
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` is a mapping this object created and still owns; no
        // reference into it exists (peer memory is only reached through raw pointers
        // whose users hold the owning `Pages`).
        if let Err(e) = unsafe { munmap(self.ptr, self.len) } {
            tracing::warn!("munmap of simulated grant mapping failed: {e}");
        }
    }
}

/// Pages shared with, or mapped from, another domain.
///
/// Field order matters: the mapping goes before the connection closes, so the host
/// performs unmap-notify only once our view is gone, as the kernel does.
pub struct SimPages {
    map: Mapping,
    refs: Vec<GrantRef>,
    conn: Mutex<OwnedFd>,
}

// SAFETY: the mapping is plain shared memory reached only through raw pointers;
// the object owns it and frees it once, so moving it between threads is sound.
unsafe impl Send for SimPages {}
// SAFETY: `&SimPages` gives out only the raw pointer (whose users synchronise with
// atomics/volatile) and requests on the connection, serialised by the mutex.
unsafe impl Sync for SimPages {}

impl Pages for SimPages {
    fn as_ptr(&self) -> *mut u8 {
        self.map.ptr.as_ptr().cast()
    }

    fn len(&self) -> usize {
        self.map.len
    }

    fn grant_refs(&self) -> &[GrantRef] {
        &self.refs
    }

    fn set_unmap_notify(&self, offset: usize, port: Option<u32>) -> Result<()> {
        const OP: &str = "set unmap notify";
        if offset >= self.map.len {
            return Err(Error::Invalid(format!(
                "unmap-notify offset {offset} outside {} bytes",
                self.map.len
            )));
        }
        let conn = self
            .conn
            .lock()
            .map_err(|_| Error::Invalid("connection lock poisoned".into()))?;
        let req = Request::UnmapNotify {
            offset: offset as u64,
            port,
        };
        match call(&conn, &req, OP)? {
            (Reply::Done, _) => Ok(()),
            _ => Err(bad_reply(OP, "not done")),
        }
    }
}

/// One end of an interdomain event channel on the simulated host.
pub struct SimEventChannel {
    port: u32,
    wait: OwnedFd,
    signal: OwnedFd,
    _conn: OwnedFd,
}

impl EventChannel for SimEventChannel {
    fn local_port(&self) -> u32 {
        self.port
    }

    fn notify(&self) -> Result<()> {
        match nix::unistd::write(&self.signal, &1u64.to_ne_bytes()) {
            // A saturated counter already reads as pending.
            Ok(_) | Err(Errno::EAGAIN) => Ok(()),
            Err(e) => Err(Error::platform("event channel notify", e)),
        }
    }

    fn as_raw_fd(&self) -> RawFd {
        self.wait.as_raw_fd()
    }

    fn clear(&self) -> Result<bool> {
        let mut buf = [0u8; 8];
        match nix::unistd::read(self.wait.as_raw_fd(), &mut buf) {
            Ok(_) => Ok(true),
            Err(Errno::EAGAIN) => Ok(false),
            Err(e) => Err(Error::platform("event channel clear", e)),
        }
    }
}

fn set_nonblocking(fd: &OwnedFd, op: &'static str) -> Result<()> {
    let flags = fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL).map_err(|e| Error::platform(op, e))?;
    let flags = OFlag::from_bits_retain(flags) | OFlag::O_NONBLOCK;
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(flags)).map_err(|e| Error::platform(op, e))?;
    Ok(())
}

fn page_bytes(count: usize) -> Result<NonZeroUsize> {
    count
        .checked_mul(PAGE_SIZE)
        .and_then(NonZeroUsize::new)
        .ok_or_else(|| Error::Invalid(format!("bad page count {count}")))
}

impl SimPlatform {
    fn port(&self, req: Request, op: &'static str) -> Result<Box<dyn EventChannel>> {
        let conn = self.connect(op)?;
        let (reply, fds) = call(&conn, &req, op)?;
        let port = match reply {
            Reply::Port { port } => port,
            _ => return Err(bad_reply(op, "not a port")),
        };
        let [wait, signal]: [OwnedFd; 2] = fds
            .try_into()
            .map_err(|_| bad_reply(op, "want two eventfds"))?;
        set_nonblocking(&wait, op)?;
        set_nonblocking(&signal, op)?;
        Ok(Box::new(SimEventChannel {
            port,
            wait,
            signal,
            _conn: conn,
        }))
    }
}

impl Platform for SimPlatform {
    fn share_pages(&self, peer: DomId, count: usize, writable: bool) -> Result<Box<dyn Pages>> {
        const OP: &str = "share pages";
        if count == 0 || count > proto::MAX_SHARE_PAGES as usize {
            return Err(Error::Invalid(format!("cannot share {count} pages")));
        }
        let len = page_bytes(count)?;
        let conn = self.connect(OP)?;
        let req = Request::Share {
            peer,
            count: count as u32,
            writable,
        };
        let (reply, fds) = call(&conn, &req, OP)?;
        let refs = match reply {
            Reply::Shared { refs } if refs.len() == count => refs,
            _ => return Err(bad_reply(OP, "not a share of the right size")),
        };
        let [memfd]: [OwnedFd; 1] = fds.try_into().map_err(|_| bad_reply(OP, "want one fd"))?;
        let map = Mapping::reserve(len, OP)?;
        map.map_fixed(
            0,
            len,
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
            &memfd,
            0,
            OP,
        )?;
        Ok(Box::new(SimPages {
            map,
            refs,
            conn: Mutex::new(conn),
        }))
    }

    fn map_pages(&self, peer: DomId, refs: &[GrantRef], writable: bool) -> Result<Box<dyn Pages>> {
        const OP: &str = "map grant refs";
        if refs.is_empty() || refs.len() > proto::MAX_MAP_REFS {
            return Err(Error::Invalid(format!("cannot map {} refs", refs.len())));
        }
        let len = page_bytes(refs.len())?;
        let conn = self.connect(OP)?;
        let req = Request::Map {
            peer,
            refs: refs.to_vec(),
            writable,
        };
        let (reply, fds) = call(&conn, &req, OP)?;
        let runs = match reply {
            Reply::Mapped { runs } => runs,
            _ => return Err(bad_reply(OP, "not a mapping")),
        };
        let prot = if writable {
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE
        } else {
            ProtFlags::PROT_READ
        };
        let map = Mapping::reserve(len, OP)?;
        let mut page = 0usize;
        for (fd_index, first, count) in runs {
            let fd = fds
                .get(usize::from(fd_index))
                .ok_or_else(|| bad_reply(OP, "fd index"))?;
            let run_len = page_bytes(count as usize)?;
            let at = page * PAGE_SIZE;
            let offset = (first as usize)
                .checked_mul(PAGE_SIZE)
                .ok_or_else(|| bad_reply(OP, "page index"))?;
            map.map_fixed(at, run_len, prot, fd, offset, OP)?;
            page += count as usize;
        }
        if page != refs.len() {
            return Err(bad_reply(OP, "runs do not cover the refs"));
        }
        Ok(Box::new(SimPages {
            map,
            refs: Vec::new(),
            conn: Mutex::new(conn),
        }))
    }

    fn alloc_unbound(&self, peer: DomId) -> Result<Box<dyn EventChannel>> {
        self.port(Request::AllocUnbound { peer }, "alloc unbound port")
    }

    fn bind_interdomain(&self, peer: DomId, remote_port: u32) -> Result<Box<dyn EventChannel>> {
        self.port(
            Request::BindInterdomain { peer, remote_port },
            "bind interdomain port",
        )
    }
}
