//! Async tests over the heap platform: bulk transfer both ways, exact EOF, peer
//! death, the shared-event-fd hazard, and the zero-copy socket helpers.

use std::sync::atomic::Ordering;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use xenvt_ring::fdio::{copy_channel_to_socket, copy_socket_to_channel};
use xenvt_ring::layout;
use xenvt_ring::platform::heap::HeapHost;
use xenvt_ring::platform::Platform;
use xenvt_ring::shm::ShmView;
use xenvt_ring::{Channel, ChannelConfig, ChannelStream};

/// Upper bound on any one test: a hang (lost wakeup) fails instead of blocking CI.
const LIMIT: Duration = Duration::from_secs(20);

fn pair(host: &HeapHost, cfg: ChannelConfig) -> (ChannelStream, ChannelStream) {
    let s = Channel::server(&host.domain(1), 0, cfg).unwrap();
    let c = Channel::client(&host.domain(0), 1, s.ring_ref(), s.event_port()).unwrap();
    (
        ChannelStream::new(s).unwrap(),
        ChannelStream::new(c).unwrap(),
    )
}

/// Deterministic pseudo-random bytes.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

async fn write_all_chunked<W: AsyncWriteExt + Unpin>(w: &mut W, data: &[u8], seed: u64) {
    let mut off = 0;
    let mut x = seed;
    while off < data.len() {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        let n = ((x >> 33) as usize % 70_000 + 1).min(data.len() - off);
        w.write_all(&data[off..off + n]).await.unwrap();
        off += n;
    }
}

/// Reads until EOF or `limit` bytes, hashing.
async fn read_to_hash<R: AsyncReadExt + Unpin>(r: &mut R, limit: usize) -> (usize, Vec<u8>) {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 50_000];
    let mut total = 0;
    loop {
        let want = buf.len().min(limit - total);
        let n = if want == 0 {
            0
        } else {
            r.read(&mut buf[..want]).await.unwrap()
        };
        if n == 0 {
            return (total, h.finalize().to_vec());
        }
        total += n;
        h.update(&buf[..n]);
    }
}

