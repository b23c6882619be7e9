//! Rough in-process throughput check: two threads move 64 KiB writes through a
//! channel on the heap platform, compared with a single-thread memcpy of the same
//! total. `cargo run -p xenvt-ring --release --example throughput`
//! (The two-process benchmark lives in `xenvt bench`.)

use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use xenvt_ring::platform::heap::HeapHost;
use xenvt_ring::{Channel, ChannelConfig, ChannelStream};

const CHUNK: usize = 64 << 10;
const TOTAL: usize = 4 << 30;

fn main() {
    let order: u8 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(ChannelConfig::default().left_order);
    let src = vec![7u8; CHUNK];
    let mut dst = vec![0u8; CHUNK];
    let t = Instant::now();
    for _ in 0..TOTAL / CHUNK {
        dst.copy_from_slice(std::hint::black_box(&src));
        std::hint::black_box(&mut dst);
    }
    let memcpy = TOTAL as f64 / t.elapsed().as_secs_f64();
    // Same copies, but through 256 MiB buffers: out of cache, like bulk data.
    let big_src = vec![7u8; 256 << 20];
    let mut big_dst = vec![0u8; 256 << 20];
    let t = Instant::now();
    for i in 0..TOTAL / CHUNK {
        let o = (i * CHUNK) % big_src.len();
        big_dst[o..o + CHUNK].copy_from_slice(std::hint::black_box(&big_src[o..o + CHUNK]));
    }
    std::hint::black_box(&mut big_dst);
    let memcpy_big = TOTAL as f64 / t.elapsed().as_secs_f64();

    let host = HeapHost::new();
    let cfg = ChannelConfig {
        left_order: order,
        right_order: order,
    };
    let s = Channel::server(&host.domain(1), 0, cfg).unwrap();
    let c = Channel::client(&host.domain(0), 1, s.ring_ref(), s.event_port()).unwrap();
    let writer = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut c = ChannelStream::new(c).unwrap();
            for _ in 0..TOTAL / CHUNK {
                c.write_all(&src).await.unwrap();
            }
            c
        })
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let t = Instant::now();
    rt.block_on(async move {
        let mut s = ChannelStream::new(s).unwrap();
        let mut left = TOTAL;
        while left > 0 {
            let n = s.read(&mut dst[..CHUNK.min(left)]).await.unwrap();
            assert!(n > 0);
            left -= n;
        }
    });
    let ring = TOTAL as f64 / t.elapsed().as_secs_f64();
    drop(writer.join().unwrap());
    println!(
        "order {order}: ring {:.2} GB/s; memcpy hot 64 KiB {:.2} GB/s ({:.0}%), \
         memcpy 256 MiB {:.2} GB/s ({:.0}%)",
        ring / 1e9,
        memcpy / 1e9,
        100.0 * ring / memcpy,
        memcpy_big / 1e9,
        100.0 * ring / memcpy_big
    );
}
