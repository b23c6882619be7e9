//! In-process platform for unit, property and fuzz tests.
//!
//! A [`HeapHost`] plays the hypervisor for several [`HeapPlatform`] "domains" in one
//! process. Shared pages are memfd-backed, so a mapping of arbitrary grant refs can
//! be made contiguous (each page is mapped `MAP_FIXED` into a reserved range), as
//! gntdev does. Grants are checked by (granter, grantee, ref). Event channels are
//! eventfds: a port's fd polls readable when the peer has notified it. Unmap-notify
//! is performed when a [`Pages`] is dropped, like the kernel does when a process
//! unmaps or dies.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use nix::errno::Errno;
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::memfd::{memfd_create, MemFdCreateFlag};

use super::{DomId, EventChannel, GrantRef, Pages, Platform, PAGE_SIZE};
use crate::{Error, Result};

/// Most pages one domain may have granted at once, like gntalloc's limit.
pub const DEFAULT_GRANT_LIMIT: usize = 4096;

struct Grant {
    grantee: DomId,
    mem: Arc<OwnedFd>,
    page: usize,
    writable: bool,
}

struct Port {
    fd: Arc<EventFd>,
    /// The domain allowed to bind (unbound) or bound (interdomain).
    remote_dom: DomId,
    /// The remote (domain, port) once bound.
    peer: Option<(DomId, u32)>,
}

#[derive(Default)]
struct HostState {
    grants: HashMap<(DomId, GrantRef), Grant>,
    next_ref: HashMap<DomId, GrantRef>,
    ports: HashMap<(DomId, u32), Port>,
    next_port: HashMap<DomId, u32>,
    granted: HashMap<DomId, usize>,
    grant_limit: usize,
}

/// The shared registry of grants and event channels: the "hypervisor".
#[derive(Clone)]
pub struct HeapHost {
    inner: Arc<Mutex<HostState>>,
}

impl Default for HeapHost {
    fn default() -> Self {
        Self::new()
    }
}

impl HeapHost {
    /// An empty host.
    pub fn new() -> Self {
        Self::with_grant_limit(DEFAULT_GRANT_LIMIT)
    }

    /// An empty host where each domain may have at most `limit` pages granted.
    pub fn with_grant_limit(limit: usize) -> Self {
        let st = HostState {
            grant_limit: limit,
            ..Default::default()
        };
        Self {
            inner: Arc::new(Mutex::new(st)),
        }
    }

    /// A domain on this host.
    pub fn domain(&self, domid: DomId) -> HeapPlatform {
        HeapPlatform {
            host: self.clone(),
            domid,
        }
    }

    /// Pages currently granted by `domid` (for leak checks in tests).
    pub fn granted_pages(&self, domid: DomId) -> usize {
        self.lock().granted.get(&domid).copied().unwrap_or(0)
    }

    /// Event-channel ports currently open in `domid` (for leak checks in tests).
    pub fn open_ports(&self, domid: DomId) -> usize {
        self.lock()
            .ports
            .keys()
            .filter(|(d, _)| *d == domid)
            .count()
    }

    fn lock(&self) -> MutexGuard<'_, HostState> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Signals the peer of local port `(dom, port)`, if bound.
    fn send(&self, dom: DomId, port: u32) -> Result<()> {
        let st = self.lock();
        let p = st
            .ports
            .get(&(dom, port))
            .ok_or_else(|| Error::platform("evtchn notify", Errno::EINVAL))?;
        // An unbound port drops the event, as Xen does.
        if let Some(peer) = p.peer {
            if let Some(rp) = st.ports.get(&peer) {
                rp.fd
                    .write(1)
                    .map_err(|e| Error::platform("eventfd write", e))?;
            }
        }
        Ok(())
    }
}

/// One domain of a [`HeapHost`].
#[derive(Clone)]
pub struct HeapPlatform {
    host: HeapHost,
    domid: DomId,
}

impl HeapPlatform {
    /// This domain's id.
    pub fn domid(&self) -> DomId {
        self.domid
    }
}

