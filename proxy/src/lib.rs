//! The console-and-desktop VNC proxy: an RFB server to viewers and an RFB client to
//! upstream desktops, serving many domains from one process.
//!
//! The RFB protocol layer lives in [`rfb`]. A [`domain::Domain`] holds ordered views
//! ([`view`]) and the viewers watching the current one ([`viewer`]); the desktop view is
//! fed by an upstream connection ([`upstream`]); [`daemon`] ties them to listeners.

pub mod config;
pub mod console;
pub mod console_view;
pub mod control;
pub mod daemon;
pub mod domain;
pub mod error;
pub mod metrics;
pub mod region;
pub mod rfb;
pub mod upstream;
pub mod view;
pub mod viewer;
pub mod web;

pub use error::{Error, Result};
