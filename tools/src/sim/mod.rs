//! `xenvt sim`: the simulated Xen host.
//!
//! It lets the real daemons run unchanged on a machine without Xen. A domain is a
//! set of processes that use that domain's two sockets, named by the environment
//! the host hands them:
//! - `XENSTORED_PATH`: a xenstored speaking the real wire protocol, which sees the
//!   connection as that domain;
//! - `XENVT_SIM_DEV`: the grant and event-channel devices, modelled on Linux's
//!   gntalloc, gntdev and evtchn.

use std::path::PathBuf;

pub mod console;
pub mod control;
pub mod devices;
pub mod host;
pub mod xenstored;

/// The control socket's name inside the host directory.
pub const CONTROL_SOCKET: &str = "control.sock";

/// Errors of the simulated host and its clients.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// No host answers at this path.
    #[error("cannot reach the simulated host at {0}: {1} (is `xenvt sim run` running?)")]
    Connect(PathBuf, #[source] std::io::Error),
    /// Another host already runs in this directory.
    #[error("another simulated host already runs in {0}")]
    Busy(PathBuf),
    /// The host refused a request.
    #[error("{0}")]
    Refused(String),
    /// A malformed message on the control socket.
    #[error("control protocol: {0}")]
    Protocol(String),
    /// I/O.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// The host directory to use when none is given: `$XENVT_SIM_DIR`, else
/// `/run/xenvt-sim` for root, else `$XDG_RUNTIME_DIR/xenvt-sim`, else a per-user
/// directory under the system temporary directory.
pub fn default_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("XENVT_SIM_DIR") {
        return d.into();
    }
    if nix::unistd::geteuid().is_root() {
        return "/run/xenvt-sim".into();
    }
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR") {
        return PathBuf::from(d).join("xenvt-sim");
    }
    std::env::temp_dir().join(format!("xenvt-sim-{}", nix::unistd::geteuid()))
}

/// What a host's counters (the `stats` reply) show as still held: grants,
/// mappings, event-channel ports and device connections, per domain. Empty when
/// every process that used the devices has let go of everything.
pub fn leaks(stats: &serde_json::Value) -> Vec<String> {
    let devices: devices::DevicesStats =
        match stats.get("devices").cloned().map(serde_json::from_value) {
            Some(Ok(d)) => d,
            _ => return vec!["stats have no readable device counters".into()],
        };
    devices
        .domains
        .iter()
        .filter(|(_, d)| {
            d.grants
                + d.pages_granted
                + d.pages_mapped
                + d.pages_mapped_by_others
                + d.ports
                + d.connections
                > 0
        })
        .map(|(id, d)| format!("domain {id}: {d:?}"))
        .collect()
}
