//! Starting a simulated host and processes inside its domains, for the smoke run,
//! the benchmarks and the multi-process tests.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::sim::control::{Client, DomainInfo, Reply, Request};
use crate::sim::SimError;

/// A `xenvt sim run` child process in a private temporary directory. Dropping it
/// kills the host.
pub struct SimHost {
    dir: tempfile::TempDir,
    child: Child,
    exe: PathBuf,
}

impl SimHost {
    /// Starts a host with the `xenvt` binary `exe` and waits until it is ready (it
    /// prints a `ready` line once its sockets are bound).
    pub async fn start(exe: &Path, extra_args: &[&str]) -> Result<Self, SimError> {
        Self::start_with(exe, extra_args, false).await
    }

    /// As [`SimHost::start`]; with `own_group` the host gets a process group of its
    /// own, so a ctrl-c on the terminal reaches only the caller, which then stops
    /// the host in its own time.
    pub async fn start_with(
        exe: &Path,
        extra_args: &[&str],
        own_group: bool,
    ) -> Result<Self, SimError> {
        let dir = tempfile::Builder::new().prefix("xenvt-sim-").tempdir()?;
        let mut cmd = Command::new(exe);
        if own_group {
            cmd.process_group(0);
        }
        let mut child = cmd
            .arg("sim")
            .arg("run")
            .arg("--dir")
            .arg(dir.path().join("host"))
            .args(extra_args)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| SimError::Protocol("no stdout".into()))?;
        let mut lines = BufReader::new(stdout).lines();
        match lines.next_line().await? {
            Some(l) if l.starts_with("ready") => {}
            other => {
                return Err(SimError::Protocol(format!(
                    "simulated host did not start (said {other:?})"
                )))
            }
        }
        // Keep draining its stdout so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Self {
            dir,
            child,
            exe: exe.to_owned(),
        })
    }

    /// The host directory (sockets live here).
    pub fn dir(&self) -> PathBuf {
        self.dir.path().join("host")
    }

    /// A control connection.
    pub async fn client(&self) -> Result<Client, SimError> {
        Client::connect(&self.dir()).await
    }

    /// Creates a domain.
    pub async fn create(&self, name: &str) -> Result<DomainInfo, SimError> {
        match self
            .client()
            .await?
            .call(&Request::Create { name: name.into() })
            .await?
        {
            Reply::Domain(d) => Ok(d),
            r => Err(SimError::Protocol(format!("unexpected reply {r:?}"))),
        }
    }

    /// Domain 0.
    pub async fn dom0(&self) -> Result<DomainInfo, SimError> {
        self.client()
            .await?
            .domain(&crate::sim::control::DomainRef::Id(0))
            .await
    }

    /// The host's counters.
    pub async fn stats(&self) -> Result<serde_json::Value, SimError> {
        match self.client().await?.call(&Request::Stats).await? {
            Reply::Stats(v) => Ok(v),
            r => Err(SimError::Protocol(format!("unexpected reply {r:?}"))),
        }
    }

    /// Waits (at most `timeout_ms`) until nothing is held in the device model;
    /// the error lists what is still held.
    pub async fn wait_clean(&self, timeout_ms: u64) -> Result<(), SimError> {
        self.client()
            .await?
            .call(&Request::WaitClean { timeout_ms })
            .await
            .map(|_| ())
    }

    /// A command for the `xenvt` binary running inside `dom`.
    pub fn xenvt_in(&self, dom: &DomainInfo) -> Command {
        let mut c = Command::new(&self.exe);
        for (k, v) in env_for(dom) {
            c.env(k, v);
        }
        c.kill_on_drop(true);
        c
    }

    /// Stops the host and waits for it to exit.
    pub async fn stop(mut self) -> Result<(), SimError> {
        if let Ok(mut c) = self.client().await {
            let _ = c.call(&Request::Shutdown).await;
        }
        let status = self.child.wait().await?;
        if !status.success() {
            return Err(SimError::Refused(format!(
                "simulated host exited with {status}"
            )));
        }
        Ok(())
    }
}

/// The environment that puts a process inside `dom`.
pub fn env_for(dom: &DomainInfo) -> Vec<(OsString, OsString)> {
    vec![
        ("XENSTORED_PATH".into(), dom.xenstored.clone().into()),
        (
            xenvt_ring::platform::sim::ENV_DEV.into(),
            dom.devices.clone().into(),
        ),
    ]
}
