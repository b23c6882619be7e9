//! `xenvt-ring`: a shared-memory byte channel between two Xen domains.
//!
//! The control page is byte-compatible with libxenvchan, so a libxenvchan peer can
//! map our rings and we can map theirs. Everything the peer can write is treated as
//! hostile: indices are read once, validated, then used; a violation is a typed
//! error that closes the channel.
//!
//! Platform code (real Xen devices, the simulated host, an in-process heap) sits
//! behind the traits in [`platform`]; the ring logic never names a platform.

pub mod channel;
pub mod config;
pub mod control;
pub mod daemon;
pub mod error;
pub mod fdio;
pub mod layout;
pub mod mux;
pub mod notify;
pub mod platform;
pub mod proxyv2;
pub mod ratelimit;
pub mod ring;
pub mod shm;
pub mod signal;
pub mod spin;
pub mod stream;
pub mod xenstore;

pub use channel::{Channel, ChannelConfig, PeerState, Role};
pub use error::{Error, Result};
pub use platform::{DomId, EventChannel, GrantRef, Pages, Platform};
pub use stream::{ChannelReader, ChannelStream, ChannelWriter};
