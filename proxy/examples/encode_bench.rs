//! Times `bench_encode_frame` on a 1920x1080 desktop-like frame (flat areas, text-like
//! two-colour blocks and a photo-like gradient with noise).
//! Run: cargo run --release -p xenvt-proxy --example encode_bench

use std::time::Instant;
use xenvt_proxy::rfb::{bench_encode_frame, encode::bench_frame};

fn main() {
    let fb = bench_frame(1920, 1080).expect("frame");
    for _ in 0..3 {
        let t = Instant::now();
        let (zrle, tight) = bench_encode_frame(&fb).expect("encode");
        println!(
            "1920x1080: ZRLE + Tight in {:?} (ZRLE {zrle} bytes, Tight {tight} bytes)",
            t.elapsed()
        );
    }
}
