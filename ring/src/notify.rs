//! vchan's notification handshake.
//!
//! Each side has a notify byte the *peer* consults. Before sleeping, a side ORs a
//! request bit into that byte ([`NOTIFY_WRITE`](crate::layout::NOTIFY_WRITE): "wake
//! me when you produce", [`NOTIFY_READ`](crate::layout::NOTIFY_READ): "wake me when
//! you consume") and then looks at the ring again. After producing or consuming, a
//! side clears the peer's request bit with an atomic fetch-and and kicks the event
//! channel only if the bit was set: one kick per operation, and none while the peer
//! is busy.
//!
//! Why the re-check and the fences: the sleeper stores its bit then loads the index;
//! the worker stores the index then loads (fetch-and) the bit. Without a full fence
//! between each store and load, both can read the old values (the sleeper sees no
//! data, the worker sees no request) and the wakeup is lost. `fence(SeqCst)` on both
//! sides (vchan's `xen_mb()`) forbids that outcome; `tests/loom.rs` checks it.

use std::sync::atomic::Ordering;

use crate::ring::SharedMem;
use crate::Result;

/// One side's view of the two notify bytes.
#[derive(Debug)]
pub struct Notifier<M> {
    ctrl: M,
    /// The byte where we post requests (the one the peer consults).
    mine: usize,
    /// The byte where the peer posts requests (the one we clear).
    theirs: usize,
}

impl<M: SharedMem> Notifier<M> {
    /// `mine` is where this side posts its requests, `theirs` where the peer posts.
    pub fn new(ctrl: M, mine: usize, theirs: usize) -> Self {
        Self { ctrl, mine, theirs }
    }

    /// Asks the peer to kick us after its next operation of kind `bit`. The caller
    /// must look at the ring again afterwards before sleeping.
    pub fn request(&self, bit: u8) -> Result<()> {
        self.ctrl.fetch_or_u8(self.mine, bit, Ordering::AcqRel)?;
        // The request is visible before we re-read the peer's index.
        self.ctrl.fence(Ordering::SeqCst);
        Ok(())
    }

    /// After publishing an index: whether the peer asked for a kick on `bit`
    /// (clearing the request). The caller kicks the event channel when true.
    pub fn take_request(&self, bit: u8) -> Result<bool> {
        // Our index store is visible before we look at the peer's request.
        self.ctrl.fence(Ordering::SeqCst);
        let prev = self
            .ctrl
            .fetch_and_u8(self.theirs, !bit, Ordering::AcqRel)?;
        Ok(prev & bit != 0)
    }
}
