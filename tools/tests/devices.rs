//! The simulated grant and event-channel devices, driven through the real client
//! (`SimPlatform`) as two domains, in one process and across processes.

use std::io::{self, BufRead, BufReader};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
use xenvt::sim::devices::{self, Devices, DevicesConfig, DevicesStats};
use xenvt_ring::platform::sim::proto::{self, Reply, Request};
use xenvt_ring::platform::sim::SimPlatform;
use xenvt_ring::{Error, EventChannel, Pages, Platform};

/// Generous bound for anything that waits on the host; never reached when it works.
const WAIT: Duration = Duration::from_secs(20);

const DOM0: u16 = 0;
const DOMU: u16 = 1;

struct Host {
    rt: tokio::runtime::Runtime,
    dev: Devices,
    dir: tempfile::TempDir,
    serving: Vec<tokio::task::JoinHandle<io::Result<()>>>,
}

impl Host {
    fn new(grant_limit_pages: usize) -> Host {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let dev = Devices::new(DevicesConfig { grant_limit_pages });
        let dir = tempfile::tempdir().unwrap();
        let mut host = Host {
            rt,
            dev,
            dir,
            serving: Vec::new(),
        };
        host.add(DOM0);
        host.add(DOMU);
        host
    }

    fn add(&mut self, domid: u16) {
        let path = self.path(domid);
        let listener = devices::bind(&path).unwrap();
        let dev = self.dev.clone();
        self.serving.push(
            self.rt
                .spawn(async move { dev.serve(listener, domid).await }),
        );
    }

    fn path(&self, domid: u16) -> PathBuf {
        self.dir.path().join(format!("dom{domid}.sock"))
    }

    fn platform(&self, domid: u16) -> SimPlatform {
        SimPlatform::new(self.path(domid)).unwrap()
    }

    fn wait_stats(&self, pred: impl Fn(&DevicesStats) -> bool) {
        self.rt
            .block_on(async { tokio::time::timeout(WAIT, self.dev.wait_stats(pred)).await })
            .unwrap_or_else(|_| panic!("stats never settled: {:?}", self.dev.stats()));
    }

    fn wait_clean(&self) {
        self.wait_stats(DevicesStats::is_clean);
    }
}

fn write_byte(p: &dyn Pages, offset: usize, v: u8) {
    assert!(offset < p.len());
    // SAFETY: `offset` is inside the live mapping; access is volatile through a raw
    // pointer because the other domain may touch the same memory.
    unsafe { p.as_ptr().add(offset).write_volatile(v) }
}

fn read_byte(p: &dyn Pages, offset: usize) -> u8 {
    assert!(offset < p.len());
    // SAFETY: as in `write_byte`.
    unsafe { p.as_ptr().add(offset).read_volatile() }
}

/// Waits (bounded) for the event channel's fd to poll readable.
fn wait_event(ch: &dyn EventChannel) -> bool {
    // SAFETY: the channel owns this fd and outlives the borrow.
    let fd = unsafe { BorrowedFd::borrow_raw(ch.as_raw_fd()) };
    readable(fd, WAIT)
}

fn readable(fd: BorrowedFd<'_>, within: Duration) -> bool {
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    let ms = PollTimeout::try_from(within.as_millis() as i32).unwrap();
    poll(&mut fds, ms).unwrap() == 1
}

fn io_kind(e: &Error) -> io::ErrorKind {
    match e {
        Error::Platform { source, .. } => source.kind(),
        other => panic!("not a platform error: {other:?}"),
    }
}

