//! Rough throughput check of one multiplexed stream over the heap platform
//! (unix socket -> mux -> ring -> mux -> unix socket), against the same bytes over
//! one plain unix socket pair. Not a timed assert: it prints MB/s and the ratio, so
//! a regression in the zero-copy paths shows up as a drop.
//! It also prints the 1-byte round trip through an echo at the far end, both ways.
//! `cargo run -p xenvt-ring --release --example mux_throughput [MiB] [ring order] [idle streams]`
//! (idle streams are opened first and stay open, to show their cost to the busy one)

use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use xenvt_ring::mux::{self, MuxConfig};
use xenvt_ring::platform::heap::HeapHost;
use xenvt_ring::{Channel, ChannelConfig};

const CHUNK: usize = 256 << 10;

async fn pump(mut src: UnixStream, mut dst: UnixStream, total: usize) -> f64 {
    let buf = vec![0x5au8; CHUNK];
    let t = Instant::now();
    let writer = tokio::spawn(async move {
        let mut left = total;
        while left > 0 {
            let n = left.min(CHUNK);
            src.write_all(&buf[..n]).await.unwrap();
            left -= n;
        }
        src.shutdown().await.unwrap();
        src
    });
    let mut got = 0usize;
    let mut b = vec![0u8; CHUNK];
    loop {
        let n = dst.read(&mut b).await.unwrap();
        if n == 0 {
            break;
        }
        got += n;
    }
    assert_eq!(got, total);
    drop(writer.await.unwrap());
    total as f64 / t.elapsed().as_secs_f64() / 1e6
}

/// Echoes everything back until EOF.
fn echo(mut s: UnixStream) {
    tokio::spawn(async move {
        let (mut r, mut w) = s.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
    });
}

/// Mean 1-byte round trip in microseconds.
async fn rtt(mut s: UnixStream) -> f64 {
    const N: u32 = 20_000;
    let mut b = [0u8; 1];
    let t = Instant::now();
    for _ in 0..N {
        s.write_all(&b).await.unwrap();
        s.read_exact(&mut b).await.unwrap();
    }
    t.elapsed().as_secs_f64() * 1e6 / f64::from(N)
}

fn main() {
    let mib: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1024);
    let total = mib << 20;
    let order: u8 = std::env::args()
        .nth(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or(ChannelConfig::default().left_order);
    let chan = ChannelConfig {
        left_order: order,
        right_order: order,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (a, b) = UnixStream::pair().unwrap();
        let plain = pump(a, b, total).await;
        let (a, b) = UnixStream::pair().unwrap();
        echo(b);
        let plain_rtt = rtt(a).await;

        let host = HeapHost::new();
        let s = Channel::server(&host.domain(1), 0, chan).unwrap();
        let c = Channel::client(&host.domain(0), 1, s.ring_ref(), s.event_port()).unwrap();
        let cfg = MuxConfig::default();
        let (g, d) = tokio::join!(mux::start(s, cfg), mux::start(c, cfg));
        let (guest, _gi) = g.unwrap();
        let (_dom0, mut di) = d.unwrap();
        let idle: usize = std::env::args()
            .nth(3)
            .and_then(|a| a.parse().ok())
            .unwrap_or(0);
        let mut keep = Vec::new();
        for _ in 0..idle {
            let (a, a_mux) = UnixStream::pair().unwrap();
            let (b, b_mux) = UnixStream::pair().unwrap();
            let acc = async { di.next().await.unwrap().accept(b_mux) };
            let (st, _) = tokio::join!(guest.open("idle", a_mux), acc);
            keep.push((a, b, st.unwrap()));
        }
        let (src, src_mux) = UnixStream::pair().unwrap();
        let (dst, dst_mux) = UnixStream::pair().unwrap();
        let acc = async {
            let req = di.next().await.unwrap();
            req.accept(dst_mux)
        };
        let (st, _acc) = tokio::join!(guest.open("bench", src_mux), acc);
        let _st = st.unwrap();
        let tunnel = pump(src, dst, total).await;
        let (a, a_mux) = UnixStream::pair().unwrap();
        let (b, b_mux) = UnixStream::pair().unwrap();
        let acc = async { di.next().await.unwrap().accept(b_mux) };
        let (st2, _acc2) = tokio::join!(guest.open("echo", a_mux), acc);
        let _st2 = st2.unwrap();
        echo(b);
        let mux_rtt = rtt(a).await;
        println!(
            "1-byte round trip: plain unix pair {plain_rtt:.1} us; through the mux {mux_rtt:.1} us"
        );
        println!("ratio mux_rtt_vs_unix_pair {:.3}", mux_rtt / plain_rtt);
        let s = guest.stats();
        println!(
            "{mib} MiB, ring order {order}, {idle} idle streams: plain unix pair {plain:.0} MB/s; one mux stream {tunnel:.0} MB/s \
             ({:.2}x); credit stalls {}",
            tunnel / plain,
            s.credit_stalls
        );
        println!("ratio mux_stream_vs_unix_pair {:.3}", tunnel / plain);
    });
}
