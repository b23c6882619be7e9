//! Wire format between a domain's processes and the simulated host's grant and
//! event-channel devices.
//!
//! One unix `SOCK_SEQPACKET` connection per device object. The first request on a
//! connection decides what it is (shared pages, a mapping or an event-channel
//! port) and the object lives exactly as long as the connection: closing it, or
//! the process dying, releases the object the way closing a `/dev/xen/*` file does.
//!
//! Each message is one JSON document of at most [`MAX_MSG`] bytes. Replies may
//! carry file descriptors (memfds, eventfds) with `SCM_RIGHTS`; requests never do,
//! and the daemon reads them with no control buffer so the kernel drops any fds a
//! client tries to push on it.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use serde::{Deserialize, Serialize};

use crate::platform::{DomId, GrantRef};

/// Largest message either side sends or accepts. A longer one is malformed.
pub const MAX_MSG: usize = 16 * 1024;

/// Most file descriptors one reply carries (the kernel's `SCM_MAX_FD`).
pub const MAX_FDS: usize = 253;

/// Most pages one `Share` request may ask for.
pub const MAX_SHARE_PAGES: u32 = 1024;

/// Most references one `Map` request may name.
pub const MAX_MAP_REFS: usize = 512;

/// Longest explanation a [`Refused`] carries.
pub const MAX_DETAIL: usize = 200;

/// A request from a client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Allocate `count` zeroed pages granted to `peer` (gntalloc). Reply: [`Reply::Shared`].
    Share {
        /// The domain allowed to map them.
        peer: DomId,
        /// Number of pages.
        count: u32,
        /// Whether `peer` may map them writable.
        writable: bool,
    },
    /// Map pages that `peer` granted to us (gntdev). Reply: [`Reply::Mapped`].
    Map {
        /// The granting domain.
        peer: DomId,
        /// Its grant references, in mapping order.
        refs: Vec<GrantRef>,
        /// Whether we want to write.
        writable: bool,
    },
    /// On this connection's pages: clear the byte at `offset` of the client's mapping
    /// and signal the local `port` when the mapping goes away. Reply: [`Reply::Done`].
    UnmapNotify {
        /// Byte offset in the client's mapping.
        offset: u64,
        /// A local port to signal, if any.
        port: Option<u32>,
    },
    /// Allocate an unbound port that `peer` may bind. Reply: [`Reply::Port`].
    AllocUnbound {
        /// The domain allowed to bind.
        peer: DomId,
    },
    /// Bind to `peer`'s unbound port. Reply: [`Reply::Port`].
    BindInterdomain {
        /// The domain owning `remote_port`.
        peer: DomId,
        /// Its port.
        remote_port: u32,
    },
}

/// One run of contiguous pages of one memfd in a [`Reply::Mapped`]:
/// `(fd index in the message, first page in that fd, page count)`.
pub type Run = (u16, u32, u32);

/// A reply from the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Reply {
    /// Carries one memfd of `refs.len()` pages, page `i` being `refs[i]`.
    Shared {
        /// The new grant references.
        refs: Vec<GrantRef>,
    },
    /// Carries the distinct memfds; `runs` lays them out in request order.
    Mapped {
        /// Consecutive runs, covering the request's refs in order.
        runs: Vec<Run>,
    },
    /// The request was done.
    Done,
    /// Carries two eventfds: the one to wait on, then the one to signal.
    Port {
        /// The local port number.
        port: u32,
    },
    /// The request was refused.
    Refused(Refused),
}

/// Why the daemon refused a request; also the daemon's own error type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{kind:?}: {detail}")]
pub struct Refused {
    /// The class of refusal, which picks the client's `io::ErrorKind`.
    pub kind: RefusedKind,
    /// A short explanation for the log.
    pub detail: String,
}

/// Classes of refusal, after the errnos the Linux drivers return.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusedKind {
    /// Not allowed (EPERM): not granted to you, read-only, wrong domain.
    Permission,
    /// Malformed or meaningless (EINVAL).
    Invalid,
    /// A per-domain limit was hit (ENOSPC).
    Limit,
    /// No such grant or port (ENOENT).
    NotFound,
    /// The host failed (EIO).
    Io,
}