#[test]
fn pages_shared_and_mapped_carry_data_both_ways() {
    let host = Host::new(1024);
    let domu = host.platform(DOMU);
    let dom0 = host.platform(DOM0);
    let shared = domu.share_pages(DOM0, 3, true).unwrap();
    assert_eq!(shared.len(), 3 * 4096);
    let refs = shared.grant_refs().to_vec();
    assert_eq!(refs.len(), 3);
    assert!((0..shared.len())
        .step_by(97)
        .all(|o| read_byte(&*shared, o) == 0));
    for page in 0..3 {
        write_byte(&*shared, page * 4096 + 5, 10 + page as u8);
    }
    // Mapped out of order: page i of the mapping is refs[order[i]].
    let order = [2, 0, 1];
    let mapped = dom0.map_pages(DOMU, &order.map(|i| refs[i]), true).unwrap();
    assert!(mapped.grant_refs().is_empty());
    for (i, src) in order.iter().enumerate() {
        assert_eq!(read_byte(&*mapped, i * 4096 + 5), 10 + *src as u8);
    }
    write_byte(&*mapped, 4096 + 4095, 0xaa);
    assert_eq!(read_byte(&*shared, 4095), 0xaa);
    assert!(host.dev.pids(DOMU).contains(&(std::process::id() as i32)));
    let st = host.dev.stats();
    assert_eq!(st.domains[&DOMU].pages_granted, 3);
    assert_eq!(st.domains[&DOMU].pages_mapped_by_others, 3);
    assert_eq!(st.domains[&DOM0].pages_mapped, 3);
    drop(mapped);
    drop(shared);
    host.wait_clean();
}

#[test]
fn read_only_grants_give_read_only_mappings() {
    let host = Host::new(1024);
    let shared = host.platform(DOMU).share_pages(DOM0, 1, false).unwrap();
    write_byte(&*shared, 7, 42);
    let dom0 = host.platform(DOM0);
    let e = dom0
        .map_pages(DOMU, shared.grant_refs(), true)
        .err()
        .unwrap();
    assert_eq!(io_kind(&e), io::ErrorKind::PermissionDenied);
    let ro = dom0.map_pages(DOMU, shared.grant_refs(), false).unwrap();
    assert_eq!(read_byte(&*ro, 7), 42);
    // The fd behind the mapping is read-only, so it cannot be made writable.
    // SAFETY: changes protection of our own mapping only; nothing is accessed.
    let rc = unsafe {
        libc::mprotect(
            ro.as_ptr().cast(),
            ro.len(),
            libc::PROT_READ | libc::PROT_WRITE,
        )
    };
    assert_eq!(rc, -1);
    assert_eq!(
        io::Error::last_os_error().raw_os_error(),
        Some(libc::EACCES)
    );

    // The same at the wire level: the fd itself refuses a writable shared map.
    let sock = raw_connect(&host.path(DOM0));
    let (reply, fds) = raw_call(
        &sock,
        &Request::Map {
            peer: DOMU,
            refs: shared.grant_refs().to_vec(),
            writable: false,
        },
    );
    assert!(matches!(reply, Reply::Mapped { .. }), "{reply:?}");
    // SAFETY: a fresh mapping at a kernel-chosen address; it fails as expected, and
    // would be unmapped right away if not.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fds[0].as_raw_fd(),
            0,
        )
    };
    assert_eq!(p, libc::MAP_FAILED);
    drop((fds, sock, ro, shared));
    host.wait_clean();
}

#[test]
fn maps_not_granted_to_us_are_refused() {
    let mut host = Host::new(1024);
    host.add(2);
    let domu = host.platform(DOMU);
    let dom0 = host.platform(DOM0);
    let for_dom2 = domu.share_pages(2, 1, true).unwrap();
    let e = dom0
        .map_pages(DOMU, for_dom2.grant_refs(), false)
        .err()
        .unwrap();
    assert_eq!(io_kind(&e), io::ErrorKind::PermissionDenied);
    // Right refs, wrong granter.
    let e = dom0
        .map_pages(2, for_dom2.grant_refs(), false)
        .err()
        .unwrap();
    assert_eq!(io_kind(&e), io::ErrorKind::NotFound);
    // Never granted.
    let e = dom0.map_pages(DOMU, &[0, 1], false).err().unwrap();
    assert_eq!(io_kind(&e), io::ErrorKind::NotFound);
    // One bad ref spoils the lot.
    let for_dom0 = domu.share_pages(DOM0, 1, true).unwrap();
    let refs = [for_dom0.grant_refs()[0], for_dom2.grant_refs()[0]];
    assert!(dom0.map_pages(DOMU, &refs, false).is_err());
    // The intended grantee can.
    let m = host
        .platform(2)
        .map_pages(DOMU, for_dom2.grant_refs(), true)
        .unwrap();
    // An ended grant cannot be mapped any more.
    let stale = for_dom0.grant_refs().to_vec();
    drop(for_dom0);
    host.wait_stats(|s| s.domains[&DOMU].pages_granted == 1);
    let e = dom0.map_pages(DOMU, &stale, false).err().unwrap();
    assert_eq!(io_kind(&e), io::ErrorKind::NotFound);
    drop((m, for_dom2));
    host.wait_clean();
}

