//! The grant table and event-channel port model, without any sockets.
//!
//! Connections are opaque ids here; the server in `mod.rs` maps each client
//! connection to one id and calls [`State::release`] when it closes, which is
//! where the kernel's release-time behaviour (ending grants, unmap-notify,
//! closing ports) lives.

use std::collections::{BTreeMap, HashMap};
use std::ffi::c_void;
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::Arc;

use nix::fcntl::{fcntl, open, FcntlArg, OFlag, SealFlag};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};
use nix::sys::stat::Mode;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use xenvt_ring::platform::sim::proto::{Refused, RefusedKind, Run, MAX_FDS};
use xenvt_ring::platform::{DomId, GrantRef, PAGE_SIZE};

/// Limits of the device model.
#[derive(Debug, Clone)]
pub struct DevicesConfig {
    /// Pages each domain may have granted at once (Linux gntalloc's `limit`).
    pub grant_limit_pages: usize,
}

impl Default for DevicesConfig {
    fn default() -> Self {
        DevicesConfig {
            grant_limit_pages: 1024,
        }
    }
}

/// Pages of other domains one domain may map at once; bounds the host's bookkeeping.
pub const MAP_LIMIT_PAGES: usize = 65536;

/// Event-channel ports per domain; numbers run from 1 to this (the 2-level ABI's
/// 4096 less the reserved port 0).
pub const PORT_LIMIT: u32 = 4095;

/// Open device connections per domain; each one is an object, so this bounds the
/// host's descriptors and memory per domain.
pub const CONNECTION_LIMIT: usize = 8192;

/// First grant reference handed out: Linux keeps 0 to 7 for the console,
/// xenstore and friends (`GNTTAB_NR_RESERVED_ENTRIES`).
pub const FIRST_REF: GrantRef = 8;

/// One past the last grant reference: a v1 table of 64 frames of 512 entries.
pub const REF_END: GrantRef = 64 * 512;

/// Counters for one domain, for status displays and leak checks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainStats {
    /// Grant entries of this domain still in the table (held, or ended but still mapped).
    pub grants: usize,
    /// Pages this domain holds granted (what counts against the grant limit).
    pub pages_granted: usize,
    /// Pages of other domains this domain maps.
    pub pages_mapped: usize,
    /// Pages of this domain that other domains map.
    pub pages_mapped_by_others: usize,
    /// Event-channel ports open in this domain.
    pub ports: usize,
    /// Open device connections (objects) of this domain's processes.
    pub connections: usize,
    /// The domain was destroyed.
    pub destroyed: bool,
    /// Destroyed, but others still map its pages, so it cannot go away.
    pub zombie: bool,
}

/// Counters for every domain the device model knows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevicesStats {
    /// By domain id.
    pub domains: BTreeMap<DomId, DomainStats>,
}

impl DevicesStats {
    /// Whether nothing is held anywhere: no grants, mappings, ports or connections.
    pub fn is_clean(&self) -> bool {
        self.domains.values().all(|d| {
            d.grants == 0
                && d.pages_granted == 0
                && d.pages_mapped == 0
                && d.pages_mapped_by_others == 0
                && d.ports == 0
                && d.connections == 0
        })
    }
}

/// Identifies one client connection (one device object).
pub type ConnId = u64;

/// A memfd of granted pages, with the host's own mapping of it for unmap-notify.
pub(crate) struct SharedMem {
    fd: OwnedFd,
    ptr: NonNull<c_void>,
    len: usize,
    id: u64,
}

// SAFETY: the mapping is owned by this object and only reached through raw
// pointers with volatile writes; moving it between threads changes nothing.
unsafe impl Send for SharedMem {}
// SAFETY: shared access only performs volatile single-byte writes through a raw
// pointer, which races only with peers that expect exactly that (unmap-notify).
unsafe impl Sync for SharedMem {}

impl SharedMem {
    /// A zeroed memfd of `pages` pages, sealed so nobody can shrink it (which would
    /// turn every mapping into SIGBUS) or grow it.
    fn new(pages: usize, id: u64) -> Result<SharedMem, Refused> {
        let len = pages
            .checked_mul(PAGE_SIZE)
            .and_then(NonZeroUsize::new)
            .ok_or_else(|| Refused::new(RefusedKind::Invalid, "bad page count"))?;
        let fd = memfd_create(
            c"xenvt-grant",
            MemFdCreateFlag::MFD_CLOEXEC | MemFdCreateFlag::MFD_ALLOW_SEALING,
        )
        .map_err(|e| Refused::io("memfd_create", e))?;
        let size = libc::off_t::try_from(len.get()).map_err(|e| Refused::io("size", e))?;
        nix::unistd::ftruncate(&fd, size).map_err(|e| Refused::io("ftruncate", e))?;
        fcntl(
            fd.as_raw_fd(),
            FcntlArg::F_ADD_SEALS(
                SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL,
            ),
        )
        .map_err(|e| Refused::io("seal memfd", e))?;
        // SAFETY: a fresh shared mapping of our own sealed memfd at an address the
        // kernel picks; it aliases nothing in this process.
        let ptr = unsafe {
            mmap(
                None,
                len,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                &fd,
                0,
            )
        }
        .map_err(|e| Refused::io("mmap", e))?;
        Ok(SharedMem {
            fd,
            ptr,
            len: len.get(),
            id,
        })
    }

