//! Real Xen devices. (Placeholder until the Xen-device work lands.)

use super::{DomId, EventChannel, GrantRef, Pages, Platform};
use crate::{Error, Result};

/// The gntalloc, gntdev and evtchn devices.
pub struct XenPlatform {}

impl XenPlatform {
    /// Opens the devices.
    pub fn open() -> Result<Self> {
        Ok(Self {})
    }
}

fn todo() -> Error {
    Error::Invalid("Xen platform not implemented yet".into())
}

impl Platform for XenPlatform {
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
