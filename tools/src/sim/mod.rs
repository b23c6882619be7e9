//! `xenvt sim`: the simulated Xen host.
