//! A hostile dom0 peer speaking raw frames to a guest multiplexer: garbage ops,
//! lying lengths, credit overruns and lies, REQUEST floods, a version mismatch.
//! Framing errors must close the channel with a typed reason; stream-level errors
//! must reset only that stream; nothing may panic or hang.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use xenvt_ring::mux::frame::{Header, Hello, Op, HDR_LEN, SHUT_SEND, VERSION};
use xenvt_ring::mux::{self, CloseReason, Incoming, MuxConfig, MuxHandle, StreamEnd};
use xenvt_ring::platform::heap::HeapHost;
use xenvt_ring::{Channel, ChannelConfig, ChannelStream, Error};

const LIMIT: Duration = Duration::from_secs(30);

/// The raw side of a channel whose other end runs a guest multiplexer.
struct Raw {
    io: ChannelStream,
}

impl Raw {
    async fn frame(&mut self, h: Header, payload: &[u8]) {
        let mut b = h.encode().to_vec();
        b.extend_from_slice(payload);
        self.io.write_all(&b).await.unwrap();
    }

    async fn bytes(&mut self, b: &[u8]) {
        self.io.write_all(b).await.unwrap();
    }

    /// The next frame, or None at end of channel.
    async fn next(&mut self) -> Option<(Header, Vec<u8>)> {
        let mut hb = [0u8; HDR_LEN];
        self.io.read_exact(&mut hb).await.ok()?;
        let h = Header::parse(&hb).expect("the multiplexer writes valid frames");
        let mut p = vec![0u8; h.len as usize];
        self.io.read_exact(&mut p).await.unwrap();
        Some((h, p))
    }

    /// The next frame that is not a CREDIT_UPDATE.
    async fn next_ctrl(&mut self) -> Option<(Header, Vec<u8>)> {
        loop {
            let f = self.next().await?;
            if f.0.op != Op::CreditUpdate {
                return Some(f);
            }
        }
    }
}

fn hello_frame(version: u16) -> (Header, Vec<u8>) {
    let mut p = Hello {
        version,
        max_streams: 8,
    }
    .encode()
    .to_vec();
    if version != VERSION {
        p.truncate(8);
    }
    (Header::new(Op::Hello, 0, 0, p.len() as u32), p)
}

fn cred(op: Op, id: u32, len: u32, buf_alloc: u32, fwd_cnt: u32) -> Header {
    Header {
        buf_alloc,
        fwd_cnt,
        ..Header::new(op, 0, id, len)
    }
}

/// A guest multiplexer and a raw dom0 peer that has done the HELLO exchange.
async fn setup(cfg: MuxConfig) -> (HeapHost, MuxHandle, Incoming, Raw) {
    let host = HeapHost::new();
    let s = Channel::server(&host.domain(1), 0, ChannelConfig::default()).unwrap();
    let c = Channel::client(&host.domain(0), 1, s.ring_ref(), s.event_port()).unwrap();
    let mut raw = Raw {
        io: ChannelStream::new(c).unwrap(),
    };
    let guest = tokio::spawn(mux::start(s, cfg));
    let (h, p) = hello_frame(VERSION);
    raw.frame(h, &p).await;
    let (gh, gp) = raw.next().await.unwrap();
    assert_eq!(gh.op, Op::Hello);
    assert_eq!(Hello::parse(&gp).unwrap().version, VERSION);
    let (handle, inc) = guest.await.unwrap().unwrap();
    (host, handle, inc, raw)
}

