//! The `xenvt` command's logic: the simulated Xen host, the smoke run, the demo, benchmarks.

pub mod bench;
pub mod chan;
pub mod demo;
pub mod harness;
pub mod pattern;
pub mod screen;
pub mod sim;
pub mod smoke;
pub mod soak;
pub mod status;