    /// Clears the byte at `offset`, as the kernel's unmap-notify does.
    fn clear_byte(&self, offset: usize) {
        if offset < self.len {
            // SAFETY: `offset` is inside our live mapping (checked). Peers may write
            // the same byte concurrently, so a volatile write through a raw pointer
            // is used and no reference is formed.
            unsafe { self.ptr.as_ptr().cast::<u8>().add(offset).write_volatile(0) };
            std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// A descriptor for a mapper: the memfd itself when writable, or a read-only
    /// reopen, through which no writable shared mapping can be made.
    fn fd_for(&self, writable: bool) -> Result<OwnedFd, Refused> {
        if writable {
            self.fd.try_clone().map_err(|e| Refused::io("dup memfd", e))
        } else {
            let path = format!("/proc/self/fd/{}", self.fd.as_raw_fd());
            let raw = open(
                path.as_str(),
                OFlag::O_RDONLY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| Refused::io("reopen memfd read-only", e))?;
            // SAFETY: `open` just returned this descriptor and nothing else owns it.
            Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) })
        }
    }
}

impl Drop for SharedMem {
    fn drop(&mut self) {
        // SAFETY: our own mapping, created in `new`, unmapped exactly once here.
        if let Err(e) = unsafe { munmap(self.ptr, self.len) } {
            tracing::warn!("munmap of grant memory failed: {e}");
        }
    }
}

struct Grant {
    grantee: DomId,
    writable: bool,
    mem: Arc<SharedMem>,
    page: usize,
    /// The granter still holds it (its gntalloc object is open). Once false, new
    /// maps are refused and the entry goes when the last mapping does.
    held: bool,
    /// Live mappings of this entry.
    maps: usize,
}

struct Port {
    /// The domain allowed to bind, or bound.
    remote: DomId,
    /// The remote port when bound.
    bound: Option<u32>,
    /// The eventfd this port's owner waits on.
    wait: Arc<OwnedFd>,
    /// The eventfd this port's owner signals (the binder's `wait`).
    signal: Arc<OwnedFd>,
    /// The owner's connection is open.
    open: bool,
    /// Pending unmap-notifies that will signal through this port; like Linux's
    /// `evtchn_get`, they keep the port alive after its owner closes.
    holds: usize,
}

#[derive(Clone, Copy)]
struct Notify {
    offset: usize,
    port: Option<u32>,
}

enum Role {
    /// Nothing asked yet.
    Idle,
    Shared {
        mem: Arc<SharedMem>,
        refs: Vec<GrantRef>,
        notify: Option<Notify>,
    },
    Mapped {
        granter: DomId,
        refs: Vec<GrantRef>,
        writable: bool,
        notify: Option<Notify>,
    },
    Port(u32),
}

struct Conn {
    domid: DomId,
    pid: i32,
    role: Role,
}

struct Domain {
    dead: bool,
    dead_tx: watch::Sender<bool>,
    next_ref: GrantRef,
    pages_granted: usize,
    pages_mapped: usize,
    pages_mapped_by_others: usize,
    grants: usize,
    ports: BTreeMap<u32, Port>,
    conns: usize,
}

impl Domain {
    fn new() -> Domain {
        Domain {
            dead: false,
            dead_tx: watch::channel(false).0,
            next_ref: FIRST_REF,
            pages_granted: 0,
            pages_mapped: 0,
            pages_mapped_by_others: 0,
            grants: 0,
            ports: BTreeMap::new(),
            conns: 0,
        }
    }

    fn lowest_free_port(&self) -> Result<u32, Refused> {
        (1..=PORT_LIMIT)
            .find(|p| !self.ports.contains_key(p))
            .ok_or_else(|| Refused::new(RefusedKind::Limit, "no free event-channel port"))
    }
}

/// The whole device model.
pub(crate) struct State {
    cfg: DevicesConfig,
    domains: BTreeMap<DomId, Domain>,
    grants: HashMap<(DomId, GrantRef), Grant>,
    conns: HashMap<ConnId, Conn>,
    next_conn: ConnId,
    next_mem: u64,
}

/// What a successful request hands the client besides the reply.
pub(crate) type Fds = Vec<OwnedFd>;

fn refuse<T>(kind: RefusedKind, detail: impl Into<String>) -> Result<T, Refused> {
    Err(Refused::new(kind, detail))
}

fn eventfd() -> Result<Arc<OwnedFd>, Refused> {
    let efd = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
        .map_err(|e| Refused::io("eventfd", e))?;
    Ok(Arc::new(OwnedFd::from(efd)))
}

