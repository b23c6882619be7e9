//! The frame parser and the multiplexer's receive path against arbitrary bytes.
//!
//! First byte even: the bytes go to the pure codec (`frame::parse_all`), and every
//! frame it accepts must re-encode to the same header. Odd: a guest multiplexer
//! receives the bytes as frames from a hostile dom0 peer (after a valid HELLO),
//! accepting every stream it is offered; it must finish with a typed close reason,
//! never panic or hang.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use xenvt_ring::mux::frame::{self, Header, Hello, Op, HDR_LEN, VERSION};
use xenvt_ring::mux::{self, MuxConfig};
use xenvt_ring::platform::heap::HeapHost;
use xenvt_ring::{Channel, ChannelConfig, ChannelStream};

fn codec(data: &[u8]) {
    if let Ok(frames) = frame::parse_all(data) {
        let mut total = 0;
        for (h, p) in frames {
            assert_eq!(p.len(), h.len as usize);
            let mut b = [0u8; HDR_LEN];
            b.copy_from_slice(&data[total..total + HDR_LEN]);
            assert_eq!(h.encode(), b);
            total += h.frame_len();
        }
        assert_eq!(total, data.len());
    }
}

fn mux_rx(data: &[u8]) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let host = HeapHost::new();
        let s = Channel::server(&host.domain(1), 0, ChannelConfig::default()).unwrap();
        let c = Channel::client(&host.domain(0), 1, s.ring_ref(), s.event_port()).unwrap();
        let mut raw = ChannelStream::new(c).unwrap();
        let hello = Hello {
            version: VERSION,
            max_streams: 4,
        }
        .encode();
        let mut first = Header::new(Op::Hello, 0, 0, hello.len() as u32)
            .encode()
            .to_vec();
        first.extend_from_slice(&hello);
        raw.write_all(&first).await.unwrap();
        let cfg = MuxConfig {
            max_streams: 4,
            stream_buf: 4096,
            max_frame: 1024,
        };
        let (g, mut inc) = mux::start(s, cfg).await.unwrap();
        let acceptor = tokio::spawn(async move {
            let mut apps = Vec::new();
            while let Some(req) = inc.next().await {
                let (mut app, m) = tokio::net::UnixStream::pair().unwrap();
                req.accept(m);
                let _ = app.write_all(b"x").await;
                apps.push(tokio::spawn(async move {
                    let mut b = [0u8; 4096];
                    while matches!(app.read(&mut b).await, Ok(n) if n > 0) {}
                }));
            }
            apps
        });
        let _ = raw.write_all(data).await;
        // Drain what the guest sends so it never waits on us, then hang up.
        let mut b = [0u8; 4096];
        let _ = tokio::time::timeout(std::time::Duration::from_millis(2), async {
            while matches!(raw.read(&mut b).await, Ok(n) if n > 0) {}
        })
        .await;
        drop(raw);
        let _ = g.closed().await;
        for a in acceptor.await.unwrap() {
            a.abort();
        }
    });
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        codec(rest);
    } else {
        // What fits in the default ring.
        mux_rx(&rest[..rest.len().min(100_000)]);
    }
});
