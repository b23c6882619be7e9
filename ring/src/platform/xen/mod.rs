//! Real Xen: ioctls on the Linux devices `/dev/xen/gntalloc`, `/dev/xen/gntdev`
//! and `/dev/xen/evtchn`.
//!
//! # File descriptors
//!
//! - gntalloc and gntdev: one fd each per [`XenPlatform`], opened on first use and
//!   shared (by `Arc`) with every mapping made through it. A daemon serving many
//!   domains then holds two grant fds, not two per channel. Each mapping keeps the
//!   fd alive, so a mapping may outlive the platform object. The devices are opened
//!   lazily because a guest only shares (gntalloc) and dom0 only maps (gntdev): a
//!   missing module is reported when it is first needed, with its name.
//! - evtchn: one open of the device per [`EventChannel`], so that its fd polls
//!   readable for exactly that port and can sit in its own tokio `AsyncFd`.
//!
//! # Unmap notifications and drop order
//!
//! `set_unmap_notify` arms the kernel to clear a byte (vchan's live flag) and
//! signal a port when the pages are released, which includes the fd being closed
//! when the process dies. On an orderly drop we first `munmap`, then release the
//! grant (`DEALLOC_GREF` / `UNMAP_GRANT_REF`); the kernel then performs the notify
//! exactly as it would on a crash. We deliberately leave it armed: a closing vchan
//! side must clear its live byte and kick the peer anyway, and the kernel does it
//! after our last access to the page. Nothing needs cancelling for the port
//! either: the kernel holds a reference on the event channel named in the notify,
//! so that port stays bound (and its number cannot be reused) until the notify
//! has fired, even if our [`EventChannel`] was dropped first.

mod evtchn;
mod gntalloc;
mod gntdev;
mod ioctl;

use std::ffi::c_void;
use std::fs::OpenOptions;
use std::io;
use std::num::NonZeroUsize;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};

use nix::sys::mman::{madvise, mmap, munmap, MapFlags, MmapAdvise, ProtFlags};

use super::{DomId, EventChannel, GrantRef, Pages, Platform, PAGE_SIZE};
use crate::{Error, Result};

pub use evtchn::XenEventChannel;
pub use gntalloc::SharedPages;
pub use gntdev::MappedPages;

/// Where Linux puts the Xen devices.
pub const DEFAULT_DEVICE_DIR: &str = "/dev/xen";

/// The most pages one share or map call accepts. A vchan ring of the largest
/// order (20) is 256 pages; the cap bounds the request buffers we build from a
/// peer-supplied grant list.
pub const MAX_PAGES: usize = 4096;

/// The gntalloc, gntdev and evtchn devices of a Linux Xen domain.
pub struct XenPlatform {
    dir: PathBuf,
    gntalloc: Mutex<Option<Arc<OwnedFd>>>,
    gntdev: Mutex<Option<Arc<OwnedFd>>>,
}

impl std::fmt::Debug for XenPlatform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XenPlatform")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl XenPlatform {
    /// Opens the devices in `/dev/xen`. Fails with a clear message when this is
    /// not a Xen domain (no event-channel device).
    pub fn open() -> Result<Self> {
        Self::open_in(DEFAULT_DEVICE_DIR)
    }

    /// Like [`XenPlatform::open`], with the devices in `dir` (for a chroot or a
    /// test).
    pub fn open_in(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        // The devices count in kernel pages; the channel layout counts in Xen's
        // 4 KiB grants. They only agree when the kernel page is 4 KiB too.
        // SAFETY: sysconf has no preconditions.
        let kernel_page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        if kernel_page != PAGE_SIZE as libc::c_long {
            return Err(Error::Invalid(format!(
                "kernel page size {kernel_page}: the Xen devices are only supported \
                 with {PAGE_SIZE}-byte pages"
            )));
        }
        // Every channel needs an event channel: probing it now turns "not on Xen"
        // into a startup error rather than a failure at the first connection.
        drop(open_device(&dir, Device::Evtchn)?);
        Ok(Self {
            dir,
            gntalloc: Mutex::new(None),
            gntdev: Mutex::new(None),
        })
    }

    fn shared_fd(&self, slot: &Mutex<Option<Arc<OwnedFd>>>, dev: Device) -> Result<Arc<OwnedFd>> {
        // A poisoned lock only means another thread panicked while opening; the
        // slot is still either empty or a valid fd.
        let mut slot = slot.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(fd) = &*slot {
            return Ok(fd.clone());
        }
        let fd = Arc::new(open_device(&self.dir, dev)?);
        *slot = Some(fd.clone());
        Ok(fd)
    }
}

impl Platform for XenPlatform {
    fn share_pages(&self, peer: DomId, count: usize, writable: bool) -> Result<Box<dyn Pages>> {
        check_count(count)?;
        let fd = self.shared_fd(&self.gntalloc, Device::Gntalloc)?;
        Ok(Box::new(SharedPages::new(fd, peer, count, writable)?))
    }

    fn map_pages(&self, peer: DomId, refs: &[GrantRef], writable: bool) -> Result<Box<dyn Pages>> {
        check_count(refs.len())?;
        let fd = self.shared_fd(&self.gntdev, Device::Gntdev)?;
        Ok(Box::new(MappedPages::new(fd, peer, refs, writable)?))
    }

    fn alloc_unbound(&self, peer: DomId) -> Result<Box<dyn EventChannel>> {
        let fd = open_device(&self.dir, Device::Evtchn)?;
        Ok(Box::new(XenEventChannel::alloc_unbound(fd, peer)?))
    }

    fn bind_interdomain(&self, peer: DomId, remote_port: u32) -> Result<Box<dyn EventChannel>> {
        let fd = open_device(&self.dir, Device::Evtchn)?;
        Ok(Box::new(XenEventChannel::bind_interdomain(
            fd,
            peer,
            remote_port,
        )?))
    }
}