/// Reads and discards whatever is pending on an eventfd.
fn drain(fd: &OwnedFd) {
    let mut buf = [0u8; 8];
    let _ = nix::unistd::read(fd.as_raw_fd(), &mut buf);
}

fn kick(fd: &OwnedFd) {
    let _ = nix::unistd::write(fd.as_fd(), &1u64.to_ne_bytes());
}

fn dup(fd: &OwnedFd) -> Result<OwnedFd, Refused> {
    fd.try_clone().map_err(|e| Refused::io("dup", e))
}

impl State {
    pub(crate) fn new(cfg: DevicesConfig) -> State {
        State {
            cfg,
            domains: BTreeMap::new(),
            grants: HashMap::new(),
            conns: HashMap::new(),
            next_conn: 1,
            next_mem: 1,
        }
    }

    /// Makes `domid` live (creating or reviving it) and returns its death watch.
    pub(crate) fn open_domain(&mut self, domid: DomId) -> watch::Receiver<bool> {
        let dom = self.domains.entry(domid).or_insert_with(Domain::new);
        if dom.dead {
            dom.dead = false;
            dom.dead_tx = watch::channel(false).0;
        }
        dom.dead_tx.subscribe()
    }

    fn live_domain(&mut self, domid: DomId) -> Result<&mut Domain, Refused> {
        match self.domains.get_mut(&domid) {
            Some(d) if !d.dead => Ok(d),
            _ => refuse(RefusedKind::NotFound, format!("no domain {domid}")),
        }
    }

    /// Records a new client connection of `domid`'s process `pid`.
    pub(crate) fn register(&mut self, domid: DomId, pid: i32) -> Result<ConnId, Refused> {
        let dom = self.live_domain(domid)?;
        if dom.conns >= CONNECTION_LIMIT {
            return refuse(RefusedKind::Limit, "too many device connections");
        }
        dom.conns += 1;
        let id = self.next_conn;
        self.next_conn += 1;
        self.conns.insert(
            id,
            Conn {
                domid,
                pid,
                role: Role::Idle,
            },
        );
        Ok(id)
    }

    /// The connection's domain, if it is still open and idle.
    fn idle_conn(&self, id: ConnId) -> Result<DomId, Refused> {
        match self.conns.get(&id) {
            Some(Conn {
                role: Role::Idle,
                domid,
                ..
            }) => Ok(*domid),
            Some(_) => refuse(RefusedKind::Invalid, "connection already holds an object"),
            None => refuse(RefusedKind::NotFound, "connection closed"),
        }
    }

    fn set_role(&mut self, id: ConnId, role: Role) {
        if let Some(c) = self.conns.get_mut(&id) {
            c.role = role;
        }
    }

    /// Grants `count` fresh pages of the caller's domain to `peer` (gntalloc).
    pub(crate) fn share(
        &mut self,
        id: ConnId,
        peer: DomId,
        count: usize,
        writable: bool,
    ) -> Result<(Vec<GrantRef>, Fds), Refused> {
        let domid = self.idle_conn(id)?;
        let limit = self.cfg.grant_limit_pages;
        let dom = self.live_domain(domid)?;
        if dom.pages_granted.saturating_add(count) > limit {
            return refuse(
                RefusedKind::Limit,
                format!("grant limit of {limit} pages reached"),
            );
        }
        let mem = Arc::new(SharedMem::new(count, self.next_mem)?);
        self.next_mem += 1;
        let fd = dup(&mem.fd)?;
        let refs = self.alloc_refs(domid, count)?;
        for (page, r) in refs.iter().enumerate() {
            self.grants.insert(
                (domid, *r),
                Grant {
                    grantee: peer,
                    writable,
                    mem: mem.clone(),
                    page,
                    held: true,
                    maps: 0,
                },
            );
        }
        if let Some(dom) = self.domains.get_mut(&domid) {
            dom.pages_granted += count;
            dom.grants += count;
        }
        self.set_role(
            id,
            Role::Shared {
                mem,
                refs: refs.clone(),
                notify: None,
            },
        );
        Ok((refs, vec![fd]))
    }

    /// Picks `count` unused refs, going round the table so a just-freed ref is not
    /// handed out again at once (stale refs then fail instead of aliasing).
    fn alloc_refs(&mut self, domid: DomId, count: usize) -> Result<Vec<GrantRef>, Refused> {
        let Some(dom) = self.domains.get(&domid) else {
            return refuse(RefusedKind::NotFound, "no domain");
        };
        let mut cursor = dom.next_ref;
        let mut refs = Vec::with_capacity(count);
        let span = REF_END - FIRST_REF;
        let mut tried = 0;
        while refs.len() < count {
            if tried >= span {
                return refuse(RefusedKind::Limit, "grant table full");
            }
            if !self.grants.contains_key(&(domid, cursor)) {
                refs.push(cursor);
            }
            cursor = if cursor + 1 >= REF_END {
                FIRST_REF
            } else {
                cursor + 1
            };
            tried += 1;
        }
        if let Some(dom) = self.domains.get_mut(&domid) {
            dom.next_ref = cursor;
        }
        Ok(refs)
    }

