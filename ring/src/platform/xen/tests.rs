//! Tests that need no Xen: error paths against stand-in device files, the mmap
//! helper, and `clear` against a socket. The tests that need the real devices are
//! ignored here and run in the real-Xen lab.

use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};

use super::*;

fn platform_errno(e: &Error) -> (&'static str, Option<i32>) {
    match e {
        Error::Platform { op, source } => (op, source.raw_os_error()),
        other => panic!("expected a platform error, got {other:?}"),
    }
}

/// A directory with regular files named like the devices: they open, but every
/// ioctl on them fails with ENOTTY, as a wrong device would.
fn fake_devices(names: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for name in names {
        std::fs::write(dir.path().join(name), b"").expect("create stand-in device");
    }
    dir
}

#[test]
fn open_without_xen_says_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = XenPlatform::open_in(dir.path()).expect_err("no devices, no platform");
    let (op, _) = platform_errno(&err);
    assert_eq!(op, "open evtchn device");
    let msg = err.to_string();
    let path = dir.path().join("evtchn");
    assert!(msg.contains(&format!("no {}", path.display())), "{msg}");
    assert!(
        msg.contains("Xen domain with the xen-evtchn module"),
        "{msg}"
    );
}

#[test]
fn missing_grant_device_is_named_and_not_cached() {
    let dir = fake_devices(&["evtchn"]);
    let p = XenPlatform::open_in(dir.path()).expect("evtchn present");

    let err = p.share_pages(1, 1, true).err().expect("no gntalloc");
    assert_eq!(platform_errno(&err).0, "open gntalloc device");
    assert!(
        err.to_string()
            .contains("is this a Xen domain with the xen-gntalloc module loaded?"),
        "{err}"
    );
    let err = p.map_pages(1, &[8], true).err().expect("no gntdev");
    assert_eq!(platform_errno(&err).0, "open gntdev device");
    assert!(err.to_string().contains("xen-gntdev module"), "{err}");

    // Loading the module later must work without restarting the daemon.
    std::fs::write(dir.path().join("gntalloc"), b"").unwrap();
    let err = p.share_pages(1, 1, true).err().expect("not a real device");
    assert_eq!(
        platform_errno(&err),
        ("gntalloc alloc grant", Some(libc::ENOTTY))
    );
}

#[test]
fn ioctl_failures_carry_op_and_errno() {
    let dir = fake_devices(&["evtchn", "gntalloc", "gntdev"]);
    let p = XenPlatform::open_in(dir.path()).expect("stand-ins open");

    let err = p.share_pages(3, 2, false).err().expect("share");
    assert_eq!(
        platform_errno(&err),
        ("gntalloc alloc grant", Some(libc::ENOTTY))
    );
    let err = p.map_pages(3, &[1, 2, 3], false).err().expect("map");
    assert_eq!(
        platform_errno(&err),
        ("gntdev map grant ref", Some(libc::ENOTTY))
    );
    let err = p.alloc_unbound(3).err().expect("alloc unbound");
    assert_eq!(
        platform_errno(&err),
        ("evtchn bind unbound port", Some(libc::ENOTTY))
    );
    let err = p.bind_interdomain(3, 7).err().expect("bind");
    assert_eq!(
        platform_errno(&err),
        ("evtchn bind interdomain", Some(libc::ENOTTY))
    );
}

#[test]
fn page_counts_are_bounded_before_any_device_call() {
    // No gntalloc/gntdev here: a count error must come first.
    let dir = fake_devices(&["evtchn"]);
    let p = XenPlatform::open_in(dir.path()).unwrap();
    for n in [0, MAX_PAGES + 1] {
        assert!(matches!(p.share_pages(0, n, true), Err(Error::Invalid(_))));
        let refs = vec![1; n];
        assert!(matches!(
            p.map_pages(0, &refs, true),
            Err(Error::Invalid(_))
        ));
    }
}

#[test]
fn notify_index_is_mapping_offset_plus_byte_offset() {
    assert_eq!(notify_index(3 * 4096, 8192, 0).unwrap(), 3 * 4096);
    assert_eq!(notify_index(3 * 4096, 8192, 8191).unwrap(), 3 * 4096 + 8191);
    assert!(matches!(
        notify_index(0, 8192, 8192),
        Err(Error::Invalid(_))
    ));
    assert!(matches!(
        notify_index(u64::MAX, 8192, 1),
        Err(Error::Invalid(_))
    ));
}