fn check_count(count: usize) -> Result<()> {
    if count == 0 || count > MAX_PAGES {
        return Err(Error::Invalid(format!(
            "{count} pages: a grant mapping has 1 to {MAX_PAGES} pages"
        )));
    }
    Ok(())
}

/// The three devices, with what it takes to get them.
#[derive(Debug, Clone, Copy)]
enum Device {
    Gntalloc,
    Gntdev,
    Evtchn,
}

impl Device {
    fn file(self) -> &'static str {
        match self {
            Device::Gntalloc => "gntalloc",
            Device::Gntdev => "gntdev",
            Device::Evtchn => "evtchn",
        }
    }

    fn op(self) -> &'static str {
        match self {
            Device::Gntalloc => "open gntalloc device",
            Device::Gntdev => "open gntdev device",
            Device::Evtchn => "open evtchn device",
        }
    }
}

/// Opens a device read-write and close-on-exec; the event-channel device also
/// non-blocking, so that `clear` can drain it and tokio can poll it.
fn open_device(dir: &Path, dev: Device) -> Result<OwnedFd> {
    let path = dir.join(dev.file());
    let mut flags = libc::O_CLOEXEC;
    if matches!(dev, Device::Evtchn) {
        flags |= libc::O_NONBLOCK;
    }
    match OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(flags)
        .open(&path)
    {
        Ok(file) => Ok(file.into()),
        // No node, or a node without a driver behind it: the module is missing.
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ENOENT | libc::ENODEV | libc::ENXIO)
            ) =>
        {
            Err(Error::platform(
                dev.op(),
                io::Error::new(
                    e.kind(),
                    format!(
                        "no {}: is this a Xen domain with the xen-{} module loaded? ({e})",
                        path.display(),
                        dev.file()
                    ),
                ),
            ))
        }
        Err(e) => Err(Error::platform(dev.op(), e)),
    }
}

/// A shared mapping of a grant device's pages at a device offset.
///
/// It is unmapped by [`Mmap::unmap`] or on drop, whichever comes first, so that
/// owners can unmap before releasing the grants.
struct Mmap {
    ptr: NonNull<c_void>,
    len: NonZeroUsize,
    mapped: bool,
}

// SAFETY: the mapping is plain memory owned by this object; nothing in it is tied
// to the thread that created it, and all access goes through raw pointers whose
// synchronisation is the caller's business (the ring uses atomics and volatile).
unsafe impl Send for Mmap {}
// SAFETY: as for Send; `&Mmap` only hands out the raw pointer.
unsafe impl Sync for Mmap {}

impl Mmap {
    /// Maps `pages` pages of `fd` at the device offset `index`.
    fn new(
        fd: BorrowedFd<'_>,
        pages: usize,
        writable: bool,
        index: u64,
        op: &'static str,
    ) -> Result<Self> {
        let len = pages
            .checked_mul(PAGE_SIZE)
            .and_then(NonZeroUsize::new)
            .ok_or_else(|| Error::Invalid(format!("{pages} pages")))?;
        let offset = libc::off_t::try_from(index).map_err(|_| {
            Error::platform(
                op,
                io::Error::new(io::ErrorKind::InvalidData, "device offset out of range"),
            )
        })?;
        let mut prot = ProtFlags::PROT_READ;
        if writable {
            prot |= ProtFlags::PROT_WRITE;
        }
        // SAFETY: we map a fresh region chosen by the kernel (no address hint, no
        // MAP_FIXED), so no existing Rust object is affected. The grant devices
        // require MAP_SHARED. The result is only used through raw pointers.
        let ptr = unsafe { mmap(None, len, prot, MapFlags::MAP_SHARED, fd, offset) }
            .map_err(|e| Error::platform(op, e))?;
        // A forked child (a hook command before its exec) would otherwise hold
        // the grant pages too, delaying their release and the unmap notify the
        // peer waits for when we die. Best effort: the kernel refuses it on some
        // device mappings (VM_IO), and nothing is unsafe without it.
        // SAFETY: the range is exactly the mapping just created; the advice only
        // changes what fork does with it.
        if let Err(e) = unsafe { madvise(ptr, len.get(), MmapAdvise::MADV_DONTFORK) } {
            tracing::debug!(error = %e, "MADV_DONTFORK on a grant mapping refused");
        }
        Ok(Self {
            ptr,
            len,
            mapped: true,
        })
    }

    fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr().cast()
    }

    fn len(&self) -> usize {
        self.len.get()
    }

    /// Unmaps now; later calls do nothing.
    fn unmap(&mut self) {
        if !std::mem::replace(&mut self.mapped, false) {
            return;
        }
        // SAFETY: `ptr`/`len` are exactly the region our mmap returned, still
        // mapped (the flag above), and no reference into it exists: callers only
        // ever held raw pointers, and the owner is being dropped.
        if let Err(e) = unsafe { munmap(self.ptr, self.len.get()) } {
            tracing::warn!(error = %e, "munmap of a grant mapping failed");
        }
    }
}

impl Drop for Mmap {
    fn drop(&mut self) {
        self.unmap();
    }
}

/// Turns a byte offset within a mapping into the device index the unmap-notify
/// ioctls take: the mapping's mmap offset plus the byte offset.
fn notify_index(base: u64, len: usize, offset: usize) -> Result<u64> {
    if offset >= len {
        return Err(Error::Invalid(format!(
            "unmap-notify offset {offset} outside a {len}-byte mapping"
        )));
    }
    base.checked_add(offset as u64)
        .ok_or_else(|| Error::Invalid("unmap-notify offset overflows".into()))
}

#[cfg(test)]
mod tests;