    /// Maps `peer`'s `refs` for the caller's domain (gntdev). Returns one
    /// descriptor per distinct memfd and the runs that lay them out.
    pub(crate) fn map(
        &mut self,
        id: ConnId,
        peer: DomId,
        refs: &[GrantRef],
        writable: bool,
    ) -> Result<(Vec<Run>, Fds), Refused> {
        let domid = self.idle_conn(id)?;
        match self.domains.get(&peer) {
            Some(d) if !d.dead => {}
            _ => return refuse(RefusedKind::NotFound, format!("no domain {peer}")),
        }
        let mapped = self.domains.get(&domid).map_or(0, |d| d.pages_mapped);
        if mapped.saturating_add(refs.len()) > MAP_LIMIT_PAGES {
            return refuse(RefusedKind::Limit, "map limit reached");
        }
        let mut runs: Vec<Run> = Vec::new();
        let mut mems: Vec<Arc<SharedMem>> = Vec::new();
        let mut last: Option<(u64, usize)> = None;
        for r in refs {
            let Some(g) = self.grants.get(&(peer, *r)) else {
                return refuse(
                    RefusedKind::NotFound,
                    format!("no grant {r} of domain {peer}"),
                );
            };
            if !g.held {
                return refuse(RefusedKind::NotFound, format!("grant {r} was ended"));
            }
            if g.grantee != domid {
                return refuse(
                    RefusedKind::Permission,
                    format!("grant {r} is not for domain {domid}"),
                );
            }
            if writable && !g.writable {
                return refuse(RefusedKind::Permission, format!("grant {r} is read-only"));
            }
            let idx = match mems.iter().position(|m| m.id == g.mem.id) {
                Some(i) => i,
                None if mems.len() < MAX_FDS => {
                    mems.push(g.mem.clone());
                    mems.len() - 1
                }
                None => return refuse(RefusedKind::Limit, "refs span too many grants"),
            };
            let contiguous = last == Some((g.mem.id, g.page.wrapping_sub(1)));
            match runs.last_mut() {
                Some(run) if contiguous => run.2 += 1,
                _ => runs.push((idx as u16, g.page as u32, 1)),
            }
            last = Some((g.mem.id, g.page));
        }
        let fds = mems
            .iter()
            .map(|m| m.fd_for(writable))
            .collect::<Result<Fds, Refused>>()?;
        for r in refs {
            if let Some(g) = self.grants.get_mut(&(peer, *r)) {
                g.maps += 1;
            }
        }
        if let Some(d) = self.domains.get_mut(&domid) {
            d.pages_mapped += refs.len();
        }
        if let Some(d) = self.domains.get_mut(&peer) {
            d.pages_mapped_by_others += refs.len();
        }
        self.set_role(
            id,
            Role::Mapped {
                granter: peer,
                refs: refs.to_vec(),
                writable,
                notify: None,
            },
        );
        Ok((runs, fds))
    }

    /// Arms unmap-notify on the connection's pages.
    pub(crate) fn set_notify(
        &mut self,
        id: ConnId,
        offset: u64,
        port: Option<u32>,
    ) -> Result<(), Refused> {
        let Some(conn) = self.conns.get(&id) else {
            return refuse(RefusedKind::NotFound, "connection closed");
        };
        let domid = conn.domid;
        let len = match &conn.role {
            Role::Shared { refs, .. } => refs.len() * PAGE_SIZE,
            Role::Mapped {
                refs,
                writable: true,
                ..
            } => refs.len() * PAGE_SIZE,
            Role::Mapped { .. } => {
                return refuse(
                    RefusedKind::Invalid,
                    "cannot clear a byte of a read-only map",
                )
            }
            _ => return refuse(RefusedKind::Invalid, "no pages on this connection"),
        };
        let offset = usize::try_from(offset)
            .ok()
            .filter(|o| *o < len)
            .ok_or_else(|| Refused::new(RefusedKind::Invalid, "offset outside the pages"))?;
        if let Some(p) = port {
            let dom = self.live_domain(domid)?;
            match dom.ports.get_mut(&p) {
                Some(port) if port.open => port.holds += 1,
                _ => return refuse(RefusedKind::NotFound, format!("no port {p}")),
            }
        }
        let new = Some(Notify { offset, port });
        let old = match self.conns.get_mut(&id).map(|c| &mut c.role) {
            Some(Role::Shared { notify, .. }) | Some(Role::Mapped { notify, .. }) => {
                std::mem::replace(notify, new)
            }
            _ => None,
        };
        if let Some(Notify { port: Some(p), .. }) = old {
            self.unhold_port(domid, p);
        }
        Ok(())
    }

