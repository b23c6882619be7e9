//! Client of the simulated Xen host. (Placeholder until the simulated host lands.)

use std::path::PathBuf;

use super::{DomId, EventChannel, GrantRef, Pages, Platform};
use crate::{Error, Result};

/// Environment variable naming this domain's device socket on the simulated host.
pub const ENV_DEV: &str = "XENVT_SIM_DEV";

/// The simulated host's grant and event-channel devices.
pub struct SimPlatform {
    _path: PathBuf,
}

impl SimPlatform {
    /// Opens the device socket at `path`.
    pub fn new(path: PathBuf) -> Result<Self> {
        Ok(Self { _path: path })
    }
}

fn todo() -> Error {
    Error::Invalid("simulated platform not implemented yet".into())
}

impl Platform for SimPlatform {
    fn share_pages(&self, _: DomId, _: usize, _: bool) -> Result<Box<dyn Pages>> {
        Err(todo())
    }
    fn map_pages(&self, _: DomId, _: &[GrantRef], _: bool) -> Result<Box<dyn Pages>> {
        Err(todo())
    }
    fn alloc_unbound(&self, _: DomId) -> Result<Box<dyn EventChannel>> {
        Err(todo())
    }
    fn bind_interdomain(&self, _: DomId, _: u32) -> Result<Box<dyn EventChannel>> {
        Err(todo())
    }
}
