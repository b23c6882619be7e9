//! Shutdown on SIGTERM or SIGINT.
//!
//! The handlers are installed when [`Shutdown::register`] returns, not when the
//! future is first polled. A daemon registers before it prints its ready line, so a
//! supervisor (or a test) that signals it right after "ready" gets a clean stop
//! instead of the default action, death by the signal.

use std::io;

use tokio::signal::unix::{signal, Signal, SignalKind};

/// SIGTERM and SIGINT, both already registered.
pub struct Shutdown {
    term: Signal,
    int: Signal,
}

impl Shutdown {
    /// Installs the handlers. Must run inside a tokio runtime.
    pub fn register() -> io::Result<Self> {
        Ok(Shutdown {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Waits for either signal, including one delivered since [`Shutdown::register`].
    pub async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }

    /// [`Shutdown::recv`] as an owned future, for `run(shutdown)` style APIs.
    pub async fn wait(mut self) {
        let which = self.recv().await;
        tracing::info!("{which}: shutting down");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The race this module exists for: the signal lands after registration and
    /// before anyone polls. The process must survive it and the wait must finish.
    #[tokio::test]
    async fn a_signal_before_the_first_poll_is_kept() {
        let s = Shutdown::register().unwrap();
        nix::sys::signal::raise(nix::sys::signal::Signal::SIGTERM).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(30), s.wait())
            .await
            .expect("the pending SIGTERM ends the wait");
    }
}
