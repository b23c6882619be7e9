//! The platform seam: pages shared with a domain, pages mapped from a domain, and
//! event channels.
//!
//! Three implementations live in submodules, each behind this one set of traits:
//! - [`xen`]: ioctls on `/dev/xen/gntalloc`, `/dev/xen/gntdev` and `/dev/xen/evtchn`;
//! - [`sim`]: a client of the simulated Xen host (`xenvt sim`);
//! - [`heap`]: in-process memory and eventfds, for unit, property and fuzz tests.
//!
//! Nothing outside this module knows which one it runs on. [`from_env`] picks the
//! simulated host when `XENVT_SIM_DEV` is set, and real Xen otherwise, so the same
//! daemon binaries run unchanged on both.

use std::os::fd::RawFd;
use std::sync::Arc;

use crate::Result;

pub mod heap;
pub mod sim;
pub mod xen;

/// A Xen domain id.
pub type DomId = u16;

/// A grant reference, as written in the vchan `grants[]` array and in xenstore.
pub type GrantRef = u32;

/// The Xen page size; grants are always whole pages.
pub const PAGE_SIZE: usize = 4096;

/// A contiguous mapping of one or more granted pages.
///
/// The peer domain may write these bytes at any time, so no Rust reference to them
/// may ever exist: callers go through raw pointers with volatile or atomic access
/// (see `crate::shm`). The mapping stays valid until the object is dropped.
pub trait Pages: Send + Sync {
    /// Start of the mapping. Page aligned, valid for [`Pages::len`] bytes.
    fn as_ptr(&self) -> *mut u8;

    /// Length of the mapping in bytes (a multiple of [`PAGE_SIZE`]).
    fn len(&self) -> usize;

    /// Whether the mapping is empty (never, for a real mapping).
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Grant references of these pages, in order, when this side granted them;
    /// empty for a mapping of a peer's pages.
    fn grant_refs(&self) -> &[GrantRef];

    /// Asks the platform to clear the byte at `offset` and, if `port` is given, to
    /// signal that local event-channel port, when this mapping goes away, including
    /// when the process dies. This is how vchan's live bytes are kept honest.
    fn set_unmap_notify(&self, offset: usize, port: Option<u32>) -> Result<()>;
}

/// One end of an interdomain event channel.
pub trait EventChannel: Send + Sync {
    /// The local port number (what goes in xenstore's `event-channel` on the server).
    fn local_port(&self) -> u32;

    /// Signals the remote end.
    fn notify(&self) -> Result<()>;

    /// A file descriptor that polls readable while an event is pending.
    fn as_raw_fd(&self) -> RawFd;

    /// Consumes pending events and re-arms delivery. Returns whether any were
    /// pending. Never blocks.
    fn clear(&self) -> Result<bool>;
}

/// What a domain can do with grants and event channels.
pub trait Platform: Send + Sync {
    /// Allocates `count` zeroed pages and grants them to `peer`, contiguous in our
    /// address space. This is the server (granting) side of a channel.
    fn share_pages(&self, peer: DomId, count: usize, writable: bool) -> Result<Box<dyn Pages>>;

    /// Maps pages that `peer` granted to us, contiguously and in the order of `refs`.
    fn map_pages(&self, peer: DomId, refs: &[GrantRef], writable: bool) -> Result<Box<dyn Pages>>;

    /// Allocates an unbound event-channel port that `peer` may bind to.
    fn alloc_unbound(&self, peer: DomId) -> Result<Box<dyn EventChannel>>;

    /// Binds to `peer`'s unbound port `remote_port`.
    fn bind_interdomain(&self, peer: DomId, remote_port: u32) -> Result<Box<dyn EventChannel>>;
}

/// Picks the platform for this process: the simulated host when `XENVT_SIM_DEV`
/// names its device socket, otherwise the real Xen devices.
pub fn from_env() -> Result<Arc<dyn Platform>> {
    match std::env::var_os(sim::ENV_DEV) {
        Some(path) => Ok(Arc::new(sim::SimPlatform::new(path.into())?)),
        None => Ok(Arc::new(xen::XenPlatform::open()?)),
    }
}