    /// Allocates an unbound port of the caller's domain for `peer`.
    pub(crate) fn alloc_unbound(&mut self, id: ConnId, peer: DomId) -> Result<(u32, Fds), Refused> {
        let domid = self.idle_conn(id)?;
        let wait = eventfd()?;
        let signal = eventfd()?;
        let fds = vec![dup(&wait)?, dup(&signal)?];
        let dom = self.live_domain(domid)?;
        let port = dom.lowest_free_port()?;
        dom.ports.insert(
            port,
            Port {
                remote: peer,
                bound: None,
                wait,
                signal,
                open: true,
                holds: 0,
            },
        );
        self.set_role(id, Role::Port(port));
        Ok((port, fds))
    }

    /// Binds a new port of the caller's domain to `peer`'s unbound `remote_port`.
    pub(crate) fn bind(
        &mut self,
        id: ConnId,
        peer: DomId,
        remote_port: u32,
    ) -> Result<(u32, Fds), Refused> {
        let domid = self.idle_conn(id)?;
        let (wait, signal) = {
            let rdom = self.live_domain(peer)?;
            let Some(rp) = rdom.ports.get(&remote_port).filter(|p| p.open) else {
                return refuse(
                    RefusedKind::NotFound,
                    format!("no port {remote_port} in domain {peer}"),
                );
            };
            if rp.bound.is_some() {
                return refuse(
                    RefusedKind::Invalid,
                    format!("port {remote_port} is not unbound"),
                );
            }
            if rp.remote != domid {
                return refuse(
                    RefusedKind::Permission,
                    format!("port {remote_port} is not for domain {domid}"),
                );
            }
            (rp.signal.clone(), rp.wait.clone())
        };
        let fds = vec![dup(&wait)?, dup(&signal)?];
        let dom = self.live_domain(domid)?;
        let port = dom.lowest_free_port()?;
        // Events sent while nobody was bound are dropped, as Xen drops them.
        drain(&wait);
        dom.ports.insert(
            port,
            Port {
                remote: peer,
                bound: Some(remote_port),
                wait,
                signal,
                open: true,
                holds: 0,
            },
        );
        if let Some(rp) = self
            .domains
            .get_mut(&peer)
            .and_then(|d| d.ports.get_mut(&remote_port))
        {
            rp.bound = Some(port);
        }
        self.set_role(id, Role::Port(port));
        Ok((port, fds))
    }

    /// Drops one unmap-notify hold on a port and closes it if that was the last use.
    fn unhold_port(&mut self, domid: DomId, port: u32) {
        let close = match self
            .domains
            .get_mut(&domid)
            .and_then(|d| d.ports.get_mut(&port))
        {
            Some(p) => {
                p.holds = p.holds.saturating_sub(1);
                !p.open && p.holds == 0
            }
            None => false,
        };
        if close {
            self.close_port(domid, port);
        }
    }

    /// Closes a port; a bound peer's end becomes unbound, as in Xen.
    fn close_port(&mut self, domid: DomId, port: u32) {
        let Some(p) = self
            .domains
            .get_mut(&domid)
            .and_then(|d| d.ports.remove(&port))
        else {
            return;
        };
        if let Some(rport) = p.bound {
            if let Some(rp) = self
                .domains
                .get_mut(&p.remote)
                .and_then(|d| d.ports.get_mut(&rport))
            {
                if rp.remote == domid && rp.bound == Some(port) {
                    rp.bound = None;
                }
            }
        }
    }

    /// Signals through a local port, if it is bound.
    fn signal_port(&self, domid: DomId, port: u32) {
        if let Some(p) = self.domains.get(&domid).and_then(|d| d.ports.get(&port)) {
            if p.bound.is_some() {
                kick(&p.signal);
            }
        }
    }

    /// Ends one grant reference held or mapped by a closing connection.
    fn drop_grant_use(&mut self, granter: DomId, r: GrantRef, was_held: bool) {
        let remove = match self.grants.get_mut(&(granter, r)) {
            Some(g) => {
                if was_held {
                    g.held = false;
                } else {
                    g.maps = g.maps.saturating_sub(1);
                }
                !g.held && g.maps == 0
            }
            None => false,
        };
        if remove {
            self.grants.remove(&(granter, r));
        }
        if let Some(d) = self.domains.get_mut(&granter) {
            if was_held {
                d.pages_granted = d.pages_granted.saturating_sub(1);
            } else {
                d.pages_mapped_by_others = d.pages_mapped_by_others.saturating_sub(1);
            }
            if remove {
                d.grants = d.grants.saturating_sub(1);
            }
        }
    }