async fn expect_protocol_close(bytes: &[u8], what: &str) {
    let (_host, g, _inc, mut raw) = setup(MuxConfig::default()).await;
    raw.bytes(bytes).await;
    match g.closed().await {
        CloseReason::Protocol(m) => assert!(m.contains(what), "{m:?} should mention {what:?}"),
        other => panic!("expected a protocol close, got {other:?}"),
    }
    // The guest closed its end: the raw peer sees the end of the channel.
    while raw.next().await.is_some() {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn framing_errors_close_the_channel() {
    tokio::time::timeout(LIMIT, async {
        let mut garbage = Header::new(Op::Rst, 0, 2, 0).encode();
        garbage[0] = 0xEE;
        expect_protocol_close(&garbage, "unknown op").await;

        // Claims 1000 payload bytes; only 3 follow.
        let mut lie = Header::new(Op::Rw, 0, 2, 1000).encode().to_vec();
        lie.extend_from_slice(b"abc");
        expect_protocol_close(&lie, "ring holds").await;

        // Half a header.
        expect_protocol_close(&[6, 0, 0], "ring holds").await;

        let mut big = Header::new(Op::Rw, 0, 2, u32::MAX).encode();
        big[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        expect_protocol_close(&big, "length").await;

        let mut req = Header::new(Op::Request, 0, 3, 3).encode().to_vec();
        req.extend_from_slice(b"vnc");
        expect_protocol_close(&req, "parity").await;

        let mut req = Header::new(Op::Request, 0, 2, 4).encode().to_vec();
        req.extend_from_slice(b"v\nnc");
        expect_protocol_close(&req, "printable").await;

        let (h, p) = hello_frame(VERSION);
        let mut again = h.encode().to_vec();
        again.extend_from_slice(&p);
        expect_protocol_close(&again, "HELLO").await;
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_mismatch_fails_start() {
    tokio::time::timeout(LIMIT, async {
        let host = HeapHost::new();
        let s = Channel::server(&host.domain(1), 0, ChannelConfig::default()).unwrap();
        let c = Channel::client(&host.domain(0), 1, s.ring_ref(), s.event_port()).unwrap();
        let mut raw = Raw {
            io: ChannelStream::new(c).unwrap(),
        };
        let (h, p) = hello_frame(VERSION + 1);
        raw.frame(h, &p).await;
        match mux::start(s, MuxConfig::default()).await {
            Err(Error::Protocol(m)) => assert!(m.contains("version"), "{m}"),
            other => panic!("expected a version error, got {:?}", other.map(|_| ())),
        }
        // First frame not a HELLO.
        let s = Channel::server(&host.domain(1), 0, ChannelConfig::default()).unwrap();
        let c = Channel::client(&host.domain(0), 1, s.ring_ref(), s.event_port()).unwrap();
        let mut raw = Raw {
            io: ChannelStream::new(c).unwrap(),
        };
        raw.frame(Header::new(Op::Rst, 0, 2, 0), &[]).await;
        assert!(matches!(
            mux::start(s, MuxConfig::default()).await,
            Err(Error::Protocol(_))
        ));
    })
    .await
    .unwrap();
}

/// Opens stream 2 from the raw side and has the guest accept it.
async fn raw_open(
    raw: &mut Raw,
    inc: &mut Incoming,
    buf_alloc: u32,
) -> (UnixStream, mux::StreamHandle) {
    raw.frame(cred(Op::Request, 2, 3, buf_alloc, 0), b"svc")
        .await;
    let req = inc.next().await.unwrap();
    assert_eq!((req.service(), req.id()), ("svc", 2));
    let (app, m) = UnixStream::pair().unwrap();
    let st = req.accept(m);
    let (h, _) = raw.next_ctrl().await.unwrap();
    assert_eq!((h.op, h.stream), (Op::Response, 2));
    (app, st)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credit_overrun_resets_only_that_stream() {
    tokio::time::timeout(LIMIT, async {
        let cfg = MuxConfig {
            stream_buf: 4096,
            ..MuxConfig::default()
        };
        let (_host, g, mut inc, mut raw) = setup(cfg).await;
        let (_app, st) = raw_open(&mut raw, &mut inc, 1 << 20).await;
        // The guest granted 4096 bytes; one frame of 5000 overruns it.
        raw.frame(cred(Op::Rw, 2, 5000, 1 << 20, 0), &[1; 5000])
            .await;
        let (h, _) = raw.next_ctrl().await.unwrap();
        assert_eq!((h.op, h.stream), (Op::Rst, 2));
        assert!(matches!(st.done().await, StreamEnd::ResetLocal(m) if m.contains("credit")));
        assert_eq!(g.stats().stream_violations, 1);
        // Late frames for the dead stream are ignored; the channel lives on.
        raw.frame(cred(Op::Rw, 2, 10, 1 << 20, 0), &[3; 10]).await;
        let (mut app, st) = {
            raw.frame(cred(Op::Request, 4, 3, 1 << 20, 0), b"svc").await;
            let req = inc.next().await.unwrap();
            let (app, m) = UnixStream::pair().unwrap();
            (app, req.accept(m))
        };
        let (h, _) = raw.next_ctrl().await.unwrap();
        assert_eq!((h.op, h.stream), (Op::Response, 4));
        raw.frame(cred(Op::Rw, 4, 5, 1 << 20, 0), b"hello").await;
        raw.frame(Header::new(Op::Shutdown, SHUT_SEND, 4, 0), &[])
            .await;
        let mut got = Vec::new();
        app.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hello");
        app.write_all(b"bye").await.unwrap();
        app.shutdown().await.unwrap();
        let (h, p) = raw.next_ctrl().await.unwrap();
        assert_eq!((h.op, h.stream, p.as_slice()), (Op::Rw, 4, &b"bye"[..]));
        let (h, _) = raw.next_ctrl().await.unwrap();
        assert_eq!((h.op, h.stream, h.flags), (Op::Shutdown, 4, SHUT_SEND));
        assert_eq!(st.done().await, StreamEnd::Closed { peer_first: true });
        assert!(!g.is_closed());
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credit_lie_resets_the_stream() {
    tokio::time::timeout(LIMIT, async {
        let (_host, g, mut inc, mut raw) = setup(MuxConfig::default()).await;
        let (_app, st) = raw_open(&mut raw, &mut inc, 1 << 20).await;
        // Claims to have forwarded bytes the guest never sent.
        raw.frame(cred(Op::CreditUpdate, 2, 0, 1 << 20, 5000), &[])
            .await;
        let (h, _) = raw.next_ctrl().await.unwrap();
        assert_eq!((h.op, h.stream), (Op::Rst, 2));
        assert!(matches!(st.done().await, StreamEnd::ResetLocal(_)));
        assert!(!g.is_closed());
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sender_respects_peer_credit() {
    tokio::time::timeout(LIMIT, async {
        let (_host, g, mut inc, mut raw) = setup(MuxConfig::default()).await;
        // The raw peer grants 1000 bytes of credit only.
        let (mut app, _st) = raw_open(&mut raw, &mut inc, 1000).await;
        app.write_all(&[7u8; 5000]).await.unwrap();
        let mut got = 0usize;
        while got < 1000 {
            let (h, p) = raw.next_ctrl().await.unwrap();
            assert_eq!(h.op, Op::Rw);
            got += p.len();
        }
        assert_eq!(got, 1000, "not one byte beyond the credit");
        while g.stats().credit_stalls == 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        // More credit: the rest flows.
        raw.frame(cred(Op::CreditUpdate, 2, 0, 1000, 1000), &[])
            .await;
        raw.frame(cred(Op::CreditUpdate, 2, 0, 5000, 1000), &[])
            .await;
        while got < 5000 {
            let (h, p) = raw.next_ctrl().await.unwrap();
            assert_eq!(h.op, Op::Rw);
            got += p.len();
        }
        assert_eq!(got, 5000);
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_flood_is_refused_and_bounded() {
    tokio::time::timeout(LIMIT, async {
        let cfg = MuxConfig {
            max_streams: 8,
            ..MuxConfig::default()
        };
        let (_host, g, _inc, mut raw) = setup(cfg).await;
        // Nobody accepts; 8 wait in the queue, the rest are refused.
        for i in 0..50u32 {
            raw.frame(cred(Op::Request, 2 + 2 * i, 3, 4096, 0), b"svc")
                .await;
        }
        let mut rst = 0;
        while rst < 42 {
            let (h, _) = raw.next_ctrl().await.unwrap();
            assert_eq!(h.op, Op::Rst);
            assert!(h.stream >= 18, "the first 8 are pending, not refused");
            rst += 1;
        }
        let s = g.stats();
        assert_eq!((s.refused, s.streams_open), (42, 8));
        assert!(!g.is_closed());
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flood_without_draining_closes_the_channel() {
    tokio::time::timeout(LIMIT, async {
        let cfg = MuxConfig {
            max_streams: 1,
            ..MuxConfig::default()
        };
        let host = HeapHost::new();
        // A tiny guest->dom0 ring the raw peer never reads.
        let chan = ChannelConfig {
            left_order: 17,
            right_order: 10,
        };
        let s = Channel::server(&host.domain(1), 0, chan).unwrap();
        let c = Channel::client(&host.domain(0), 1, s.ring_ref(), s.event_port()).unwrap();
        let mut raw = Raw {
            io: ChannelStream::new(c).unwrap(),
        };
        let guest = tokio::spawn(mux::start(s, cfg));
        let (h, p) = hello_frame(VERSION);
        raw.frame(h, &p).await;
        let (g, _inc) = guest.await.unwrap().unwrap();
        let mut burst = Vec::new();
        for i in 0..2000u32 {
            let mut f = cred(Op::Request, 2 + 2 * i, 3, 4096, 0).encode().to_vec();
            f.extend_from_slice(b"svc");
            burst.extend_from_slice(&f);
        }
        // The guest must not buffer answers without bound.
        let writer = tokio::spawn(async move {
            // Fails once the guest gives up on the channel.
            let _ = raw.io.write_all(&burst).await;
            raw
        });
        match g.closed().await {
            CloseReason::Protocol(m) => assert!(m.contains("drain"), "{m}"),
            other => panic!("{other:?}"),
        }
        drop(writer.await);
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abrupt_peer_death_mid_transfer() {
    tokio::time::timeout(LIMIT, async {
        let (host, g, mut inc, mut raw) = setup(MuxConfig::default()).await;
        let (mut app, st) = raw_open(&mut raw, &mut inc, 1 << 20).await;
        raw.frame(cred(Op::Rw, 2, 4, 1 << 20, 0), b"part").await;
        let mut b = [0u8; 4];
        app.read_exact(&mut b).await.unwrap();
        // The guest keeps sending into a ring nobody reads any more.
        let writer = tokio::spawn(async move {
            let _ = app.write_all(&vec![9u8; 8 << 20]).await;
            app
        });
        // The dom0 process dies: its mapping goes, the live byte clears, we get a kick.
        drop(raw);
        assert_eq!(g.closed().await, CloseReason::PeerClosed);
        assert_eq!(st.done().await, StreamEnd::MuxClosed);
        // The local writer is released (its socket was closed under it).
        let mut app = writer.await.unwrap();
        let mut rest = Vec::new();
        let _ = app.read_to_end(&mut rest).await;
        drop(g);
        while host.open_ports(1) != 0 || host.granted_pages(1) != 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
}