#[test]
fn grant_limit_is_enforced() {
    let host = Host::new(4);
    let domu = host.platform(DOMU);
    let a = domu.share_pages(DOM0, 3, true).unwrap();
    let e = domu.share_pages(DOM0, 2, true).err().unwrap();
    assert_eq!(io_kind(&e), io::ErrorKind::OutOfMemory);
    let b = domu.share_pages(DOM0, 1, true).unwrap();
    // Another domain has its own budget.
    let c = host.platform(DOM0).share_pages(DOMU, 4, true).unwrap();
    drop(a);
    host.wait_stats(|s| s.domains[&DOMU].pages_granted == 1);
    let d = domu.share_pages(DOM0, 3, true).unwrap();
    drop((b, c, d));
    host.wait_clean();
}

#[test]
fn event_channels_wake_the_other_end() {
    let host = Host::new(1024);
    let domu = host.platform(DOMU);
    let dom0 = host.platform(DOM0);
    let u = domu.alloc_unbound(DOM0).unwrap();
    // Sent while unbound: dropped, as Xen does.
    u.notify().unwrap();
    let z = dom0.bind_interdomain(DOMU, u.local_port()).unwrap();
    assert!(!z.clear().unwrap());
    assert!(!readable(fd_of(&*z), Duration::ZERO));
    z.notify().unwrap();
    assert!(wait_event(&*u));
    assert!(u.clear().unwrap());
    assert!(!u.clear().unwrap(), "clear consumes the event");
    u.notify().unwrap();
    u.notify().unwrap();
    assert!(wait_event(&*z));
    assert!(z.clear().unwrap());
    assert!(!readable(fd_of(&*z), Duration::ZERO));
    // The fd is non-blocking.
    let mut buf = [0u8; 8];
    assert_eq!(
        nix::unistd::read(z.as_raw_fd(), &mut buf),
        Err(nix::errno::Errno::EAGAIN)
    );

    // Already bound, nonexistent, or meant for another domain: refused.
    let e = dom0.bind_interdomain(DOMU, u.local_port()).err().unwrap();
    assert_eq!(io_kind(&e), io::ErrorKind::InvalidInput);
    let e = dom0.bind_interdomain(DOMU, 999).err().unwrap();
    assert_eq!(io_kind(&e), io::ErrorKind::NotFound);
    let other = domu.alloc_unbound(5).unwrap();
    let e = dom0
        .bind_interdomain(DOMU, other.local_port())
        .err()
        .unwrap();
    assert_eq!(io_kind(&e), io::ErrorKind::PermissionDenied);
    assert_ne!(other.local_port(), u.local_port());

    // The binder goes: our end is unbound, notifies go nowhere, and it can be bound again.
    drop(z);
    host.wait_stats(|s| s.domains[&DOM0].ports == 0);
    u.notify().unwrap();
    let z2 = dom0.bind_interdomain(DOMU, u.local_port()).unwrap();
    assert!(
        !z2.clear().unwrap(),
        "events sent while unbound are dropped"
    );
    u.notify().unwrap();
    assert!(wait_event(&*z2));
    drop((z2, u, other));
    host.wait_clean();
}

fn fd_of(ch: &dyn EventChannel) -> BorrowedFd<'_> {
    // SAFETY: the channel owns this fd for as long as the borrow of `ch`.
    unsafe { BorrowedFd::borrow_raw(ch.as_raw_fd()) }
}

