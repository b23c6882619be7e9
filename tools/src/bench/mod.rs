//! `xenvt bench`: benchmarks that print ratios measured in the same run.
//!
//! Every comparison prints one line `ratio NAME VALUE`, and the absolute figures
//! beside it, so that a run on a different machine still says something: only the
//! ratios are goals.

pub mod fps;
pub mod peer;
pub mod proxy;
pub mod ring;
pub mod tunnel;

use serde::{Deserialize, Serialize};

/// What a benchmark peer process reports on its stdout, as one JSON line.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct PeerReport {
    /// Bytes moved.
    pub bytes: u64,
    /// Seconds from the first byte to the receiver's acknowledgement.
    pub secs: f64,
    /// Round trips done (latency runs).
    pub round_trips: u64,
    /// Median round trip in microseconds (latency runs).
    pub rtt_median_us: f64,
    /// sha256 of the received stream (sinks).
    pub sha256: String,
}

/// Prints a ratio line, the one machine-readable result of a comparison.
pub fn ratio(name: &str, value: f64) {
    println!("ratio {name} {value:.3}");
}

/// Bytes per second as a human figure.
pub fn rate(bytes: u64, secs: f64) -> String {
    let r = bytes as f64 / secs.max(1e-9);
    if r >= 1e9 {
        format!("{:.2} GB/s", r / 1e9)
    } else {
        format!("{:.1} MB/s", r / 1e6)
    }
}

/// The median of some samples (sorted in place).
pub fn median(samples: &mut [f64]) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}
