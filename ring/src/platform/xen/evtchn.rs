//! One event-channel port, on its own open of `/dev/xen/evtchn`.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use nix::errno::Errno;

use super::ioctl::{self, EvtchnBindInterdomain, EvtchnBindUnboundPort, EvtchnPort};
use crate::platform::{DomId, EventChannel};
use crate::{Error, Result};

/// The most reads one [`EventChannel::clear`] does. With a single port per fd
/// the kernel queues at most one entry until we unmask it, so one read normally
/// drains everything; the bound only keeps a misbehaving device from spinning us.
const MAX_DRAIN_READS: usize = 16;

/// A bound port. The fd is non-blocking and polls readable while the port has a
/// pending event; dropping unbinds the port and closes the fd.
#[derive(Debug)]
pub struct XenEventChannel {
    fd: OwnedFd,
    port: u32,
}

impl XenEventChannel {
    /// Allocates a port that `peer` may bind to, on a fresh evtchn fd.
    pub(super) fn alloc_unbound(fd: OwnedFd, peer: DomId) -> Result<Self> {
        let arg = EvtchnBindUnboundPort {
            remote_domain: peer.into(),
        };
        // SAFETY: `arg` is a live, correctly laid out request the kernel only reads.
        let port = unsafe { ioctl::evtchn_bind_unbound_port(fd.as_raw_fd(), &arg) }
            .map_err(|e| Error::platform("evtchn bind unbound port", e))?;
        Self::bound(fd, port, "evtchn bind unbound port")
    }

    /// Binds to `peer`'s unbound `remote_port`, on a fresh evtchn fd.
    pub(super) fn bind_interdomain(fd: OwnedFd, peer: DomId, remote_port: u32) -> Result<Self> {
        let arg = EvtchnBindInterdomain {
            remote_domain: peer.into(),
            remote_port,
        };
        // SAFETY: `arg` is a live, correctly laid out request the kernel only reads.
        let port = unsafe { ioctl::evtchn_bind_interdomain(fd.as_raw_fd(), &arg) }
            .map_err(|e| Error::platform("evtchn bind interdomain", e))?;
        Self::bound(fd, port, "evtchn bind interdomain")
    }

    /// The bind ioctls return the local port.
    fn bound(fd: OwnedFd, port: libc::c_int, op: &'static str) -> Result<Self> {
        let port = u32::try_from(port).map_err(|_| {
            Error::platform(
                op,
                std::io::Error::new(std::io::ErrorKind::InvalidData, "negative port"),
            )
        })?;
        Ok(Self { fd, port })
    }

    /// Wraps an fd that stands in for the device, for tests of `clear`.
    #[cfg(test)]
    pub(super) fn from_parts(fd: OwnedFd, port: u32) -> Self {
        Self { fd, port }
    }

    /// Re-enables delivery: the device masks a port when it queues it, and a
    /// write of the port number unmasks it. The fd carries only our port, so we
    /// write that rather than echoing what was read.
    fn unmask(&self) -> Result<()> {
        let bytes = self.port.to_ne_bytes();
        loop {
            match nix::unistd::write(&self.fd, &bytes) {
                Ok(n) if n == bytes.len() => return Ok(()),
                Ok(_) => {
                    return Err(Error::platform(
                        "evtchn unmask",
                        std::io::Error::new(std::io::ErrorKind::WriteZero, "short write"),
                    ))
                }
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(Error::platform("evtchn unmask", e)),
            }
        }
    }
}

impl EventChannel for XenEventChannel {
    fn local_port(&self) -> u32 {
        self.port
    }

    fn notify(&self) -> Result<()> {
        let arg = EvtchnPort { port: self.port };
        // SAFETY: `arg` is a live, correctly laid out request the kernel only reads.
        unsafe { ioctl::evtchn_notify(self.fd.as_raw_fd(), &arg) }
            .map_err(|e| Error::platform("evtchn notify", e))?;
        Ok(())
    }

    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    fn clear(&self) -> Result<bool> {
        // Whole u32 port numbers; the device never returns part of one.
        let mut buf = [0u8; 64];
        let mut pending = false;
        for _ in 0..MAX_DRAIN_READS {
            match nix::unistd::read(self.fd.as_raw_fd(), &mut buf) {
                Ok(0) | Err(Errno::EAGAIN) => break,
                Ok(_) => pending = true,
                Err(Errno::EINTR) => continue,
                // The device's queue overflowed: empty it and treat our port as
                // pending, so no wakeup is lost.
                Err(Errno::EFBIG) => {
                    // SAFETY: this request takes no argument.
                    unsafe { ioctl::evtchn_reset(self.fd.as_raw_fd()) }
                        .map_err(|e| Error::platform("evtchn reset", e))?;
                    pending = true;
                    break;
                }
                Err(e) => return Err(Error::platform("evtchn read", e)),
            }
        }
        if pending {
            self.unmask()?;
        }
        Ok(pending)
    }
}

impl Drop for XenEventChannel {
    fn drop(&mut self) {
        let arg = EvtchnPort { port: self.port };
        // Closing the fd would unbind too; unbinding explicitly reports failure.
        // SAFETY: `arg` is a live, correctly laid out request the kernel only reads.
        if let Err(e) = unsafe { ioctl::evtchn_unbind(self.fd.as_raw_fd(), &arg) } {
            tracing::warn!(error = %e, port = self.port, "evtchn unbind failed");
        }
    }
}
