//! The stream multiplexer over the heap platform with real socket pairs: data
//! integrity under concurrency, half-close, refusal, a stalled reader, peer death.
//! Hostile peers are in `mux_hostile.rs`.

use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use xenvt_ring::mux::{self, CloseReason, Incoming, MuxConfig, MuxHandle, Side, StreamEnd};
use xenvt_ring::platform::heap::HeapHost;
use xenvt_ring::{Channel, ChannelConfig, Error};

/// Upper bound on any one test: a hang fails instead of blocking CI.
const LIMIT: Duration = Duration::from_secs(60);

struct Pair {
    host: HeapHost,
    guest: MuxHandle,
    guest_in: Incoming,
    dom0: MuxHandle,
    dom0_in: Incoming,
}

async fn pair_with(chan: ChannelConfig, cfg: MuxConfig) -> Pair {
    let host = HeapHost::new();
    let s = Channel::server(&host.domain(1), 0, chan).unwrap();
    let c = Channel::client(&host.domain(0), 1, s.ring_ref(), s.event_port()).unwrap();
    let (g, d) = tokio::join!(mux::start(s, cfg), mux::start(c, cfg));
    let (guest, guest_in) = g.unwrap();
    let (dom0, dom0_in) = d.unwrap();
    assert_eq!(guest.side(), Side::Guest);
    assert_eq!(dom0.side(), Side::Dom0);
    Pair {
        host,
        guest,
        guest_in,
        dom0,
        dom0_in,
    }
}

async fn pair() -> Pair {
    pair_with(ChannelConfig::default(), MuxConfig::default()).await
}

/// Deterministic pseudo-random bytes.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Serves requests: "sha" reads to EOF and answers the SHA-256 of what it read,
/// then closes; "echo" echoes until EOF; "stall" never reads; anything else is refused.
fn serve(mut inc: Incoming) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(req) = inc.next().await {
            let (mut app, mux_end) = UnixStream::pair().unwrap();
            match req.service() {
                "sha" => {
                    req.accept(mux_end);
                    tokio::spawn(async move {
                        let mut h = Sha256::new();
                        let mut b = vec![0u8; 64 << 10];
                        loop {
                            let n = app.read(&mut b).await.unwrap();
                            if n == 0 {
                                break;
                            }
                            h.update(&b[..n]);
                        }
                        app.write_all(&h.finalize()).await.unwrap();
                        app.shutdown().await.unwrap();
                    });
                }
                "echo" => {
                    req.accept(mux_end);
                    tokio::spawn(async move {
                        let (mut r, mut w) = app.split();
                        tokio::io::copy(&mut r, &mut w).await.unwrap();
                        w.shutdown().await.unwrap();
                    });
                }
                "stall" => {
                    req.accept(mux_end);
                    // Keep the socket open and never read it.
                    tokio::spawn(async move {
                        tokio::time::sleep(LIMIT * 2).await;
                        drop(app);
                    });
                }
                _ => req.refuse(),
            }
        }
    })
}