#[test]
fn unmap_notify_on_drop_clears_and_signals() {
    let host = Host::new(1024);
    let domu = host.platform(DOMU);
    let dom0 = host.platform(DOM0);
    let u = domu.alloc_unbound(DOM0).unwrap();
    let z = dom0.bind_interdomain(DOMU, u.local_port()).unwrap();
    let shared = domu.share_pages(DOM0, 2, true).unwrap();
    let mapped = dom0.map_pages(DOMU, shared.grant_refs(), true).unwrap();

    // The mapper's notify: byte 4096 + 3 of its mapping, i.e. page 1 of the share.
    write_byte(&*shared, 4096 + 3, 1);
    write_byte(&*shared, 4096 + 4, 1);
    assert!(mapped.set_unmap_notify(2 * 4096, None).is_err());
    assert!(mapped.set_unmap_notify(4096 + 3, Some(999)).is_err());
    mapped
        .set_unmap_notify(4096 + 3, Some(z.local_port()))
        .unwrap();
    drop(mapped);
    assert!(wait_event(&*u));
    assert_eq!(read_byte(&*shared, 4096 + 3), 0);
    assert_eq!(read_byte(&*shared, 4096 + 4), 1, "only the one byte");

    // The granter's notify, seen by a mapper that stays.
    let mapped = dom0.map_pages(DOMU, shared.grant_refs(), true).unwrap();
    write_byte(&*mapped, 9, 1);
    shared.set_unmap_notify(9, Some(u.local_port())).unwrap();
    drop(shared);
    assert!(wait_event(&*z));
    assert_eq!(read_byte(&*mapped, 9), 0);
    drop((mapped, u, z));
    host.wait_clean();
}

/// A helper process, killed and reaped when the test ends, however it ends.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const CHILD_ENV: &str = "XENVT_TEST_DEVICES_CHILD";

/// Runs the ignored helper test `helper` of this binary in a child process
/// with `spec` in [`CHILD_ENV`], and waits for its line `ready[ REST]`;
/// returns the child and REST.
fn helper_child(helper: &str, spec: String) -> (Reaped, String) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", helper, "--ignored", "--nocapture"])
        .env(CHILD_ENV, spec)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map(Reaped)
        .unwrap();
    let rest = BufReader::new(child.0.stdout.take().unwrap())
        .lines()
        .find_map(|l| {
            let l = l.ok()?;
            let l = l.trim();
            if l == "ready" {
                return Some(String::new());
            }
            l.strip_prefix("ready ").map(str::to_owned)
        })
        .expect("child did not get ready");
    (child, rest)
}

/// The spec a helper child was given, or `None` when run as a plain test.
fn child_spec() -> Option<String> {
    std::env::var(CHILD_ENV).ok()
}

/// Where a helper child waits to be killed.
fn wait_to_die() -> ! {
    loop {
        std::thread::park();
    }
}

/// Run in a child process by `unmap_notify_on_process_death`: binds to the
/// given port, maps the given ref, arms unmap-notify, says "ready" and waits to die.
#[test]
#[ignore = "helper process for unmap_notify_on_process_death"]
fn child_maps_and_waits() {
    let Some(spec) = child_spec() else {
        return;
    };
    let mut it = spec.split(',');
    let path = PathBuf::from(it.next().unwrap());
    let gref: u32 = it.next().unwrap().parse().unwrap();
    let port: u32 = it.next().unwrap().parse().unwrap();
    let dom0 = SimPlatform::new(path).unwrap();
    let ch = dom0.bind_interdomain(DOMU, port).unwrap();
    let m = dom0.map_pages(DOMU, &[gref], true).unwrap();
    m.set_unmap_notify(100, Some(ch.local_port())).unwrap();
    println!("ready");
    wait_to_die()
}

#[test]
fn unmap_notify_on_process_death() {
    let host = Host::new(1024);
    let domu = host.platform(DOMU);
    let u = domu.alloc_unbound(DOM0).unwrap();
    let shared = domu.share_pages(DOM0, 1, true).unwrap();
    write_byte(&*shared, 100, 1);
    let spec = format!(
        "{},{},{}",
        host.path(DOM0).display(),
        shared.grant_refs()[0],
        u.local_port()
    );
    let (mut child, _) = helper_child("child_maps_and_waits", spec);
    assert!(host.dev.pids(DOM0).contains(&(child.0.id() as i32)));
    assert!(!u.clear().unwrap());
    assert_eq!(read_byte(&*shared, 100), 1);

    child.0.kill().unwrap();
    child.0.wait().unwrap();
    assert!(wait_event(&*u));
    assert_eq!(read_byte(&*shared, 100), 0);
    // The child's port closed after signalling; ours is unbound again.
    host.wait_stats(|s| s.domains[&DOM0].ports == 0 && s.domains[&DOM0].pages_mapped == 0);
    assert!(host.dev.pids(DOM0).is_empty());
    drop((shared, u));
    host.wait_clean();
}