    /// The connection closed: release its object as the kernel does on file
    /// release. `notify` is false when the whole domain died, whose kernel would
    /// not run any more. Releasing an unknown id does nothing.
    pub(crate) fn release(&mut self, id: ConnId, notify: bool) {
        let Some(conn) = self.conns.remove(&id) else {
            return;
        };
        let domid = conn.domid;
        if let Some(d) = self.domains.get_mut(&domid) {
            d.conns = d.conns.saturating_sub(1);
        }
        match conn.role {
            Role::Idle => {}
            Role::Shared {
                mem,
                refs,
                notify: n,
            } => {
                if let Some(n) = n {
                    if notify {
                        mem.clear_byte(n.offset);
                    }
                    self.finish_notify(domid, n, notify);
                }
                for r in refs {
                    self.drop_grant_use(domid, r, true);
                }
            }
            Role::Mapped {
                granter,
                refs,
                notify: n,
                ..
            } => {
                if let Some(n) = n {
                    if notify {
                        let page = n.offset / PAGE_SIZE;
                        if let Some(g) =
                            refs.get(page).and_then(|r| self.grants.get(&(granter, *r)))
                        {
                            g.mem.clear_byte(g.page * PAGE_SIZE + n.offset % PAGE_SIZE);
                        }
                    }
                    self.finish_notify(domid, n, notify);
                }
                if let Some(d) = self.domains.get_mut(&domid) {
                    d.pages_mapped = d.pages_mapped.saturating_sub(refs.len());
                }
                for r in refs {
                    self.drop_grant_use(granter, r, false);
                }
                // The last mapping of a zombie's pages lets it go.
                self.forget_if_gone(granter);
            }
            Role::Port(p) => {
                let close = match self
                    .domains
                    .get_mut(&domid)
                    .and_then(|d| d.ports.get_mut(&p))
                {
                    Some(port) => {
                        port.open = false;
                        port.holds == 0
                    }
                    None => false,
                };
                if close {
                    self.close_port(domid, p);
                }
            }
        }
        self.forget_if_gone(domid);
    }

    fn finish_notify(&mut self, domid: DomId, n: Notify, signal: bool) {
        if let Some(p) = n.port {
            if signal {
                self.signal_port(domid, p);
            }
            self.unhold_port(domid, p);
        }
    }

    /// Drops a dead domain's record once nothing of it remains.
    fn forget_if_gone(&mut self, domid: DomId) {
        if let Some(d) = self.domains.get(&domid) {
            if d.dead && d.conns == 0 && d.ports.is_empty() && d.grants == 0 && d.pages_mapped == 0
            {
                self.domains.remove(&domid);
            }
        }
    }

