//! The driver task (stub: being implemented).

use std::sync::Arc;

use tokio::sync::{mpsc, watch};

use super::{CloseReason, Cmd, Counters, IncomingRequest, MuxConfig, Side};
use crate::channel::Channel;
use crate::{Error, Result};

#[allow(dead_code)]
pub(super) struct Driver {
    chan: Channel,
    cfg: MuxConfig,
    side: Side,
    counters: Arc<Counters>,
    cmd_rx: mpsc::UnboundedReceiver<Cmd>,
    cmd_weak: mpsc::WeakUnboundedSender<Cmd>,
    inc_tx: mpsc::Sender<IncomingRequest>,
    closed_tx: watch::Sender<Option<CloseReason>>,
}

impl Driver {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        chan: Channel,
        cfg: MuxConfig,
        side: Side,
        counters: Arc<Counters>,
        cmd_rx: mpsc::UnboundedReceiver<Cmd>,
        cmd_weak: mpsc::WeakUnboundedSender<Cmd>,
        inc_tx: mpsc::Sender<IncomingRequest>,
        closed_tx: watch::Sender<Option<CloseReason>>,
    ) -> Result<Self> {
        Ok(Self {
            chan,
            cfg,
            side,
            counters,
            cmd_rx,
            cmd_weak,
            inc_tx,
            closed_tx,
        })
    }

    pub(super) async fn hello(&mut self) -> Result<()> {
        Err(Error::Invalid("mux driver not implemented yet".into()))
    }

    pub(super) async fn run(self) {}
}