impl Refused {
    /// Builds a refusal. The detail may quote a peer's bytes and ends up in logs,
    /// so it is cut to [`MAX_DETAIL`] characters with control characters escaped.
    pub fn new(kind: RefusedKind, detail: impl Into<String>) -> Self {
        let detail: String = detail.into();
        let mut safe = String::new();
        for c in detail.chars().flat_map(char::escape_debug) {
            if safe.len() >= MAX_DETAIL {
                safe.push_str("...");
                break;
            }
            safe.push(c);
        }
        Refused { kind, detail: safe }
    }

    /// The host-side failure `e` while doing `what`.
    pub fn io(what: &str, e: impl std::fmt::Display) -> Self {
        Refused::new(RefusedKind::Io, format!("{what}: {e}"))
    }
}

impl From<Refused> for io::Error {
    fn from(r: Refused) -> io::Error {
        let kind = match r.kind {
            RefusedKind::Permission => io::ErrorKind::PermissionDenied,
            RefusedKind::Invalid => io::ErrorKind::InvalidInput,
            RefusedKind::Limit => io::ErrorKind::OutOfMemory,
            RefusedKind::NotFound => io::ErrorKind::NotFound,
            RefusedKind::Io => io::ErrorKind::Other,
        };
        io::Error::new(kind, r)
    }
}

impl Request {
    /// Parses and bounds-checks a request from untrusted bytes.
    pub fn decode(bytes: &[u8]) -> Result<Request, Refused> {
        if bytes.len() > MAX_MSG {
            return Err(Refused::new(RefusedKind::Invalid, "request too long"));
        }
        let req: Request = serde_json::from_slice(bytes)
            .map_err(|e| Refused::new(RefusedKind::Invalid, format!("malformed request: {e}")))?;
        match &req {
            Request::Share { count, .. } if *count == 0 || *count > MAX_SHARE_PAGES => Err(
                Refused::new(RefusedKind::Invalid, format!("bad page count {count}")),
            ),
            Request::Map { refs, .. } if refs.is_empty() || refs.len() > MAX_MAP_REFS => {
                Err(Refused::new(
                    RefusedKind::Invalid,
                    format!("bad ref count {}", refs.len()),
                ))
            }
            _ => Ok(req),
        }
    }
}

/// Serialises `msg`, refusing anything longer than [`MAX_MSG`].
pub fn encode<T: Serialize>(msg: &T) -> io::Result<Vec<u8>> {
    let bytes = serde_json::to_vec(msg).map_err(io::Error::other)?;
    if bytes.len() > MAX_MSG {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "message too long",
        ));
    }
    Ok(bytes)
}

/// Sends one message with `fds` attached. Non-blocking sockets may return `WouldBlock`.
pub fn send_msg(sock: BorrowedFd<'_>, bytes: &[u8], fds: &[RawFd]) -> io::Result<()> {
    let iov = [IoSlice::new(bytes)];
    let cmsg = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsg };
    let sent = sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None)?;
    if sent != bytes.len() {
        return Err(io::Error::new(io::ErrorKind::WriteZero, "short send"));
    }
    Ok(())
}

/// What [`recv_msg`] read: `None` at end of stream.
pub type Received = Option<(Vec<u8>, Vec<OwnedFd>)>;

