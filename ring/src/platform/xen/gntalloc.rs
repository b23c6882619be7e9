//! Pages we grant to another domain, through `/dev/xen/gntalloc`.

use std::mem::{offset_of, size_of};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;

use super::ioctl::{self, GntallocAllocGref, GntallocDeallocGref, TailBuf, UnmapNotify};
use super::{notify_index, Mmap};
use crate::platform::{DomId, GrantRef, Pages};
use crate::{Error, Result};

/// Zeroed pages granted to a peer domain and mapped here read-write.
///
/// Dropping unmaps them and releases the grants. If the peer still maps them the
/// kernel keeps them until it lets go (gntalloc's deferred release).
pub struct SharedPages {
    fd: Arc<OwnedFd>,
    map: Mmap,
    index: u64,
    refs: Vec<GrantRef>,
}

impl SharedPages {
    /// Allocates and grants `count` pages (already checked to be in range).
    pub(super) fn new(fd: Arc<OwnedFd>, peer: DomId, count: usize, writable: bool) -> Result<Self> {
        let count32 = u32::try_from(count).map_err(|_| Error::Invalid("page count".into()))?;
        let mut buf = alloc_request(peer, count32, writable)?;
        // SAFETY: `buf` is 8-aligned, starts with the request struct and has room
        // for `count` grant ids from `gref_ids` on, which is all the kernel writes;
        // it lives across the call.
        unsafe { ioctl::gntalloc_alloc_gref(fd.as_raw_fd(), buf.as_mut_ptr().cast()) }
            .map_err(|e| Error::platform("gntalloc alloc grant", e))?;
        let (index, refs) = alloc_reply(&buf, count);

        // The grants exist from here on: give them back if the mapping fails.
        // Our own side always maps read-write: `writable` is the peer's access.
        let map = match Mmap::new(fd.as_fd(), count, true, index, "gntalloc mmap") {
            Ok(map) => map,
            Err(e) => {
                dealloc(&fd, index, count32);
                return Err(e);
            }
        };
        Ok(Self {
            fd,
            map,
            index,
            refs,
        })
    }
}

/// The `IOCTL_GNTALLOC_ALLOC_GREF` argument, with room for the `count` grant ids
/// the kernel writes after the struct.
fn alloc_request(peer: DomId, count: u32, writable: bool) -> Result<TailBuf> {
    let tail = offset_of!(GntallocAllocGref, gref_ids);
    let mut buf = TailBuf::new(size_of::<GntallocAllocGref>(), tail, 4, count as usize)
        .ok_or_else(|| Error::Invalid("page count".into()))?;
    buf.put(
        0,
        GntallocAllocGref {
            domid: peer,
            flags: if writable {
                ioctl::GNTALLOC_FLAG_WRITABLE
            } else {
                0
            },
            count,
            index: 0,
            gref_ids: [0],
        },
    );
    Ok(buf)
}

/// The mmap offset and the `count` grant ids the kernel wrote into `buf`.
fn alloc_reply(buf: &TailBuf, count: usize) -> (u64, Vec<GrantRef>) {
    let tail = offset_of!(GntallocAllocGref, gref_ids);
    let index = buf.get::<GntallocAllocGref>(0).index;
    (index, (0..count).map(|i| buf.get(tail + 4 * i)).collect())
}

/// Releases grants from the device; failure only leaks until the fd closes.
fn dealloc(fd: &OwnedFd, index: u64, count: u32) {
    let arg = GntallocDeallocGref { index, count };
    // SAFETY: `arg` is a live, correctly laid out request the kernel only reads.
    if let Err(e) = unsafe { ioctl::gntalloc_dealloc_gref(fd.as_raw_fd(), &arg) } {
        tracing::warn!(error = %e, index, count, "gntalloc dealloc failed");
    }
}

impl Pages for SharedPages {
    fn as_ptr(&self) -> *mut u8 {
        self.map.as_ptr()
    }

    fn len(&self) -> usize {
        self.map.len()
    }

    fn grant_refs(&self) -> &[GrantRef] {
        &self.refs
    }

    fn set_unmap_notify(&self, offset: usize, port: Option<u32>) -> Result<()> {
        let arg = UnmapNotify {
            index: notify_index(self.index, self.map.len(), offset)?,
            action: ioctl::UNMAP_NOTIFY_CLEAR_BYTE
                | port.map_or(0, |_| ioctl::UNMAP_NOTIFY_SEND_EVENT),
            event_channel_port: port.unwrap_or(0),
        };
        // SAFETY: `arg` is a live, correctly laid out request the kernel only reads.
        unsafe { ioctl::gntalloc_set_unmap_notify(self.fd.as_raw_fd(), &arg) }
            .map_err(|e| Error::platform("gntalloc set unmap notify", e))?;
        Ok(())
    }
}

impl Drop for SharedPages {
    fn drop(&mut self) {
        // Unmap first so that the notify (clear byte, kick) the kernel performs when
        // the grants are released comes after our last possible access.
        self.map.unmap();
        // The count came from a `u32` in `new`.
        dealloc(&self.fd, self.index, self.refs.len() as u32);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_and_reply_follow_the_kernel_layout() {
        let mut buf = alloc_request(0x1234, 5, true).unwrap();
        assert!(buf.size() >= 16 + 4 * 5, "room for every grant id");
        // What the kernel reads.
        assert_eq!(buf.get::<u16>(0), 0x1234);
        assert_eq!(buf.get::<u16>(2), ioctl::GNTALLOC_FLAG_WRITABLE);
        assert_eq!(buf.get::<u32>(4), 5);
        // What it writes back: the offset, then one id per page.
        buf.put(8, 7u64 << 12);
        for i in 0..5 {
            buf.put(16 + 4 * i, 100 + i as u32);
        }
        assert_eq!(
            alloc_reply(&buf, 5),
            (7 << 12, vec![100, 101, 102, 103, 104])
        );

        let ro = alloc_request(3, 1, false).unwrap();
        assert_eq!(ro.get::<u16>(2), 0, "read-only grants carry no flag");
    }
}
