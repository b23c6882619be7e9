//! The dom0 backend: maps each guest's channel and delivers its streams to dom0 services.
//!
//! Not implemented yet: this crate is a placeholder so the workspace has its final
//! shape. The binary refuses to run rather than pretend to work.

/// Why the binary cannot run yet.
pub const NOT_YET: &str = "xenvt-backend is not implemented yet";