/// Maps `len` bytes of `fd` from `offset`, anywhere (`at` null) or at `at` (fixed).
///
/// # Safety
/// With `at` non-null, `at..at+len` must be a range this module reserved and owns.
unsafe fn map_fd(
    at: *mut u8,
    len: usize,
    fd: RawFd,
    offset: usize,
    writable: bool,
) -> Result<*mut u8> {
    let prot = libc::PROT_READ | if writable { libc::PROT_WRITE } else { 0 };
    let flags = libc::MAP_SHARED | if at.is_null() { 0 } else { libc::MAP_FIXED };
    let off = libc::off_t::try_from(offset).map_err(|_| Error::Invalid("offset".into()))?;
    // SAFETY: a fresh shared mapping of our own memfd; with MAP_FIXED the caller
    // guarantees the target range is our reservation, so nothing else is replaced.
    let p = unsafe { libc::mmap(at.cast(), len, prot, flags, fd, off) };
    if p == libc::MAP_FAILED {
        return Err(Error::platform("mmap", std::io::Error::last_os_error()));
    }
    Ok(p.cast())
}

/// Reserves `len` bytes of address space, inaccessible until mapped over.
fn reserve(len: usize) -> Result<*mut u8> {
    // SAFETY: an anonymous PROT_NONE mapping at an address the kernel picks; it
    // aliases nothing.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(Error::platform("mmap", std::io::Error::last_os_error()));
    }
    Ok(p.cast())
}

/// A mapping made by [`HeapPlatform`].
pub struct HeapPages {
    host: HeapHost,
    domid: DomId,
    ptr: *mut u8,
    len: usize,
    writable: bool,
    refs: Vec<GrantRef>,
    unmap_notify: Mutex<Option<(usize, Option<u32>)>>,
}

// SAFETY: the struct owns its mapping; the raw pointer is only an address, and all
// access to the bytes goes through atomics or raw copies (see `crate::shm`).
unsafe impl Send for HeapPages {}
// SAFETY: as above; no method hands out references to the shared bytes.
unsafe impl Sync for HeapPages {}

impl Pages for HeapPages {
    fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }

    fn len(&self) -> usize {
        self.len
    }

    fn grant_refs(&self) -> &[GrantRef] {
        &self.refs
    }

    fn set_unmap_notify(&self, offset: usize, port: Option<u32>) -> Result<()> {
        if offset >= self.len || !self.writable {
            return Err(Error::platform("unmap notify", Errno::EINVAL));
        }
        *self.unmap_notify.lock().unwrap_or_else(|p| p.into_inner()) = Some((offset, port));
        Ok(())
    }
}

impl Drop for HeapPages {
    fn drop(&mut self) {
        let notify = self
            .unmap_notify
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some((offset, port)) = notify {
            // SAFETY: `offset < len` was checked when it was set, the mapping is still
            // in place and writable; an atomic byte may be shared with other writers.
            let byte = unsafe { AtomicU8::from_ptr(self.ptr.add(offset)) };
            byte.store(0, Ordering::Release);
            if let Some(port) = port {
                let _ = self.host.send(self.domid, port);
            }
        }
        // SAFETY: we own this mapping and nothing uses it after drop (holders of
        // views keep the `Pages` alive for as long as they use them).
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
        if !self.refs.is_empty() {
            let mut st = self.host.lock();
            for r in &self.refs {
                st.grants.remove(&(self.domid, *r));
            }
            if let Some(n) = st.granted.get_mut(&self.domid) {
                *n = n.saturating_sub(self.refs.len());
            }
        }
    }
}

/// An eventfd-backed event-channel port.
pub struct HeapEventChannel {
    host: HeapHost,
    domid: DomId,
    port: u32,
    fd: Arc<EventFd>,
}

impl EventChannel for HeapEventChannel {
    fn local_port(&self) -> u32 {
        self.port
    }

    fn notify(&self) -> Result<()> {
        self.host.send(self.domid, self.port)
    }

    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_fd().as_raw_fd()
    }

    fn clear(&self) -> Result<bool> {
        match self.fd.read() {
            Ok(_) => Ok(true),
            Err(Errno::EAGAIN) => Ok(false),
            Err(e) => Err(Error::platform("eventfd read", e)),
        }
    }
}

impl Drop for HeapEventChannel {
    fn drop(&mut self) {
        let mut st = self.host.lock();
        if let Some(p) = st.ports.remove(&(self.domid, self.port)) {
            if let Some(peer) = p.peer {
                if let Some(rp) = st.ports.get_mut(&peer) {
                    rp.peer = None;
                }
            }
        }
    }
}

fn new_eventfd() -> Result<Arc<EventFd>> {
    EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)
        .map(Arc::new)
        .map_err(|e| Error::platform("eventfd", e))
}

fn alloc_port(st: &mut HostState, dom: DomId) -> u32 {
    let next = st.next_port.entry(dom).or_insert(1);
    while st.ports.contains_key(&(dom, *next)) || *next == 0 {
        *next = next.wrapping_add(1);
    }
    let p = *next;
    *next = next.wrapping_add(1);
    p
}