/// Sends `data` to a "sha" stream and checks the digest it answers, then EOF.
async fn sha_round(h: &MuxHandle, data: Vec<u8>) {
    let (mut app, mux_end) = UnixStream::pair().unwrap();
    let stream = h.open("sha", mux_end).await.unwrap();
    let want: [u8; 32] = Sha256::digest(&data).into();
    let (mut r, mut w) = app.split();
    let send = async {
        w.write_all(&data).await.unwrap();
        w.shutdown().await.unwrap();
    };
    let recv = async {
        let mut got = Vec::new();
        r.read_to_end(&mut got).await.unwrap();
        got
    };
    let ((), got) = tokio::join!(send, recv);
    assert_eq!(got, want, "digest of {} bytes", data.len());
    // Our side shut down first: the digest comes only after our EOF.
    assert_eq!(stream.done().await, StreamEnd::Closed { peer_first: false });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_and_clean_close() {
    tokio::time::timeout(LIMIT, async {
        let p = pair().await;
        let _srv = serve(p.dom0_in);
        let (mut app, mux_end) = UnixStream::pair().unwrap();
        let st = p.guest.open("echo", mux_end).await.unwrap();
        assert_eq!(st.id() % 2, 1, "guest opens odd ids");
        app.write_all(b"hello through the ring").await.unwrap();
        let mut b = [0u8; 22];
        app.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"hello through the ring");
        app.shutdown().await.unwrap();
        assert_eq!(
            app.read(&mut b).await.unwrap(),
            0,
            "EOF after echo side closes"
        );
        assert_eq!(st.done().await, StreamEnd::Closed { peer_first: false });
        let s = p.guest.stats();
        assert_eq!(s.streams_opened, 1);
        assert_eq!((s.bytes_tx, s.bytes_rx), (22, 22));
        assert_eq!(s.resets_sent + s.resets_received, 0);
        // The dom0 side has forgotten the stream too.
        while p.dom0.stats().streams_open != 0 || p.guest.stats().streams_open != 0 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_streams_both_directions() {
    tokio::time::timeout(LIMIT, async {
        // A small ring makes frames wrap and the ring fill often.
        let p = pair_with(
            ChannelConfig {
                left_order: 13,
                right_order: 14,
            },
            MuxConfig {
                stream_buf: 32 << 10,
                max_frame: 8 << 10,
                ..MuxConfig::default()
            },
        )
        .await;
        let _s1 = serve(p.dom0_in);
        let _s2 = serve(p.guest_in);
        let mut tasks = Vec::new();
        // 256 at once: each multiplexer carries its full default max_streams.
        for i in 0..256u64 {
            let h = if i % 2 == 0 {
                p.guest.clone()
            } else {
                p.dom0.clone()
            };
            let len = match i % 4 {
                0 => 0,
                1 => 1 + (i as usize * 37) % 1000,
                2 => 70_000 + (i as usize * 7919) % 50_000,
                _ => 200_000 + (i as usize * 104_729) % 300_000,
            };
            tasks.push(tokio::spawn(
                async move { sha_round(&h, pattern(i, len)).await },
            ));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let g = p.guest.stats();
        let d = p.dom0.stats();
        assert_eq!(g.streams_opened + g.streams_accepted, 256);
        assert_eq!(d.streams_opened + d.streams_accepted, 256);
        assert_eq!(g.bytes_tx, d.bytes_rx);
        assert_eq!(d.bytes_tx, g.bytes_rx);
        assert_eq!(g.resets_sent + d.resets_sent, 0);
        assert_eq!(g.stream_violations + d.stream_violations, 0);
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_each_way() {
    tokio::time::timeout(LIMIT, async {
        let mut p = pair().await;
        // Opener shuts down first; acceptor keeps writing afterwards.
        for opener_first in [true, false] {
            let (mut a, a_mux) = UnixStream::pair().unwrap();
            let (mut b, b_mux) = UnixStream::pair().unwrap();
            let open = p.dom0.open("x", a_mux);
            let acc = async {
                let req = p.guest_in.next().await.unwrap();
                assert_eq!(req.service(), "x");
                req.accept(b_mux)
            };
            let (sa, sb) = tokio::join!(open, acc);
            let sa = sa.unwrap();
            assert_eq!(sa.id() % 2, 0, "dom0 opens even ids");
            let (first, second) = if opener_first {
                (&mut a, &mut b)
            } else {
                (&mut b, &mut a)
            };
            first.write_all(b"one way").await.unwrap();
            first.shutdown().await.unwrap();
            let mut got = Vec::new();
            second.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, b"one way");
            // The other direction still works after the first is closed.
            second.write_all(b"and back").await.unwrap();
            second.shutdown().await.unwrap();
            got.clear();
            first.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, b"and back");
            // Each side knows who shut down first: `second` saw EOF only after it.
            let peer_first = !opener_first;
            assert_eq!(sa.done().await, StreamEnd::Closed { peer_first });
            let peer_first = opener_first;
            assert_eq!(sb.done().await, StreamEnd::Closed { peer_first });
        }
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_services() {
    tokio::time::timeout(LIMIT, async {
        let mut p = pair().await;
        let _srv = serve(p.dom0_in);
        let (_app, mux_end) = UnixStream::pair().unwrap();
        match p.guest.open("nope", mux_end).await {
            Err(Error::Refused(s)) => assert_eq!(s, "nope"),
            other => panic!("expected refusal, got {other:?}"),
        }
        // Dropping the request refuses too.
        let (_app, mux_end) = UnixStream::pair().unwrap();
        let open = p.dom0.open("dropped", mux_end);
        let drop_it = async {
            let req = p.guest_in.next().await.unwrap();
            drop(req);
        };
        let (r, ()) = tokio::join!(open, drop_it);
        assert!(matches!(r, Err(Error::Refused(_))), "{r:?}");
        // Bad names never reach the wire.
        let (_app, mux_end) = UnixStream::pair().unwrap();
        assert!(matches!(
            p.guest.open("has space", mux_end).await,
            Err(Error::Invalid(_))
        ));
        assert_eq!(p.dom0.stats().refused, 1);
        assert_eq!(p.guest.stats().refused, 1);
        // The channel is fine afterwards.
        sha_round(&p.guest, pattern(1, 5000)).await;
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_sockets_work_too() {
    tokio::time::timeout(LIMIT, async {
        let p = pair().await;
        let _srv = serve(p.dom0_in);
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), l.accept());
        let mut client = client.unwrap();
        let st = p.guest.open("sha", accepted.unwrap().0).await.unwrap();
        let data = pattern(9, 3 << 20);
        let want: [u8; 32] = Sha256::digest(&data).into();
        let (mut r, mut w) = client.split();
        let send = async {
            w.write_all(&data).await.unwrap();
            w.shutdown().await.unwrap();
        };
        let mut got = Vec::new();
        let recv = r.read_to_end(&mut got);
        let ((), n) = tokio::join!(send, recv);
        n.unwrap();
        assert_eq!(got, want);
        assert_eq!(st.done().await, StreamEnd::Closed { peer_first: false });
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_reader_does_not_block_others() {
    tokio::time::timeout(LIMIT, async {
        let cfg = MuxConfig {
            stream_buf: 64 << 10,
            ..MuxConfig::default()
        };
        let p = pair_with(ChannelConfig::default(), cfg).await;
        let _srv = serve(p.dom0_in);
        let (mut stalled_app, mux_end) = UnixStream::pair().unwrap();
        let _stalled = p.guest.open("stall", mux_end).await.unwrap();
        // Far more than the credit, the mux buffer and both socket buffers hold.
        let big = pattern(3, 64 << 20);
        let writer = tokio::spawn(async move {
            let _ = stalled_app.write_all(&big).await;
            stalled_app
        });
        // Wait until the stalled stream has used up its credit.
        while p.guest.stats().credit_stalls == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Others still move, many times more than the ring holds.
        for i in 0..4 {
            sha_round(&p.guest, pattern(100 + i, 8 << 20)).await;
        }
        assert!(
            !writer.is_finished(),
            "the stalled stream cannot have finished"
        );
        let d = p.dom0.stats();
        assert!(
            d.bytes_buffered <= u64::from(cfg.stream_buf),
            "buffer bounded by credit: {}",
            d.bytes_buffered
        );
        assert_eq!(d.stream_violations + p.guest.stats().stream_violations, 0);
        writer.abort();
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_death_resets_everything() {
    tokio::time::timeout(LIMIT, async {
        let p = pair().await;
        let _srv = serve(p.dom0_in);
        let mut apps = Vec::new();
        let mut handles = Vec::new();
        for _ in 0..8 {
            let (mut app, mux_end) = UnixStream::pair().unwrap();
            handles.push(p.guest.open("echo", mux_end).await.unwrap());
            app.write_all(b"ping").await.unwrap();
            let mut b = [0u8; 4];
            app.read_exact(&mut b).await.unwrap();
            apps.push(app);
        }
        assert_eq!(p.guest.stats().streams_open, 8);
        // The dom0 end goes away (as when its process dies, its live byte clears).
        p.dom0.shutdown();
        assert_eq!(p.guest.closed().await, CloseReason::PeerClosed);
        for h in handles {
            assert_eq!(h.done().await, StreamEnd::MuxClosed);
        }
        for mut app in apps {
            let mut b = [0u8; 4];
            // EOF or reset: either way the local peer learns the stream is gone.
            assert!(matches!(app.read(&mut b).await, Ok(0) | Err(_)));
        }
        assert_eq!(p.guest.stats().streams_open, 0);
        let (_a, m) = UnixStream::pair().unwrap();
        assert!(matches!(
            p.guest.open("echo", m).await,
            Err(Error::MuxClosed(CloseReason::PeerClosed))
        ));
        assert!(p.guest.is_closed());
        drop(p.guest);
        drop(p.dom0);
        // Nothing leaked on the host once both ends are gone.
        while p.host.open_ports(0) + p.host.open_ports(1) != 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(p.host.granted_pages(1), 0);
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_channel_before_hello_fails_start() {
    tokio::time::timeout(LIMIT, async {
        let host = HeapHost::new();
        let s = Channel::server(&host.domain(1), 0, ChannelConfig::default()).unwrap();
        let c = Channel::client(&host.domain(0), 1, s.ring_ref(), s.event_port()).unwrap();
        drop(c);
        let r = mux::start(s, MuxConfig::default()).await;
        assert!(matches!(r, Err(Error::PeerClosed)), "{r:?}");
        let bad = MuxConfig {
            stream_buf: 1,
            ..MuxConfig::default()
        };
        let s = Channel::server(&host.domain(1), 0, ChannelConfig::default()).unwrap();
        assert!(matches!(mux::start(s, bad).await, Err(Error::Invalid(_))));
    })
    .await
    .unwrap();
}
