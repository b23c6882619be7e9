//! `xenvt bench tunnel`: the whole transport (TCP client -> agent -> channel ->
//! backend -> unix service) on the simulated host, against loopback TCP and a
//! chain of plain relays of the same shape; plus the pieces the tunnel tests
//! share ([`rig`]) and a hostile agent ([`hostile`]).

pub mod hostile;
pub mod rig;