#[test]
fn mmap_maps_the_pages_at_the_offset_and_unmaps_once() {
    let mut file = tempfile::tempfile().unwrap();
    let mut data = vec![0u8; 3 * PAGE_SIZE];
    data[PAGE_SIZE] = 0xa5;
    data[3 * PAGE_SIZE - 1] = 0x5a;
    std::io::Write::write_all(&mut file, &data).unwrap();

    let mut map = Mmap::new(file.as_fd(), 2, false, PAGE_SIZE as u64, "test mmap").unwrap();
    assert_eq!(map.len(), 2 * PAGE_SIZE);
    // SAFETY: the mapping is 2 pages long and private to this test.
    let (first, last) = unsafe {
        (
            map.as_ptr().read_volatile(),
            map.as_ptr().add(2 * PAGE_SIZE - 1).read_volatile(),
        )
    };
    assert_eq!((first, last), (0xa5, 0x5a));

    // Not inherited by a fork: the kernel shows that as the "dc" VmFlag.
    match std::fs::read_to_string("/proc/self/smaps") {
        Ok(smaps) => {
            let start = format!("{:x}-", map.as_ptr() as usize);
            let entry = smaps
                .split_inclusive('\n')
                .skip_while(|l| !l.starts_with(&start))
                // VmFlags closes each entry, so the first one after ours is ours.
                .find(|l| l.starts_with("VmFlags:"))
                .expect("our mapping in smaps");
            assert!(entry.split_whitespace().any(|f| f == "dc"), "{entry}");
        }
        Err(e) => eprintln!("SKIPPED the fork check: no /proc/self/smaps ({e})"),
    }

    map.unmap();
    map.unmap(); // and once more on drop: must not munmap twice
}

#[test]
fn mmap_rejects_an_offset_beyond_off_t() {
    let file = tempfile::tempfile().unwrap();
    let err = Mmap::new(file.as_fd(), 1, true, u64::MAX, "test mmap")
        .err()
        .expect("offset out of range");
    assert_eq!(platform_errno(&err).0, "test mmap");
}

/// A stand-in evtchn fd: our end non-blocking, the other end plays the kernel.
fn fake_evtchn(port: u32) -> (XenEventChannel, std::os::unix::net::UnixStream) {
    let (ours, theirs): (OwnedFd, OwnedFd) = socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
    )
    .unwrap();
    let theirs = std::os::unix::net::UnixStream::from(theirs);
    theirs.set_nonblocking(false).unwrap();
    theirs
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    (XenEventChannel::from_parts(ours, port), theirs)
}

#[test]
fn clear_drains_pending_ports_and_unmasks_ours() {
    use std::io::Write;
    let (ch, mut kernel) = fake_evtchn(42);
    assert_eq!(ch.local_port(), 42);

    assert!(!ch.clear().unwrap(), "nothing pending");

    // The device queues the port (twice, as after a reset race) and masks it.
    kernel.write_all(&42u32.to_ne_bytes()).unwrap();
    kernel.write_all(&42u32.to_ne_bytes()).unwrap();
    assert!(ch.clear().unwrap());
    // Delivery is re-enabled by writing our port back, exactly once.
    let mut back = [0u8; 4];
    kernel.read_exact(&mut back).unwrap();
    assert_eq!(u32::from_ne_bytes(back), 42);
    kernel.set_nonblocking(true).unwrap();
    let mut more = [0u8; 4];
    assert_eq!(
        kernel.read(&mut more).map_err(|e| e.kind()),
        Err(std::io::ErrorKind::WouldBlock)
    );

    assert!(!ch.clear().unwrap(), "drained");
}

#[test]
fn clear_reports_read_errors() {
    // A directory fd reads as EISDIR: a real device error must surface, typed.
    let dir = tempfile::tempdir().unwrap();
    let fd: OwnedFd = std::fs::File::open(dir.path()).unwrap().into();
    let ch = XenEventChannel::from_parts(fd, 1);
    let err = ch.clear().expect_err("read of a directory");
    assert_eq!(platform_errno(&err), ("evtchn read", Some(libc::EISDIR)));
}

/// Real-Xen tests. They grant, map and signal within this domain (a domain may
/// grant to itself), whose id comes from `XENVT_TEST_DOMID` (default 0, dom0).
mod real_xen {
    use super::*;
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

