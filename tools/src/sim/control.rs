//! The simulated host's control socket: newline-delimited JSON requests and replies.
//!
//! Only the host's owner can reach it (the socket directory is mode 0700), but
//! replies and requests are still bounded and validated like any other input.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use super::SimError;

/// Longest accepted request or reply line.
pub const MAX_LINE: usize = 1 << 20;

/// A domain, by name or by id.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum DomainRef {
    /// A numeric domain id.
    Id(u16),
    /// A domain name.
    Name(String),
}

impl std::str::FromStr for DomainRef {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.parse::<u16>() {
            Ok(id) => DomainRef::Id(id),
            Err(_) => DomainRef::Name(s.to_owned()),
        })
    }
}

/// A request to the host.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Creates a domain.
    Create {
        /// Its name (unique, like `xl create`'s).
        name: String,
    },
    /// Destroys a domain: its processes are killed, its grants invalidated, and
    /// `@releaseDomain` fires.
    Destroy {
        /// Which domain.
        domain: DomainRef,
        /// Leave the domain's processes running (only their devices are cut off).
        #[serde(default)]
        keep_processes: bool,
    },
    /// Lists the domains.
    List,
    /// Returns counters of xenstored and the devices, for status and leak checks.
    Stats,
    /// Waits until no domain holds a grant, mapping, port or device connection,
    /// then returns the counters; fails with the counters after `timeout_ms`.
    /// Cleanup after a process exits is asynchronous, so leak checks wait on this
    /// event rather than sampling once.
    WaitClean {
        /// Upper bound on the wait.
        timeout_ms: u64,
    },
    /// Stops the host.
    Shutdown,
}

/// One domain as the host reports it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DomainInfo {
    /// Domain id.
    pub id: u16,
    /// Domain name.
    pub name: String,
    /// Its xenstored socket (`XENSTORED_PATH` for its processes).
    pub xenstored: PathBuf,
    /// Its device socket (`XENVT_SIM_DEV` for its processes).
    pub devices: PathBuf,
    /// Its console pty, also published in xenstore as `console/tty`.
    #[serde(default)]
    pub console: Option<PathBuf>,
}

/// A reply from the host.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    /// A domain was created or looked up.
    Domain(DomainInfo),
    /// The domain list.
    Domains(Vec<DomainInfo>),
    /// Counters, as JSON.
    Stats(serde_json::Value),
    /// Done.
    Ok,
    /// The request failed.
    Error(String),
}

/// A connection to a running host.
pub struct Client {
    stream: BufReader<UnixStream>,
}

impl Client {
    /// Connects to the host whose directory is `dir`.
    pub async fn connect(dir: &Path) -> Result<Self, SimError> {
        let path = dir.join(super::CONTROL_SOCKET);
        let stream = UnixStream::connect(&path)
            .await
            .map_err(|e| SimError::Connect(path.clone(), e))?;
        Ok(Self {
            stream: BufReader::new(stream),
        })
    }

    /// Sends one request and waits for its reply.
    pub async fn call(&mut self, req: &Request) -> Result<Reply, SimError> {
        let mut line = serde_json::to_vec(req).map_err(|e| SimError::Protocol(e.to_string()))?;
        line.push(b'\n');
        self.stream.get_mut().write_all(&line).await?;
        let reply = read_line(&mut self.stream)
            .await?
            .ok_or_else(|| SimError::Protocol("host closed the control connection".into()))?;
        let reply: Reply =
            serde_json::from_str(&reply).map_err(|e| SimError::Protocol(e.to_string()))?;
        match reply {
            Reply::Error(e) => Err(SimError::Refused(e)),
            r => Ok(r),
        }
    }

    /// Looks a domain up by name or id.
    pub async fn domain(&mut self, which: &DomainRef) -> Result<DomainInfo, SimError> {
        match self.call(&Request::List).await? {
            Reply::Domains(list) => list
                .into_iter()
                .find(|d| match which {
                    DomainRef::Id(id) => d.id == *id,
                    DomainRef::Name(n) => &d.name == n,
                })
                .ok_or_else(|| SimError::Refused(format!("no such domain: {which:?}"))),
            other => Err(SimError::Protocol(format!("unexpected reply {other:?}"))),
        }
    }
}

/// Reads one line of at most [`MAX_LINE`] bytes; `None` at end of stream.
pub async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(
    r: &mut R,
) -> Result<Option<String>, SimError> {
    let mut buf = Vec::new();
    loop {
        let avail = r.fill_buf().await?;
        if avail.is_empty() {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(SimError::Protocol("truncated line".into()))
            };
        }
        let (chunk, done) = match avail.iter().position(|&b| b == b'\n') {
            Some(i) => (&avail[..i], Some(i + 1)),
            None => (avail, None),
        };
        if buf.len() + chunk.len() > MAX_LINE {
            return Err(SimError::Protocol("line too long".into()));
        }
        buf.extend_from_slice(chunk);
        let used = done.unwrap_or(avail.len());
        r.consume(used);
        if done.is_some() {
            return String::from_utf8(buf)
                .map(Some)
                .map_err(|_| SimError::Protocol("line is not UTF-8".into()));
        }
    }
}