async fn pump_both_ways(cfg: ChannelConfig, len: usize) {
    let host = HeapHost::new();
    let (s, c) = pair(&host, cfg);
    let (mut sr, mut sw) = s.into_split();
    let (mut cr, mut cw) = c.into_split();
    let up = pattern(1, len);
    let down = pattern(2, len);
    let up_hash = Sha256::digest(&up).to_vec();
    let down_hash = Sha256::digest(&down).to_vec();
    // vchan has no half-close (closing ends both directions), so each reader
    // stops at the expected length rather than at EOF.
    let t1 = tokio::spawn(async move {
        write_all_chunked(&mut cw, &up, 7).await;
        cw
    });
    let t2 = tokio::spawn(async move {
        write_all_chunked(&mut sw, &down, 9).await;
        sw
    });
    let t3 = tokio::spawn(async move { read_to_hash(&mut sr, len).await });
    let t4 = tokio::spawn(async move { read_to_hash(&mut cr, len).await });
    let all = async {
        let _keep = (t1.await.unwrap(), t2.await.unwrap());
        (t3.await.unwrap(), t4.await.unwrap())
    };
    let ((n3, h3), (n4, h4)) = tokio::time::timeout(LIMIT, all).await.expect("hung");
    assert_eq!((n3, h3), (len, up_hash));
    assert_eq!((n4, h4), (len, down_hash));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pumps_mebibytes_both_ways_default_rings() {
    pump_both_ways(ChannelConfig::default(), 6 << 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pumps_both_ways_tiny_in_page_rings() {
    // 1 KiB and 2 KiB rings: both halves wait on the one event fd all the time,
    // which is where a lost wakeup between the halves would show up as a hang.
    for _ in 0..4 {
        pump_both_ways(
            ChannelConfig {
                left_order: 10,
                right_order: 11,
            },
            1 << 20,
        )
        .await;
    }
}

#[tokio::test(flavor = "current_thread")]
async fn pumps_on_one_thread() {
    pump_both_ways(
        ChannelConfig {
            left_order: 12,
            right_order: 13,
        },
        2 << 20,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eof_after_every_byte() {
    let host = HeapHost::new();
    let (mut s, mut c) = pair(
        &host,
        ChannelConfig {
            left_order: 12,
            right_order: 12,
        },
    );
    let data = pattern(5, 100_000);
    let d2 = data.clone();
    let w = tokio::spawn(async move {
        c.write_all(&d2).await.unwrap();
        c.shutdown().await.unwrap();
        // Keep the channel mapped a while after closing: EOF must not depend on unmapping.
        c
    });
    let mut got = Vec::new();
    tokio::time::timeout(LIMIT, s.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, data);
    // Writing to a closed peer fails instead of blocking.
    let e = s.write_all(b"x").await.unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe);
    drop(w.await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_death_ends_reads_and_writes() {
    // A bare client that dies without closing: only the unmap-notify of its
    // mapping clears cli_live and kicks us, as the kernel does for a dead process.
    let host = HeapHost::new();
    let srv = Channel::server(&host.domain(1), 0, ChannelConfig::default()).unwrap();
    let dom0 = host.domain(0);
    let evt = dom0.bind_interdomain(1, srv.event_port()).unwrap();
    let page = dom0.map_pages(1, &[srv.ring_ref()], true).unwrap();
    page.set_unmap_notify(layout::CLI_LIVE, Some(evt.local_port()))
        .unwrap();
    let v = ShmView::of(&*page);
    v.store_u8(layout::CLI_LIVE, layout::LIVE_CONNECTED, Ordering::Release)
        .unwrap();
    let (mut r, mut w) = ChannelStream::new(srv).unwrap().into_split();
    let reader = tokio::spawn(async move {
        let mut b = [0u8; 16];
        r.read(&mut b).await
    });
    // Fill the ring so the writer is blocked when the peer dies.
    let writer = tokio::spawn(async move {
        let big = vec![0u8; 1 << 20];
        w.write_all(&big).await
    });
    tokio::task::yield_now().await;
    drop(page); // the "process" dies
    let n = tokio::time::timeout(LIMIT, reader)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(n, 0, "EOF");
    let e = tokio::time::timeout(LIMIT, writer)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe);
    drop(evt);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_index_is_an_error_not_a_hang() {
    let host = HeapHost::new();
    let srv = Channel::server(&host.domain(1), 0, ChannelConfig::default()).unwrap();
    let dom0 = host.domain(0);
    let evt = dom0.bind_interdomain(1, srv.event_port()).unwrap();
    let page = dom0.map_pages(1, &[srv.ring_ref()], true).unwrap();
    let v = ShmView::of(&*page);
    v.store_u8(layout::CLI_LIVE, layout::LIVE_CONNECTED, Ordering::Release)
        .unwrap();
    let (mut r, _w) = ChannelStream::new(srv).unwrap().into_split();
    let reader = tokio::spawn(async move {
        let mut b = [0u8; 16];
        r.read(&mut b).await
    });
    tokio::task::yield_now().await;
    // Claim far more data than the ring holds, and kick.
    v.store_u32(layout::LEFT + layout::PROD, 1 << 30, Ordering::Release)
        .unwrap();
    evt.notify().unwrap();
    let e = tokio::time::timeout(LIMIT, reader)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
    // The server closed its end on the violation.
    assert_eq!(v.load_u8(layout::SRV_LIVE, Ordering::Acquire).unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_copy_socket_helpers() {
    use tokio::net::{TcpListener, TcpStream, UnixStream};
    let host = HeapHost::new();
    let (s, c) = pair(&host, ChannelConfig::default());
    let (_sr, mut sw) = s.into_split();
    let (mut cr, _cw) = c.into_split();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let data = pattern(11, 8 << 20);
    let want = Sha256::digest(&data).to_vec();
    // TCP client -> (socket to channel) -> ring -> (channel to socket) -> unix pair.
    let sender = tokio::spawn(async move {
        let mut t = TcpStream::connect(addr).await.unwrap();
        t.write_all(&data).await.unwrap();
        t.shutdown().await.unwrap();
    });
    let (tcp, _) = listener.accept().await.unwrap();
    let into_ring = tokio::spawn(async move {
        let n = copy_socket_to_channel(&tcp, &mut sw).await.unwrap();
        drop(sw); // closes the channel: the far side sees EOF after the last byte
        n
    });
    let (u1, mut u2) = UnixStream::pair().unwrap();
    let out_of_ring = tokio::spawn(async move {
        let n = copy_channel_to_socket(&mut cr, &u1).await.unwrap();
        drop(u1);
        n
    });
    let (n, hash) = tokio::time::timeout(LIMIT, read_to_hash(&mut u2, usize::MAX))
        .await
        .unwrap();
    sender.await.unwrap();
    assert_eq!(into_ring.await.unwrap(), 8 << 20);
    assert_eq!(out_of_ring.await.unwrap(), 8 << 20);
    assert_eq!((n, hash), (8 << 20, want));
}

/// The shared-event-fd hazard, provoked: the server's write half is kept busy
/// draining kicks (the client consumes its data from another thread) while its
/// read half waits for a single byte the client sends at an arbitrary moment.
/// If the writer drained the kick meant for the reader while the reader was
/// between its re-check and its wait, and nothing woke the reader, the reader
/// would sleep forever once the writer's traffic stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_event_fd_two_waiting_halves() {
    let host = HeapHost::new();
    for round in 0..300u32 {
        let cfg = ChannelConfig {
            left_order: 10,
            right_order: 11,
        };
        let s = Channel::server(&host.domain(1), 0, cfg).unwrap();
        let c = Channel::client(&host.domain(0), 1, s.ring_ref(), s.event_port()).unwrap();
        let (mut sr, mut sw) = ChannelStream::new(s).unwrap().into_split();
        const BULK: usize = 24 << 10;
        let reader = tokio::spawn(async move {
            let mut b = [0u8; 1];
            sr.read_exact(&mut b).await.unwrap();
            (sr, b[0])
        });
        let writer = tokio::spawn(async move {
            sw.write_all(&[3u8; BULK]).await.unwrap();
            sw
        });
        // The client busy-polls on its own thread, so the server tasks get the
        // kicks at arbitrary points; the single byte goes out mid-transfer.
        let at = (round as usize * 7919) % BULK;
        let client = std::thread::spawn(move || {
            let mut got = 0;
            let mut sent = false;
            let mut b = vec![0u8; 4096];
            while got < BULK {
                got += c.read(&mut b).unwrap();
                if !sent && got >= at {
                    assert_eq!(c.write(&[42]).unwrap(), 1);
                    sent = true;
                }
                std::hint::spin_loop();
            }
            if !sent {
                assert_eq!(c.write(&[42]).unwrap(), 1);
            }
            c
        });
        let (_sr, byte) = tokio::time::timeout(LIMIT, reader)
            .await
            .unwrap_or_else(|_| panic!("reader lost its wakeup in round {round}"))
            .unwrap();
        assert_eq!(byte, 42);
        let _sw = tokio::time::timeout(LIMIT, writer).await.unwrap().unwrap();
        drop(client.join().unwrap());
    }
}

/// A bare client of a server stream with in-page rings (orders 10 and 11): the
/// control page mapped writable and the event channel bound, with no `Channel`
/// code, so the test decides exactly when (and whether) the server is kicked.
struct Bare {
    _host: HeapHost,
    page: Box<dyn xenvt_ring::Pages>,
    evt: Box<dyn xenvt_ring::EventChannel>,
}

impl Bare {
    fn new() -> (Self, ChannelStream) {
        let host = HeapHost::new();
        let cfg = ChannelConfig {
            left_order: 10,
            right_order: 11,
        };
        let srv = Channel::server(&host.domain(1), 0, cfg).unwrap();
        let dom0 = host.domain(0);
        let evt = dom0.bind_interdomain(1, srv.event_port()).unwrap();
        let page = dom0.map_pages(1, &[srv.ring_ref()], true).unwrap();
        let v = ShmView::of(&*page);
        v.store_u8(layout::CLI_LIVE, layout::LIVE_CONNECTED, Ordering::Release)
            .unwrap();
        // Forget the server's set-up request: only a waiter's own request counts.
        v.store_u8(layout::CLI_NOTIFY, 0, Ordering::Release)
            .unwrap();
        let stream = ChannelStream::new(srv).unwrap();
        (
            Bare {
                _host: host,
                page,
                evt,
            },
            stream,
        )
    }

    fn view(&self) -> ShmView {
        ShmView::of(&*self.page)
    }

    /// Whether the server asked to be kicked on our next write.
    fn requested(&self) -> bool {
        let b = self.view().load_u8(layout::CLI_NOTIFY, Ordering::Acquire);
        b.unwrap() & layout::NOTIFY_WRITE != 0
    }

    /// Puts one byte in the client-to-server ring (in the page at 1024) without
    /// looking at the server's request and without kicking.
    fn put_silently(&self, b: u8) {
        let v = self.view();
        v.store_u8(1024, b, Ordering::Relaxed).unwrap();
        v.store_u32(layout::LEFT + layout::PROD, 1, Ordering::Release)
            .unwrap();
    }
}

/// A byte written while the reader spins is found by the spin itself: the reader
/// never posts a request and needs no kick. (Without the spin, or with a spin
/// that did not look at the ring, the reader would arm and sleep forever here,
/// as nobody kicks it: the test would hit its limit.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_during_the_spin_needs_no_wakeup() {
    let (b, stream) = Bare::new();
    stream.set_spin(Duration::from_secs(3600));
    let (mut r, w) = stream.into_split();
    let reader = tokio::spawn(async move {
        let mut buf = [0u8; 4];
        let n = r.read(&mut buf).await.unwrap();
        (n, buf[0])
    });
    tokio::task::yield_now().await;
    b.put_silently(0x5a);
    let (n, byte) = tokio::time::timeout(LIMIT, reader)
        .await
        .expect("the spin missed the byte")
        .unwrap();
    assert_eq!((n, byte), (1, 0x5a));
    assert!(!b.requested(), "the reader never armed");
    drop(w);
}

/// With a zero budget, or once a finite budget is spent, the reader arms its
/// request and sleeps; the kick after a silent write wakes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_budget_the_reader_arms_and_sleeps() {
    for budget in [Duration::ZERO, Duration::from_millis(2)] {
        let (b, stream) = Bare::new();
        stream.set_spin(budget);
        assert_eq!(stream.spin(), budget);
        let (mut r, w) = stream.into_split();
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 4];
            r.read(&mut buf).await.unwrap()
        });
        // The request is the sign that the spin is over and the reader armed.
        tokio::time::timeout(LIMIT, async {
            while !b.requested() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the reader never armed");
        b.put_silently(0x33);
        b.evt.notify().unwrap();
        let n = tokio::time::timeout(LIMIT, reader).await.unwrap().unwrap();
        assert_eq!(n, 1, "budget {budget:?}");
        drop(w);
    }
}
