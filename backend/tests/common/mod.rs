//! What the backend's multi-process tests share: a bound on each test and log
//! capture for the current thread.

// Each test binary uses its own subset.
#![allow(dead_code)]

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Upper bound on a test: a hang fails instead of blocking CI.
pub const LIMIT: Duration = Duration::from_secs(60);

/// Log output collected in memory.
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// Everything logged so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// Sends this thread's log lines at `filter` here until the guard drops. The
    /// tests run on a current-thread runtime, so every task logs under it.
    pub fn capture(&self, filter: &str) -> tracing::subscriber::DefaultGuard {
        let w = self.clone();
        let sub = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .with_writer(move || w.clone())
            .finish();
        tracing::subscriber::set_default(sub)
    }
}