/// Run in a child process by `granter_death_ends_grants_and_notifies`: shares a
/// page with dom0, arms unmap-notify on the given port, prints the ref, waits to die.
#[test]
#[ignore = "helper process for granter_death_ends_grants_and_notifies"]
fn child_grants_and_waits() {
    let Some(spec) = child_spec() else {
        return;
    };
    let (path, port) = spec.split_once(',').unwrap();
    let domu = SimPlatform::new(PathBuf::from(path)).unwrap();
    let shared = domu.share_pages(DOM0, 1, true).unwrap();
    write_byte(&*shared, 8, 1);
    shared
        .set_unmap_notify(8, Some(port.parse().unwrap()))
        .unwrap();
    println!("ready {}", shared.grant_refs()[0]);
    wait_to_die()
}

#[test]
fn granter_death_ends_grants_and_notifies() {
    let host = Host::new(1024);
    let dom0 = host.platform(DOM0);
    let z = dom0.alloc_unbound(DOMU).unwrap();
    // The child's notify signals through a domU port that this process holds:
    // ports belong to the domain, as with the kernel's `evtchn_get`.
    let domu = host.platform(DOMU);
    let u = domu.bind_interdomain(DOM0, z.local_port()).unwrap();
    let spec = format!("{},{}", host.path(DOMU).display(), u.local_port());
    let (mut child, gref) = helper_child("child_grants_and_waits", spec);
    let gref: u32 = gref.parse().unwrap();
    let mapped = dom0.map_pages(DOMU, &[gref], true).unwrap();
    assert_eq!(read_byte(&*mapped, 8), 1);

    child.0.kill().unwrap();
    child.0.wait().unwrap();
    assert!(wait_event(&*z));
    assert_eq!(read_byte(&*mapped, 8), 0);
    // The grant ended with its holder, but our mapping keeps the page alive.
    host.wait_stats(|s| s.domains[&DOMU].pages_granted == 0);
    assert_eq!(host.dev.stats().domains[&DOMU].grants, 1);
    write_byte(&*mapped, 9, 9);
    assert_eq!(read_byte(&*mapped, 9), 9);
    assert!(dom0.map_pages(DOMU, &[gref], true).is_err());
    drop((mapped, u, z));
    host.wait_clean();
}

#[test]
fn destroyed_domain_grants_cannot_be_mapped_but_live_maps_stay() {
    let mut host = Host::new(1024);
    let domu = host.platform(DOMU);
    let dom0 = host.platform(DOM0);
    let shared = domu.share_pages(DOM0, 1, true).unwrap();
    let u = domu.alloc_unbound(DOM0).unwrap();
    let z = dom0.bind_interdomain(DOMU, u.local_port()).unwrap();
    let mapped = dom0.map_pages(DOMU, shared.grant_refs(), true).unwrap();
    let refs = shared.grant_refs().to_vec();

    host.dev.destroy_domain(DOMU);
    let serving = host.serving.remove(1);
    let r = host
        .rt
        .block_on(async { tokio::time::timeout(WAIT, serving).await })
        .expect("serve returns after destroy");
    assert!(r.unwrap().is_ok());

    let st = host.dev.stats().domains[&DOMU].clone();
    assert!(st.destroyed && st.zombie, "{st:?}");
    assert_eq!((st.connections, st.ports), (0, 0));
    // Our mapping still works.
    write_byte(&*mapped, 1, 5);
    assert_eq!(read_byte(&*mapped, 1), 5);
    // New maps are refused; its objects are cut off.
    let e = dom0.map_pages(DOMU, &refs, true).err().unwrap();
    assert_eq!(io_kind(&e), io::ErrorKind::NotFound);
    assert!(shared.set_unmap_notify(0, None).is_err());
    assert!(SimPlatform::new(host.path(DOMU))
        .and_then(|p| p.alloc_unbound(DOM0))
        .is_err());
    // Our port is unbound: its notify goes nowhere and nothing arrives.
    z.notify().unwrap();
    assert!(!z.clear().unwrap());

    drop(mapped);
    host.wait_stats(|s| !s.domains.contains_key(&DOMU));
    drop((z, u, shared));
    host.wait_clean();
}