/// Receives one message. With `accept_fds` false no control buffer is offered, so
/// the kernel discards any descriptors the sender attached. A message longer than
/// [`MAX_MSG`] or whose descriptors did not fit is an `InvalidData` error.
pub fn recv_msg(sock: BorrowedFd<'_>, accept_fds: bool) -> io::Result<Received> {
    let mut buf = vec![0u8; MAX_MSG];
    let mut cmsg_buf = nix::cmsg_space!([RawFd; MAX_FDS]);
    let (bytes, flags, fds) = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            if accept_fds {
                Some(&mut cmsg_buf)
            } else {
                None
            },
            MsgFlags::MSG_CMSG_CLOEXEC,
        )?;
        let mut fds = Vec::new();
        // Taking ownership first means every received descriptor is closed on
        // any error below.
        if let Ok(cmsgs) = msg.cmsgs() {
            for c in cmsgs {
                if let ControlMessageOwned::ScmRights(raw) = c {
                    for fd in raw {
                        // SAFETY: the kernel just installed `fd` in our table for
                        // this message and nothing else refers to it yet.
                        fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                    }
                }
            }
        }
        (msg.bytes, msg.flags, fds)
    };
    if flags.contains(MsgFlags::MSG_TRUNC) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "message too long",
        ));
    }
    if accept_fds && flags.contains(MsgFlags::MSG_CTRUNC) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "too many descriptors",
        ));
    }
    if bytes == 0 {
        // A seqpacket peer that closed reads as an empty message.
        return Ok(None);
    }
    buf.truncate(bytes);
    Ok(Some((buf, fds)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn request_round_trip() {
        let reqs = [
            Request::Share {
                peer: 3,
                count: 2,
                writable: true,
            },
            Request::Map {
                peer: 0,
                refs: vec![8, 9],
                writable: false,
            },
            Request::UnmapNotify {
                offset: 4096,
                port: Some(3),
            },
            Request::AllocUnbound { peer: 7 },
            Request::BindInterdomain {
                peer: 7,
                remote_port: 1,
            },
        ];
        for r in reqs {
            let b = encode(&r).unwrap();
            assert_eq!(Request::decode(&b).unwrap(), r);
        }
    }

    #[test]
    fn decode_rejects_bad_input() {
        for bad in [
            &b""[..],
            b"{",
            b"\xff\xfe",
            b"{\"op\":\"share\",\"peer\":1,\"count\":0,\"writable\":true}",
            b"{\"op\":\"share\",\"peer\":1,\"count\":1025,\"writable\":true}",
            b"{\"op\":\"share\",\"peer\":70000,\"count\":1,\"writable\":true}",
            b"{\"op\":\"map\",\"peer\":1,\"refs\":[],\"writable\":true}",
            b"{\"op\":\"bind_interdomain\",\"peer\":1,\"remote_port\":1,\"x\":1}",
            b"{\"op\":\"launch\"}",
            b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
        ] {
            let e = Request::decode(bad).unwrap_err();
            assert_eq!(e.kind, RefusedKind::Invalid, "{bad:?}");
        }
        let long = format!("{{\"op\":\"{}\n\"}}", "x".repeat(MAX_MSG - 100));
        let e = Request::decode(long.as_bytes()).unwrap_err();
        assert!(e.detail.len() <= MAX_DETAIL + 8, "{}", e.detail.len());
        let e = Request::decode(b"{\"op\":\"a\\nb\"}").unwrap_err();
        assert!(e.detail.contains("a\\nb"), "{}", e.detail);
        assert!(!e.detail.contains('\n'));
        let too_many = Request::Map {
            peer: 1,
            refs: vec![8; MAX_MAP_REFS + 1],
            writable: true,
        };
        let b = serde_json::to_vec(&too_many).unwrap();
        assert!(Request::decode(&b).is_err());
        assert!(Request::decode(&vec![b' '; MAX_MSG + 1]).is_err());
    }

    #[test]
    fn largest_messages_fit() {
        let map = Request::Map {
            peer: u16::MAX,
            refs: vec![u32::MAX; MAX_MAP_REFS],
            writable: true,
        };
        assert!(encode(&map).is_ok());
        let runs = Reply::Mapped {
            runs: vec![(u16::MAX, u32::MAX, u32::MAX); MAX_MAP_REFS],
        };
        assert!(encode(&runs).unwrap().len() <= MAX_MSG);
        let shared = Reply::Shared {
            refs: vec![u32::MAX; MAX_SHARE_PAGES as usize],
        };
        assert!(encode(&shared).is_ok());
    }

    #[test]
    fn fds_travel_and_unwanted_fds_are_dropped() {
        use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        let efd = nix::sys::eventfd::EventFd::from_flags(nix::sys::eventfd::EfdFlags::EFD_CLOEXEC)
            .unwrap();
        let efd = efd.as_fd();
        send_msg(a.as_fd(), b"one", &[efd.as_raw_fd()]).unwrap();
        let (m, fds) = recv_msg(b.as_fd(), true).unwrap().unwrap();
        assert_eq!(m, b"one");
        assert_eq!(fds.len(), 1);
        send_msg(a.as_fd(), b"two", &[efd.as_raw_fd()]).unwrap();
        let (m, fds) = recv_msg(b.as_fd(), false).unwrap().unwrap();
        assert_eq!(m, b"two");
        assert!(fds.is_empty());
        send_msg(a.as_fd(), &vec![b'x'; MAX_MSG + 1], &[]).unwrap();
        assert_eq!(
            recv_msg(b.as_fd(), false).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        drop(a);
        assert!(recv_msg(b.as_fd(), false).unwrap().is_none());
    }
}
