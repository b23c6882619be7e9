//! The command run when a backend (re)connects, e.g. asking the X server to
//! make its reverse VNC connection again.
//!
//! It runs in its own task with a deadline; its output is logged line by line
//! (bounded), and the daemon never waits for it.

use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;
use tracing::{info, warn};

use crate::config::Hook;

/// Most output lines logged per run; the rest are counted.
pub const MAX_LINES: usize = 20;
/// Longest line logged; longer ones are cut.
pub const MAX_LINE: usize = 512;

/// How a hook run ended.
#[derive(Debug, PartialEq, Eq)]
pub enum HookEnd {
    /// It exited with this code (`None`: killed by a signal).
    Exited(Option<i32>),
    /// It ran past its deadline and was killed.
    TimedOut,
    /// It could not be started.
    NotStarted(String),
}

async fn log_lines(r: impl AsyncRead + Unpin, stream: &'static str) {
    let mut lines = BufReader::new(r).split(b'\n');
    let mut n = 0usize;
    while let Ok(Some(line)) = lines.next_segment().await {
        n += 1;
        if n <= MAX_LINES {
            let cut = &line[..line.len().min(MAX_LINE)];
            info!(stream, "hook: {}", String::from_utf8_lossy(cut));
        }
    }
    if n > MAX_LINES {
        info!(stream, "hook: {} more lines not logged", n - MAX_LINES);
    }
}

/// Runs the hook to completion (or its deadline). Call it from a spawned task.
pub async fn run(h: &Hook) -> HookEnd {
    let mut cmd = Command::new(&h.command[0]);
    cmd.args(&h.command[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            warn!("hook {:?} cannot start: {e}", h.command[0]);
            return HookEnd::NotStarted(e.to_string());
        }
    };
    let out = child.stdout.take();
    let err = child.stderr.take();
    let logs = async {
        let o = async {
            if let Some(o) = out {
                log_lines(o, "stdout").await
            }
        };
        let e = async {
            if let Some(e) = err {
                log_lines(e, "stderr").await
            }
        };
        tokio::join!(o, e);
    };
    let waited = tokio::time::timeout(h.timeout, async {
        let (status, ()) = tokio::join!(child.wait(), logs);
        status
    })
    .await;
    match waited {
        Ok(Ok(status)) => {
            info!("hook {:?} exited: {status}", h.command[0]);
            HookEnd::Exited(status.code())
        }
        Ok(Err(e)) => {
            warn!("hook {:?}: {e}", h.command[0]);
            HookEnd::NotStarted(e.to_string())
        }
        Err(_) => {
            warn!(
                "hook {:?} still running after {:?}: killed",
                h.command[0], h.timeout
            );
            let _ = child.kill().await;
            HookEnd::TimedOut
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn hook(cmd: &[&str], secs: u64) -> Hook {
        Hook {
            command: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: Duration::from_secs(secs),
        }
    }

    #[tokio::test]
    async fn exit_codes_and_missing_programs() {
        assert_eq!(run(&hook(&["true"], 10)).await, HookEnd::Exited(Some(0)));
        assert_eq!(
            run(&hook(&["sh", "-c", "echo out; echo err >&2; exit 3"], 10)).await,
            HookEnd::Exited(Some(3))
        );
        assert!(matches!(
            run(&hook(&["/nonexistent/program"], 10)).await,
            HookEnd::NotStarted(_)
        ));
    }

    #[tokio::test]
    async fn a_hung_hook_is_killed_at_its_deadline() {
        // A child that keeps its stdout open and never exits.
        let h = hook(&["sleep", "1000"], 1);
        assert_eq!(run(&h).await, HookEnd::TimedOut);
    }
}
