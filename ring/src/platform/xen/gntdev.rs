//! Pages another domain granted to us, mapped through `/dev/xen/gntdev`.

use std::mem::{offset_of, size_of};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;

use super::ioctl::{
    self, GntdevGrantRef, GntdevMapGrantRef, GntdevUnmapGrantRef, TailBuf, UnmapNotify,
};
use super::{notify_index, Mmap};
use crate::platform::{DomId, GrantRef, Pages};
use crate::{Error, Result};

/// A peer's granted pages, mapped contiguously in the order of their refs.
///
/// Read-only maps are mapped `PROT_READ`: gntdev then asks Xen for a read-only
/// grant mapping, so the peer may grant them read-only.
pub struct MappedPages {
    fd: Arc<OwnedFd>,
    map: Mmap,
    index: u64,
    count: u32,
    writable: bool,
}

impl MappedPages {
    /// Maps `refs` of `peer` (the count already checked to be in range).
    pub(super) fn new(
        fd: Arc<OwnedFd>,
        peer: DomId,
        refs: &[GrantRef],
        writable: bool,
    ) -> Result<Self> {
        let count = u32::try_from(refs.len()).map_err(|_| Error::Invalid("grant count".into()))?;
        let mut buf = map_request(peer, refs)?;
        // SAFETY: `buf` is 8-aligned, starts with the request struct and holds
        // `count` grant refs from `refs` on, which is all the kernel reads; the
        // kernel writes back only the fixed struct. It lives across the call.
        unsafe { ioctl::gntdev_map_grant_ref(fd.as_raw_fd(), buf.as_mut_ptr().cast()) }
            .map_err(|e| Error::platform("gntdev map grant ref", e))?;
        let index = buf.get::<GntdevMapGrantRef>(0).index;

        // Xen maps the grants at mmap time, so a bad ref from the peer fails here:
        // release the device's slot for it before reporting.
        let map = match Mmap::new(fd.as_fd(), refs.len(), writable, index, "gntdev mmap") {
            Ok(map) => map,
            Err(e) => {
                unmap_grant_ref(&fd, index, count);
                return Err(e);
            }
        };
        Ok(Self {
            fd,
            map,
            index,
            count,
            writable,
        })
    }
}

/// The `IOCTL_GNTDEV_MAP_GRANT_REF` argument: the struct followed by every ref
/// (the kernel reads `count` of them from `refs` on).
fn map_request(peer: DomId, refs: &[GrantRef]) -> Result<TailBuf> {
    let count = u32::try_from(refs.len()).map_err(|_| Error::Invalid("grant count".into()))?;
    let tail = offset_of!(GntdevMapGrantRef, refs);
    let elem = size_of::<GntdevGrantRef>();
    let mut buf = TailBuf::new(size_of::<GntdevMapGrantRef>(), tail, elem, refs.len())
        .ok_or_else(|| Error::Invalid("grant count".into()))?;
    buf.put(
        0,
        GntdevMapGrantRef {
            count,
            pad: 0,
            index: 0,
            refs: [GntdevGrantRef::default()],
        },
    );
    for (i, &r) in refs.iter().enumerate() {
        buf.put(
            tail + elem * i,
            GntdevGrantRef {
                domid: peer.into(),
                ref_: r,
            },
        );
    }
    Ok(buf)
}

/// Releases the device's record of a mapping; failure only leaks until the fd
/// closes.
fn unmap_grant_ref(fd: &OwnedFd, index: u64, count: u32) {
    let arg = GntdevUnmapGrantRef {
        index,
        count,
        pad: 0,
    };
    // SAFETY: `arg` is a live, correctly laid out request the kernel only reads.
    if let Err(e) = unsafe { ioctl::gntdev_unmap_grant_ref(fd.as_raw_fd(), &arg) } {
        tracing::warn!(error = %e, index, count, "gntdev unmap grant ref failed");
    }
}

impl Pages for MappedPages {
    fn as_ptr(&self) -> *mut u8 {
        self.map.as_ptr()
    }

    fn len(&self) -> usize {
        self.map.len()
    }

    fn grant_refs(&self) -> &[GrantRef] {
        &[]
    }

    fn set_unmap_notify(&self, offset: usize, port: Option<u32>) -> Result<()> {
        // gntdev refuses to clear a byte in a read-only mapping (EINVAL); say why.
        if !self.writable {
            return Err(Error::Invalid(
                "unmap-notify clears a byte: the mapping must be writable".into(),
            ));
        }
        let arg = UnmapNotify {
            index: notify_index(self.index, self.map.len(), offset)?,
            action: ioctl::UNMAP_NOTIFY_CLEAR_BYTE
                | port.map_or(0, |_| ioctl::UNMAP_NOTIFY_SEND_EVENT),
            event_channel_port: port.unwrap_or(0),
        };
        // SAFETY: `arg` is a live, correctly laid out request the kernel only reads.
        unsafe { ioctl::gntdev_set_unmap_notify(self.fd.as_raw_fd(), &arg) }
            .map_err(|e| Error::platform("gntdev set unmap notify", e))?;
        Ok(())
    }
}

impl Drop for MappedPages {
    fn drop(&mut self) {
        // Unmap first: that is when gntdev clears the notify byte and unmaps the
        // grants; the ioctl then frees the device's record.
        self.map.unmap();
        unmap_grant_ref(&self.fd, self.index, self.count);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_carries_every_ref_in_the_kernel_layout() {
        let refs = [11, 22, 33];
        let buf = map_request(7, &refs).unwrap();
        assert!(buf.size() >= 16 + 8 * 3, "room for every ref");
        assert_eq!(buf.get::<u32>(0), 3);
        for (i, r) in refs.iter().enumerate() {
            assert_eq!(
                buf.get::<GntdevGrantRef>(16 + 8 * i),
                GntdevGrantRef { domid: 7, ref_: *r }
            );
        }
        let one = map_request(7, &[5]).unwrap();
        assert_eq!(one.size(), size_of::<GntdevMapGrantRef>());
        assert_eq!(
            one.get::<GntdevGrantRef>(16),
            GntdevGrantRef { domid: 7, ref_: 5 }
        );
    }
}