    /// Destroys a domain: its objects are released without notifies, its ports
    /// close, its grants can no longer be mapped. Mappings of its pages held by
    /// others stay valid, and keep it a zombie until they go.
    pub(crate) fn destroy_domain(&mut self, domid: DomId) {
        let Some(dom) = self.domains.get_mut(&domid) else {
            return;
        };
        dom.dead = true;
        dom.dead_tx.send_replace(true);
        let ids: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.domid == domid)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.release(id, false);
        }
        let ports: Vec<u32> = self
            .domains
            .get(&domid)
            .map(|d| d.ports.keys().copied().collect())
            .unwrap_or_default();
        for p in ports {
            self.close_port(domid, p);
        }
        self.forget_if_gone(domid);
    }

    /// Process ids of `domid`'s connected clients, sorted, without repeats.
    pub(crate) fn pids(&self, domid: DomId) -> Vec<i32> {
        let mut pids: Vec<i32> = self
            .conns
            .values()
            .filter(|c| c.domid == domid)
            .map(|c| c.pid)
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    pub(crate) fn stats(&self) -> DevicesStats {
        let domains = self
            .domains
            .iter()
            .map(|(id, d)| {
                (
                    *id,
                    DomainStats {
                        grants: d.grants,
                        pages_granted: d.pages_granted,
                        pages_mapped: d.pages_mapped,
                        pages_mapped_by_others: d.pages_mapped_by_others,
                        ports: d.ports.len(),
                        connections: d.conns,
                        destroyed: d.dead,
                        zombie: d.dead && d.pages_mapped_by_others > 0,
                    },
                )
            })
            .collect();
        DevicesStats { domains }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(limit: usize) -> State {
        let mut s = State::new(DevicesConfig {
            grant_limit_pages: limit,
        });
        s.open_domain(0);
        s.open_domain(1);
        s.open_domain(2);
        s
    }

    fn conn(s: &mut State, domid: DomId) -> ConnId {
        s.register(domid, 100 + i32::from(domid)).unwrap()
    }

    fn read_counter(fd: &OwnedFd) -> u64 {
        let mut buf = [0u8; 8];
        match nix::unistd::read(fd.as_raw_fd(), &mut buf) {
            Ok(_) => u64::from_ne_bytes(buf),
            Err(_) => 0,
        }
    }

    #[test]
    fn refs_are_not_reserved_and_not_reused_at_once() {
        let mut s = state(1024);
        let a = conn(&mut s, 1);
        let (refs, fds) = s.share(a, 0, 3, true).unwrap();
        assert_eq!(fds.len(), 1);
        assert!(refs.iter().all(|r| *r >= FIRST_REF));
        s.release(a, true);
        let b = conn(&mut s, 1);
        let (again, _) = s.share(b, 0, 3, true).unwrap();
        assert!(
            again.iter().all(|r| !refs.contains(r)),
            "{refs:?} {again:?}"
        );
    }

    #[test]
    fn map_checks_grantee_writability_and_existence() {
        let mut s = state(1024);
        let g = conn(&mut s, 1);
        let (refs, _) = s.share(g, 0, 2, false).unwrap();
        let c = conn(&mut s, 2);
        assert_eq!(
            s.map(c, 1, &refs, false).unwrap_err().kind,
            RefusedKind::Permission
        );
        let c = conn(&mut s, 0);
        assert_eq!(
            s.map(c, 1, &refs, true).unwrap_err().kind,
            RefusedKind::Permission
        );
        assert_eq!(
            s.map(c, 1, &[refs[0] + 100], false).unwrap_err().kind,
            RefusedKind::NotFound
        );
        assert_eq!(
            s.map(c, 0, &refs, false).unwrap_err().kind,
            RefusedKind::NotFound
        );
        let (runs, fds) = s.map(c, 1, &[refs[1], refs[0]], false).unwrap();
        assert_eq!(runs, vec![(0, 1, 1), (0, 0, 1)]);
        assert_eq!(fds.len(), 1);
        let st = s.stats();
        assert_eq!(st.domains[&0].pages_mapped, 2);
        assert_eq!(st.domains[&1].pages_mapped_by_others, 2);
        // A connection carries one object only.
        assert_eq!(
            s.map(c, 1, &refs, false).unwrap_err().kind,
            RefusedKind::Invalid
        );
    }

    #[test]
    fn runs_coalesce_across_pages_and_grants() {
        let mut s = state(1024);
        let g1 = conn(&mut s, 1);
        let (a, _) = s.share(g1, 0, 3, true).unwrap();
        let g2 = conn(&mut s, 1);
        let (b, _) = s.share(g2, 0, 2, true).unwrap();
        let c = conn(&mut s, 0);
        let refs = [a[0], a[1], a[2], b[0], b[1], a[0]];
        let (runs, fds) = s.map(c, 1, &refs, true).unwrap();
        assert_eq!(runs, vec![(0, 0, 3), (1, 0, 2), (0, 0, 1)]);
        assert_eq!(fds.len(), 2);
    }

    #[test]
    fn grant_limit_counts_held_pages() {
        let mut s = state(4);
        let a = conn(&mut s, 1);
        s.share(a, 0, 3, true).unwrap();
        let b = conn(&mut s, 1);
        assert_eq!(s.share(b, 0, 2, true).unwrap_err().kind, RefusedKind::Limit);
        s.share(b, 0, 1, true).unwrap();
        s.release(a, true);
        let c = conn(&mut s, 1);
        s.share(c, 0, 3, true).unwrap();
    }

    #[test]
    fn ended_grant_lives_while_mapped_but_cannot_be_mapped_again() {
        let mut s = state(1024);
        let g = conn(&mut s, 1);
        let (refs, _) = s.share(g, 0, 1, true).unwrap();
        let m = conn(&mut s, 0);
        s.map(m, 1, &refs, true).unwrap();
        s.release(g, true);
        assert_eq!(s.stats().domains[&1].grants, 1);
        assert_eq!(s.stats().domains[&1].pages_granted, 0);
        let m2 = conn(&mut s, 0);
        assert_eq!(
            s.map(m2, 1, &refs, true).unwrap_err().kind,
            RefusedKind::NotFound
        );
        s.release(m, true);
        s.release(m2, true);
        assert!(s.stats().is_clean(), "{:?}", s.stats());
    }

    #[test]
    fn port_state_machine() {
        let mut s = state(1024);
        let a = conn(&mut s, 1);
        let (pa, fa) = s.alloc_unbound(a, 0).unwrap();
        assert_eq!(pa, 1);
        // Wrong domain, wrong port, own domain not allowed.
        let w = conn(&mut s, 2);
        assert_eq!(s.bind(w, 1, pa).unwrap_err().kind, RefusedKind::Permission);
        let b = conn(&mut s, 0);
        assert_eq!(s.bind(b, 1, 9).unwrap_err().kind, RefusedKind::NotFound);
        // Events sent while unbound are dropped.
        kick(&fa[1]);
        let (pb, fb) = s.bind(b, 1, pa).unwrap();
        assert_eq!(pb, 1);
        assert_eq!(read_counter(&fb[0]), 0);
        // Already bound.
        let b2 = conn(&mut s, 0);
        assert_eq!(s.bind(b2, 1, pa).unwrap_err().kind, RefusedKind::Invalid);
        // The pairs cross.
        kick(&fa[1]);
        assert_eq!(read_counter(&fb[0]), 1);
        kick(&fb[1]);
        assert_eq!(read_counter(&fa[0]), 1);
        // Closing the binder leaves the allocator's port unbound and bindable again.
        s.release(b, true);
        assert_eq!(s.stats().domains[&0].ports, 0);
        let (pb2, _) = s.bind(b2, 1, pa).unwrap();
        assert_eq!(pb2, 1, "port numbers are reused after close");
        s.release(b2, true);
        s.release(a, true);
        s.release(w, true);
        assert!(s.stats().is_clean(), "{:?}", s.stats());
    }

    #[test]
    fn notify_holds_port_until_release() {
        let mut s = state(1024);
        let a = conn(&mut s, 1);
        let (pa, fa) = s.alloc_unbound(a, 0).unwrap();
        let b = conn(&mut s, 0);
        let (pb, fb) = s.bind(b, 1, pa).unwrap();
        let g = conn(&mut s, 1);
        let (refs, _) = s.share(g, 0, 1, true).unwrap();
        let m = conn(&mut s, 0);
        s.map(m, 1, &refs, true).unwrap();
        s.set_notify(m, 10, Some(pb)).unwrap();
        assert_eq!(
            s.set_notify(m, 4096, None).unwrap_err().kind,
            RefusedKind::Invalid
        );
        assert_eq!(
            s.set_notify(m, 1, Some(77)).unwrap_err().kind,
            RefusedKind::NotFound
        );
        let mem = s.grants[&(1, refs[0])].mem.clone();
        // SAFETY: inside the test's own mapping; nothing else writes it now.
        unsafe { mem.ptr.as_ptr().cast::<u8>().add(10).write_volatile(1) };
        // The port's owner goes first; the notify keeps it alive.
        s.release(b, true);
        assert_eq!(s.stats().domains[&0].ports, 1);
        drop(fb);
        s.release(m, true);
        // SAFETY: as above.
        let byte = unsafe { mem.ptr.as_ptr().cast::<u8>().add(10).read_volatile() };
        assert_eq!(byte, 0);
        assert_eq!(read_counter(&fa[0]), 1);
        assert_eq!(s.stats().domains[&0].ports, 0);
        s.release(g, true);
        s.release(a, true);
        assert!(s.stats().is_clean(), "{:?}", s.stats());
    }

    #[test]
    fn read_only_map_cannot_clear_a_byte() {
        let mut s = state(1024);
        let g = conn(&mut s, 1);
        let (refs, _) = s.share(g, 0, 1, false).unwrap();
        let m = conn(&mut s, 0);
        s.map(m, 1, &refs, false).unwrap();
        assert_eq!(
            s.set_notify(m, 0, None).unwrap_err().kind,
            RefusedKind::Invalid
        );
        // The granter itself may.
        s.set_notify(g, 0, None).unwrap();
    }

    #[test]
    fn destroy_makes_a_zombie_until_unmapped() {
        let mut s = state(1024);
        let g = conn(&mut s, 1);
        let (refs, _) = s.share(g, 0, 2, true).unwrap();
        let p = conn(&mut s, 1);
        let (pa, _) = s.alloc_unbound(p, 0).unwrap();
        let b = conn(&mut s, 0);
        s.bind(b, 1, pa).unwrap();
        let m = conn(&mut s, 0);
        s.map(m, 1, &refs, true).unwrap();
        let rx = s.open_domain(1);
        s.destroy_domain(1);
        assert!(*rx.borrow());
        let st = s.stats().domains[&1].clone();
        assert!(st.destroyed && st.zombie, "{st:?}");
        assert_eq!(st.connections, 0);
        assert_eq!(st.ports, 0);
        assert!(s.pids(1).is_empty());
        let m2 = conn(&mut s, 0);
        assert_eq!(
            s.map(m2, 1, &refs, true).unwrap_err().kind,
            RefusedKind::NotFound
        );
        assert!(s.register(1, 5).is_err());
        s.release(m, true);
        assert!(!s.stats().domains.contains_key(&1));
        s.release(m2, true);
        s.release(b, true);
        assert!(s.stats().is_clean(), "{:?}", s.stats());
    }

    #[test]
    fn connections_per_domain_are_bounded() {
        let mut s = state(1024);
        let ids: Vec<ConnId> = (0..CONNECTION_LIMIT).map(|_| conn(&mut s, 1)).collect();
        assert_eq!(s.register(1, 1).unwrap_err().kind, RefusedKind::Limit);
        // Other domains are not affected.
        conn(&mut s, 2);
        s.release(ids[0], true);
        conn(&mut s, 1);
    }

    #[test]
    fn ports_per_domain_are_bounded_and_lowest_is_reused() {
        let mut s = state(1024);
        let fd = eventfd().unwrap();
        let dom = s.domains.get_mut(&1).unwrap();
        for p in (1..=PORT_LIMIT).filter(|p| *p != 7) {
            dom.ports.insert(
                p,
                Port {
                    remote: 0,
                    bound: None,
                    wait: fd.clone(),
                    signal: fd.clone(),
                    open: true,
                    holds: 0,
                },
            );
        }
        let a = conn(&mut s, 1);
        assert_eq!(s.alloc_unbound(a, 0).unwrap().0, 7);
        let b = conn(&mut s, 1);
        assert_eq!(s.alloc_unbound(b, 0).unwrap_err().kind, RefusedKind::Limit);
    }

    #[test]
    fn pids_are_listed_once() {
        let mut s = state(1024);
        conn(&mut s, 2);
        conn(&mut s, 2);
        assert_eq!(s.pids(2), vec![102]);
        assert!(s.pids(0).is_empty());
    }
}