fn raw_connect(path: &Path) -> OwnedFd {
    let s = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    connect(s.as_raw_fd(), &UnixAddr::new(path).unwrap()).unwrap();
    s
}

fn raw_call(sock: &OwnedFd, req: &Request) -> (Reply, Vec<OwnedFd>) {
    proto::send_msg(sock.as_fd(), &proto::encode(req).unwrap(), &[]).unwrap();
    let (msg, fds) = proto::recv_msg(sock.as_fd(), true).unwrap().unwrap();
    (serde_json::from_slice(&msg).unwrap(), fds)
}

/// Reads until the daemon replies or hangs up; true when it hung up.
fn hung_up_after_reply(sock: &OwnedFd) -> bool {
    loop {
        assert!(
            readable(sock.as_fd(), WAIT),
            "daemon neither replied nor hung up"
        );
        match proto::recv_msg(sock.as_fd(), true) {
            Ok(None) | Err(_) => return true,
            Ok(Some((msg, _))) => {
                let reply: Reply = serde_json::from_slice(&msg).unwrap();
                assert!(matches!(reply, Reply::Refused(_)), "{reply:?}");
            }
        }
    }
}

#[test]
fn garbage_hurts_only_its_sender() {
    let host = Host::new(1024);
    let domu = host.platform(DOMU);
    let dom0 = host.platform(DOM0);
    let shared = domu.share_pages(DOM0, 1, true).unwrap();
    let u = domu.alloc_unbound(DOM0).unwrap();

    let efd = nix::sys::eventfd::EventFd::new().unwrap();
    let garbage: [&[u8]; 5] = [
        b"\x00\x01\x02not json",
        b"{\"op\":\"map\",\"peer\":1,\"refs\":[],\"writable\":true}",
        b"{\"op\":\"share\",\"peer\":0,\"count\":4294967295,\"writable\":true}",
        &[b'['; 4000],
        &[b' '; proto::MAX_MSG + 10],
    ];
    for g in garbage {
        let s = raw_connect(&host.path(DOMU));
        proto::send_msg(s.as_fd(), g, &[efd.as_fd().as_raw_fd()]).unwrap();
        assert!(hung_up_after_reply(&s));
    }
    // A well-formed but refused request leaves the connection usable.
    let s = raw_connect(&host.path(DOM0));
    let (r, _) = raw_call(
        &s,
        &Request::BindInterdomain {
            peer: DOMU,
            remote_port: 4000,
        },
    );
    assert!(matches!(r, Reply::Refused(_)), "{r:?}");
    let (r, fds) = raw_call(
        &s,
        &Request::BindInterdomain {
            peer: DOMU,
            remote_port: u.local_port(),
        },
    );
    assert!(matches!(r, Reply::Port { .. }), "{r:?}");
    assert_eq!(fds.len(), 2);
    // One object per connection.
    let (r, _) = raw_call(&s, &Request::AllocUnbound { peer: DOMU });
    assert!(matches!(r, Reply::Refused(_)), "{r:?}");
    // A peer that hangs up mid-request is fine too.
    drop(raw_connect(&host.path(DOMU)));

    // The well-behaved clients carry on.
    let mapped = dom0.map_pages(DOMU, shared.grant_refs(), true).unwrap();
    write_byte(&*mapped, 0, 3);
    assert_eq!(read_byte(&*shared, 0), 3);
    u.notify().unwrap();
    nix::unistd::write(&fds[1], &1u64.to_ne_bytes()).unwrap();
    assert!(wait_event(&*u));
    drop((s, fds, mapped, shared, u));
    host.wait_clean();
}
