//! The `xenvt` command's logic: the simulated Xen host, benchmarks and lab tools.

pub mod sim;