impl Platform for HeapPlatform {
    fn share_pages(&self, peer: DomId, count: usize, writable: bool) -> Result<Box<dyn Pages>> {
        if count == 0 {
            return Err(Error::Invalid("sharing zero pages".into()));
        }
        let len = count
            .checked_mul(PAGE_SIZE)
            .ok_or_else(|| Error::Invalid("page count".into()))?;
        {
            let st = self.host.lock();
            let used = st.granted.get(&self.domid).copied().unwrap_or(0);
            if used + count > st.grant_limit {
                return Err(Error::platform("gntalloc", Errno::ENOSPC));
            }
        }
        let fd = memfd_create(c"xenvt-heap", MemFdCreateFlag::MFD_CLOEXEC)
            .map_err(|e| Error::platform("memfd_create", e))?;
        nix::unistd::ftruncate(&fd, len as libc::off_t)
            .map_err(|e| Error::platform("ftruncate", e))?;
        // SAFETY: `at` is null, so the kernel picks a fresh range.
        let ptr = unsafe { map_fd(std::ptr::null_mut(), len, fd.as_raw_fd(), 0, true)? };
        let mem = Arc::new(fd);
        let mut guard = self.host.lock();
        let st = &mut *guard;
        let mut refs = Vec::with_capacity(count);
        for page in 0..count {
            let next = st.next_ref.entry(self.domid).or_insert(8);
            while st.grants.contains_key(&(self.domid, *next)) || *next == 0 {
                *next = next.wrapping_add(1);
            }
            let r = *next;
            *next = next.wrapping_add(1);
            st.grants.insert(
                (self.domid, r),
                Grant {
                    grantee: peer,
                    mem: mem.clone(),
                    page,
                    writable,
                },
            );
            refs.push(r);
        }
        *st.granted.entry(self.domid).or_insert(0) += count;
        Ok(Box::new(HeapPages {
            host: self.host.clone(),
            domid: self.domid,
            ptr,
            len,
            writable: true,
            refs,
            unmap_notify: Mutex::new(None),
        }))
    }

    fn map_pages(&self, peer: DomId, refs: &[GrantRef], writable: bool) -> Result<Box<dyn Pages>> {
        if refs.is_empty() {
            return Err(Error::Invalid("mapping zero pages".into()));
        }
        // Look every grant up first so a bad ref maps nothing.
        let sources: Vec<(Arc<OwnedFd>, usize)> = {
            let st = self.host.lock();
            refs.iter()
                .map(|r| match st.grants.get(&(peer, *r)) {
                    Some(g) if g.grantee == self.domid && (g.writable || !writable) => {
                        Ok((g.mem.clone(), g.page))
                    }
                    _ => Err(Error::platform("gntdev map", Errno::EINVAL)),
                })
                .collect::<Result<_>>()?
        };
        let len = refs
            .len()
            .checked_mul(PAGE_SIZE)
            .ok_or_else(|| Error::Invalid("page count".into()))?;
        let base = reserve(len)?;
        let pages = HeapPages {
            host: self.host.clone(),
            domid: self.domid,
            ptr: base,
            len,
            writable,
            refs: Vec::new(),
            unmap_notify: Mutex::new(None),
        };
        for (i, (fd, page)) in sources.iter().enumerate() {
            // SAFETY: `base + i*PAGE_SIZE .. +PAGE_SIZE` lies inside the reservation
            // just made and owned by `pages` (which unmaps it all on error).
            unsafe {
                map_fd(
                    base.add(i * PAGE_SIZE),
                    PAGE_SIZE,
                    fd.as_raw_fd(),
                    page * PAGE_SIZE,
                    writable,
                )?
            };
        }
        Ok(Box::new(pages))
    }

    fn alloc_unbound(&self, peer: DomId) -> Result<Box<dyn EventChannel>> {
        let fd = new_eventfd()?;
        let mut st = self.host.lock();
        let port = alloc_port(&mut st, self.domid);
        st.ports.insert(
            (self.domid, port),
            Port {
                fd: fd.clone(),
                remote_dom: peer,
                peer: None,
            },
        );
        Ok(Box::new(HeapEventChannel {
            host: self.host.clone(),
            domid: self.domid,
            port,
            fd,
        }))
    }