    fn platform() -> Option<(XenPlatform, DomId)> {
        match XenPlatform::open() {
            Ok(p) => {
                let domid = std::env::var("XENVT_TEST_DOMID")
                    .ok()
                    .map(|s| s.parse().expect("XENVT_TEST_DOMID is a domain id"))
                    .unwrap_or(0);
                Some((p, domid))
            }
            Err(e) => {
                eprintln!("SKIPPED: no Xen devices here ({e})");
                None
            }
        }
    }

    fn wait_readable(ch: &dyn EventChannel) {
        // SAFETY: the fd belongs to `ch`, which outlives this call.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(ch.as_raw_fd()) };
        let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
        let n = poll(&mut fds, PollTimeout::from(10_000u16)).expect("poll");
        assert_eq!(n, 1, "no event within 10 s");
    }

    fn read(p: &dyn Pages, at: usize) -> u8 {
        assert!(at < p.len());
        // SAFETY: in bounds (checked); volatile because the other mapping of the
        // same page may change it.
        unsafe { p.as_ptr().add(at).read_volatile() }
    }

    fn write(p: &dyn Pages, at: usize, v: u8) {
        assert!(at < p.len());
        // SAFETY: as in `read`; the mapping is writable.
        unsafe { p.as_ptr().add(at).write_volatile(v) }
    }

    #[test]
    #[ignore = "needs /dev/xen/{gntalloc,gntdev} on real Xen; run in the real-Xen lab with --ignored"]
    fn share_map_and_unmap_notify_loopback() {
        let Some((p, me)) = platform() else { return };
        let shared = p.share_pages(me, 2, true).expect("share");
        assert_eq!(shared.grant_refs().len(), 2);
        assert_eq!(read(&*shared, 4097), 0, "shared pages start zeroed");
        write(&*shared, 4097, 0x11);

        let mapped = p
            .map_pages(me, shared.grant_refs(), true)
            .expect("map own grants");
        assert!(mapped.grant_refs().is_empty());
        assert_eq!(read(&*mapped, 4097), 0x11);
        write(&*mapped, 5, 0x22);
        assert_eq!(read(&*shared, 5), 0x22);

        let a = p.alloc_unbound(me).expect("alloc unbound");
        let b = p.bind_interdomain(me, a.local_port()).expect("bind");
        mapped
            .set_unmap_notify(5, Some(b.local_port()))
            .expect("notify");
        drop(mapped);
        wait_readable(&*a);
        assert!(a.clear().unwrap());
        assert_eq!(read(&*shared, 5), 0, "unmap cleared the live byte");

        let ro = p.map_pages(me, shared.grant_refs(), false).expect("map ro");
        assert!(matches!(
            ro.set_unmap_notify(0, None),
            Err(Error::Invalid(_))
        ));
        assert_eq!(read(&*ro, 4097), 0x11);
    }

    #[test]
    #[ignore = "needs /dev/xen/evtchn on real Xen; run in the real-Xen lab with --ignored"]
    fn event_channel_loopback() {
        let Some((p, me)) = platform() else { return };
        let a = p.alloc_unbound(me).expect("alloc unbound");
        let b = p.bind_interdomain(me, a.local_port()).expect("bind");
        assert!(!a.clear().unwrap());
        b.notify().unwrap();
        wait_readable(&*a);
        assert!(a.clear().unwrap());
        assert!(!a.clear().unwrap());
        // Delivery was re-armed: a second kick arrives too.
        a.notify().unwrap();
        wait_readable(&*b);
        assert!(b.clear().unwrap());
        b.notify().unwrap();
        wait_readable(&*a);
        assert!(a.clear().unwrap());
    }

    #[test]
    #[ignore = "needs /dev/xen/gntalloc on real Xen; run in the real-Xen lab with --ignored"]
    fn shared_pages_notify_on_drop() {
        let Some((p, me)) = platform() else { return };
        let a = p.alloc_unbound(me).expect("alloc unbound");
        let b = p.bind_interdomain(me, a.local_port()).expect("bind");
        let shared = p.share_pages(me, 1, true).expect("share");
        let mapped = p.map_pages(me, shared.grant_refs(), true).expect("map");
        write(&*mapped, 7, 1);
        shared
            .set_unmap_notify(7, Some(b.local_port()))
            .expect("notify");
        // Dropping the event channel first must not lose the notify: the kernel
        // keeps the port bound until it fires.
        drop(b);
        drop(shared);
        wait_readable(&*a);
        assert_eq!(read(&*mapped, 7), 0, "release cleared the live byte");
    }
}
