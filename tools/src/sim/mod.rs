//! `xenvt sim`: the simulated Xen host.
pub mod xenstored;