    fn bind_interdomain(&self, peer: DomId, remote_port: u32) -> Result<Box<dyn EventChannel>> {
        let fd = new_eventfd()?;
        let mut st = self.host.lock();
        match st.ports.get(&(peer, remote_port)) {
            Some(p) if p.remote_dom == self.domid && p.peer.is_none() => {}
            _ => return Err(Error::platform("evtchn bind", Errno::EINVAL)),
        }
        let port = alloc_port(&mut st, self.domid);
        st.ports.insert(
            (self.domid, port),
            Port {
                fd: fd.clone(),
                remote_dom: peer,
                peer: Some((peer, remote_port)),
            },
        );
        if let Some(p) = st.ports.get_mut(&(peer, remote_port)) {
            p.peer = Some((self.domid, port));
        }
        Ok(Box::new(HeapEventChannel {
            host: self.host.clone(),
            domid: self.domid,
            port,
            fd,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shm::ShmView;

    #[test]
    fn grants_are_checked_and_mappings_contiguous() {
        let host = HeapHost::new();
        let (a, b, c) = (host.domain(1), host.domain(2), host.domain(3));
        let p1 = a.share_pages(2, 2, true).unwrap();
        let p2 = a.share_pages(2, 1, true).unwrap();
        let v1 = ShmView::of(&*p1);
        let v2 = ShmView::of(&*p2);
        v1.store_u32(PAGE_SIZE, 11, Ordering::Relaxed).unwrap();
        v2.store_u32(0, 22, Ordering::Relaxed).unwrap();
        // Map the second page of p1 then p2's page, contiguously.
        let refs = [p1.grant_refs()[1], p2.grant_refs()[0]];
        let m = b.map_pages(1, &refs, true).unwrap();
        let vm = ShmView::of(&*m);
        assert_eq!(vm.load_u32(0, Ordering::Relaxed).unwrap(), 11);
        assert_eq!(vm.load_u32(PAGE_SIZE, Ordering::Relaxed).unwrap(), 22);
        vm.store_u32(4, 33, Ordering::Relaxed).unwrap();
        assert_eq!(v1.load_u32(PAGE_SIZE + 4, Ordering::Relaxed).unwrap(), 33);
        // Wrong grantee, wrong granter, unknown ref.
        assert!(c.map_pages(1, &refs, true).is_err());
        assert!(b.map_pages(3, &refs, true).is_err());
        assert!(b.map_pages(1, &[9999], true).is_err());
        assert_eq!(host.granted_pages(1), 3);
        drop(p1);
        assert_eq!(host.granted_pages(1), 1);
        assert!(b.map_pages(1, &refs, true).is_err());
    }

    #[test]
    fn grant_limit_enforced() {
        let host = HeapHost::with_grant_limit(3);
        let a = host.domain(1);
        let _p = a.share_pages(2, 2, true).unwrap();
        assert!(a.share_pages(2, 2, true).is_err());
    }

    #[test]
    fn events_and_unmap_notify() {
        let host = HeapHost::new();
        let (a, b) = (host.domain(1), host.domain(2));
        let ea = a.alloc_unbound(2).unwrap();
        // Only the named domain may bind.
        assert!(host.domain(3).bind_interdomain(1, ea.local_port()).is_err());
        let eb = b.bind_interdomain(1, ea.local_port()).unwrap();
        assert!(
            b.bind_interdomain(1, ea.local_port()).is_err(),
            "already bound"
        );
        assert!(!ea.clear().unwrap());
        eb.notify().unwrap();
        eb.notify().unwrap();
        assert!(ea.clear().unwrap());
        assert!(!ea.clear().unwrap());
        assert!(!eb.clear().unwrap());

        let shared = a.share_pages(2, 1, true).unwrap();
        let mapped = b.map_pages(1, shared.grant_refs(), true).unwrap();
        let v = ShmView::of(&*shared);
        v.store_u8(20, 1, Ordering::Relaxed).unwrap();
        mapped.set_unmap_notify(20, Some(eb.local_port())).unwrap();
        assert!(mapped.set_unmap_notify(PAGE_SIZE, None).is_err());
        drop(mapped);
        assert_eq!(v.load_u8(20, Ordering::Acquire).unwrap(), 0);
        assert!(ea.clear().unwrap(), "unmap notify kicked the peer");
        drop(eb);
        assert_eq!(host.open_ports(2), 0);
        ea.notify().unwrap(); // unbound again: dropped silently
    }

    #[test]
    fn read_only_mapping_refuses_write_grant_misuse() {
        let host = HeapHost::new();
        let (a, b) = (host.domain(1), host.domain(2));
        let ro = a.share_pages(2, 1, false).unwrap();
        assert!(b.map_pages(1, ro.grant_refs(), true).is_err());
        let m = b.map_pages(1, ro.grant_refs(), false).unwrap();
        assert!(m.set_unmap_notify(0, None).is_err());
    }
}
