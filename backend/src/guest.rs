//! One guest: wait for its agent's publication, map the channel, serve streams
//! both ways, and tear everything down when the agent or the domain goes.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{watch, Notify};
use tracing::{debug, info, warn, Instrument};
use xenvt_ring::mux::{self, IncomingRequest, MuxConfig, MuxHandle};
use xenvt_ring::proxyv2::{self, Origin};
use xenvt_ring::xenstore::Xenstore;
use xenvt_ring::{Channel, Platform};

use crate::config::{valid_name, Config};
use crate::metrics::{AgentState, GuestStats};
use crate::ratelimit::RateLimit;
use crate::sockets::GuestSockets;
use crate::xs::Xs;
use crate::{Error, Result};

/// How long connecting to a dom0 service (and writing the header) may take.
pub const DELIVER_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause after a failed attachment, so a guest rewriting its nodes cannot make
/// the backend spin.
pub const RETRY_PAUSE: Duration = Duration::from_millis(200);
/// Longest pause between attachments of a misbehaving guest.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// An attachment that lasted this long resets the pause.
pub const STABLE: Duration = Duration::from_secs(5);
/// How long a shut-down mux may take to release the channel.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Log budget shared by one guest's tasks: guest-triggered lines are bounded.
pub type Limiter = Arc<Mutex<RateLimit>>;

fn allow(l: &Limiter) -> Option<u64> {
    l.lock().unwrap_or_else(|p| p.into_inner()).allow()
}

/// What an agent published: read once, checked, then used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Publication {
    /// Control page grant ref.
    pub ring_ref: u32,
    /// The agent's unbound port.
    pub port: u32,
    /// The agent's tag for this publication.
    pub serial: String,
}

/// Longest value accepted for any node an agent writes.
const MAX_NODE: usize = 64;

fn parse_id(path: &str, v: &str) -> Result<u32> {
    match v.trim().parse::<u32>() {
        Ok(n) if n != 0 && v.len() <= MAX_NODE => Ok(n),
        _ => Err(Error::Node {
            path: path.to_owned(),
            problem: format!("not a non-zero number ({} bytes)", v.len()),
        }),
    }
}

/// Reads the agent's nodes under `base`; `Ok(None)` until `state` says ready.
pub async fn read_publication<X: Xenstore>(xs: &Xs<X>, base: &str) -> Result<Option<Publication>> {
    let state = xs.read(&format!("{base}/state")).await?;
    if state.as_deref().map(str::trim) != Some("ready") {
        return Ok(None);
    }
    let rp = format!("{base}/ring-ref");
    let pp = format!("{base}/event-channel");
    let sp = format!("{base}/serial");
    let (Some(r), Some(p)) = (xs.read(&rp).await?, xs.read(&pp).await?) else {
        return Ok(None);
    };
    let serial = xs.read(&sp).await?.unwrap_or_default();
    if serial.len() > MAX_NODE {
        return Err(Error::Node {
            path: sp,
            problem: format!("{} bytes (at most {MAX_NODE})", serial.len()),
        });
    }
    Ok(Some(Publication {
        ring_ref: parse_id(&rp, &r)?,
        port: parse_id(&pp, &p)?,
        serial,
    }))
}

/// Everything a guest task needs.
pub struct Guest<X: Xenstore> {
    /// Its counters, read by the control endpoint.
    pub stats: Arc<GuestStats>,
    /// The guest's domain id.
    pub domid: u16,
    /// Its name, as xenstore says (checked before use in paths).
    pub name: String,
    /// The configuration.
    pub cfg: Arc<Config>,
    /// Grants and event channels.
    pub platform: Arc<dyn Platform>,
    /// Xenstore.
    pub xs: Xs<X>,
    /// Poked when something under the agent's path changed.
    pub kick: Arc<Notify>,
    /// Becomes true when the guest must be torn down.
    pub stop: watch::Receiver<bool>,
}

impl<X: Xenstore> Guest<X> {
    fn base(&self) -> String {
        format!("/local/domain/{}/{}", self.domid, self.cfg.channel_path)
    }

    fn stopped(&self) -> bool {
        *self.stop.borrow()
    }

    async fn wait_stop(stop: &mut watch::Receiver<bool>) {
        // An error means the sender is gone: stop too.
        let _ = stop.wait_for(|s| *s).await;
    }

    /// Runs until told to stop.
    pub async fn run(mut self) {
        let limiter: Limiter = Arc::new(Mutex::new(RateLimit::default()));
        let mut last: Option<Publication> = None;
        let mut backoff = RETRY_PAUSE;
        let base = self.base();
        let mut stop = self.stop.clone();
        while !self.stopped() {
            let p = match read_publication(&self.xs, &base).await {
                Ok(Some(p)) if Some(&p) != last.as_ref() => Some(p),
                Ok(_) => None,
                Err(e) => {
                    if let Some(n) = allow(&limiter) {
                        warn!(suppressed = n, "agent publication: {e}");
                    }
                    None
                }
            };
            let Some(p) = p else {
                self.stats.set_state(AgentState::Waiting);
                tokio::select! {
                    () = self.kick.notified() => continue,
                    () = Self::wait_stop(&mut stop) => break,
                }
            };
            last = Some(p.clone());
            self.stats.set_state(AgentState::Attaching);
            let began = tokio::time::Instant::now();
            let ok = match self.attach(&p, &limiter).await {
                Ok(()) => true,
                Err(e) => {
                    if let Some(n) = allow(&limiter) {
                        warn!(suppressed = n, "attach failed: {e}");
                    }
                    false
                }
            };
            // A guest that fails or drops its attachments quickly waits longer
            // each time: its log lines and our work stay bounded per hour.
            if ok && began.elapsed() >= STABLE {
                backoff = RETRY_PAUSE;
                continue;
            }
            self.stats.set_state(AgentState::Backoff);
            let pause = backoff;
            backoff = (backoff * 2).min(MAX_BACKOFF);
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = Self::wait_stop(&mut stop) => break,
            }
        }
        debug!("guest task done");
        self.stop = stop;
    }

    fn mux_config(&self) -> MuxConfig {
        MuxConfig {
            max_streams: self.cfg.max_streams,
            stream_buf: self.cfg.stream_buf,
            ..MuxConfig::default()
        }
    }

    /// One attachment: returns when the agent, the domain or we ended it.
    async fn attach(&mut self, p: &Publication, limiter: &Limiter) -> Result<()> {
        let ch = Channel::client(&*self.platform, self.domid, p.ring_ref, p.port)?;
        // dom0 maps: the left ring carries dom0 -> guest, the right guest -> dom0.
        let geo = ch.geometry();
        let mut stop = self.stop.clone();
        let started = tokio::select! {
            r = tokio::time::timeout(self.cfg.hello_timeout, mux::start(ch, self.mux_config())) => r,
            () = Self::wait_stop(&mut stop) => return Ok(()),
        };
        let (handle, mut incoming) = match started {
            Ok(r) => r?,
            Err(_) => {
                return Err(Error::Node {
                    path: self.base(),
                    problem: "the agent did not say HELLO in time".into(),
                })
            }
        };
        self.stats
            .attached(&handle, geo.left_order, geo.right_order);
        info!(
            left_order = geo.left_order,
            right_order = geo.right_order,
            "agent attached"
        );
        let sockets = self.listen(limiter);
        let mut accepters = Vec::new();
        let mut sockets = match sockets {
            Ok(s) => s,
            Err(e) => {
                warn!("no dom0 -> guest sockets: {e}");
                None
            }
        };
        if let Some(s) = &mut sockets {
            for (svc, l) in std::mem::take(&mut s.listeners) {
                accepters.push(tokio::spawn(
                    accept_loop(l, svc, handle.clone(), limiter.clone()).in_current_span(),
                ));
            }
        }
        let reason = loop {
            tokio::select! {
                req = incoming.next() => match req {
                    Some(r) => self.deliver(r, limiter),
                    None => break Some(handle.closed().await),
                },
                reason = handle.closed() => break Some(reason),
                () = Self::wait_stop(&mut stop) => break None,
            }
        };
        let protocol = matches!(
            reason,
            Some(mux::CloseReason::Protocol(_) | mux::CloseReason::Version { .. })
        );
        let reason = reason.map_or_else(|| "guest going away".to_owned(), |r| r.to_string());
        for a in accepters {
            a.abort();
        }
        drop(sockets);
        handle.shutdown();
        // Let the driver drop the channel (unmapping it) before we say we are done.
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, handle.closed()).await;
        self.stats.detached(protocol);
        drop(handle);
        info!(%reason, "agent detached");
        Ok(())
    }

    /// Creates the dom0 -> guest listeners, if the config asks for any.
    fn listen(&self, limiter: &Limiter) -> std::io::Result<Option<GuestSockets>> {
        let services = self.cfg.listened();
        if services.is_empty() {
            return Ok(None);
        }
        if !valid_name(&self.name) || self.cfg.run_dir.join(&self.name) == self.cfg.control {
            if let Some(n) = allow(limiter) {
                warn!(suppressed = n, name = ?self.name, "domain name is not a safe file name, or is the control socket's: no sockets");
            }
            return Ok(None);
        }
        let gid = self
            .cfg
            .guests
            .get(&self.name)
            .and_then(|g| g.group.as_ref())
            .map(|g| g.1);
        let s = GuestSockets::create(&self.cfg.run_dir, &self.name, &services, gid)?;
        info!(dir = %s.dir().display(), "listening for dom0 -> guest streams");
        Ok(Some(s))
    }

    /// Delivers a guest -> dom0 stream to its service, PROXY v2 header first, or
    /// refuses it.
    fn deliver(&self, req: IncomingRequest, limiter: &Limiter) {
        let Some(path) = self
            .cfg
            .services
            .get(req.service())
            .and_then(|s| s.deliver.clone())
        else {
            if let Some(n) = allow(limiter) {
                info!(suppressed = n, service = ?req.service(), "refused: unknown service");
            }
            req.refuse();
            return;
        };
        let origin = Origin {
            domid: self.domid,
            domain: self.name.clone(),
            service: req.service().to_owned(),
        };
        let limiter = limiter.clone();
        tokio::spawn(
            async move {
                let r = tokio::time::timeout(DELIVER_TIMEOUT, async {
                    let header = proxyv2::encode(&origin)?;
                    let mut s = UnixStream::connect(&path).await?;
                    s.write_all(&header).await?;
                    Ok::<_, Error>(s)
                })
                .await;
                match r {
                    Ok(Ok(s)) => {
                        debug!(service = %origin.service, "delivered");
                        req.accept(s);
                    }
                    Ok(Err(e)) => {
                        if let Some(n) = allow(&limiter) {
                            info!(suppressed = n, service = %origin.service, path = %path.display(), "refused: {e}");
                        }
                        req.refuse();
                    }
                    Err(_) => {
                        if let Some(n) = allow(&limiter) {
                            info!(suppressed = n, service = %origin.service, path = %path.display(), "refused: service did not accept in time");
                        }
                        req.refuse();
                    }
                }
            }
            .in_current_span(),
        );
    }
}

/// Opens a stream into the guest per connection on a guest's socket.
async fn accept_loop(l: UnixListener, service: String, h: MuxHandle, limiter: Limiter) {
    loop {
        let sock = match l.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                if let Some(n) = allow(&limiter) {
                    warn!(suppressed = n, %service, "accept: {e}");
                }
                tokio::time::sleep(RETRY_PAUSE).await;
                continue;
            }
        };
        let (service, h, limiter) = (service.clone(), h.clone(), limiter.clone());
        tokio::spawn(
            async move {
                match h.open(&service, sock).await {
                    Ok(s) => debug!(%service, stream = s.id(), "opened"),
                    Err(e) => {
                        if let Some(n) = allow(&limiter) {
                            info!(suppressed = n, %service, "not opened: {e}");
                        }
                    }
                }
            }
            .in_current_span(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xenvt_ring::xenstore::MemStore;

    #[tokio::test]
    async fn publications_are_read_whole_and_checked() {
        let m = MemStore::new();
        let xs = Xs::new(m.clone());
        let base = "/local/domain/3/data/xenvt";
        assert_eq!(read_publication(&xs, base).await.unwrap(), None);
        m.write(&format!("{base}/ring-ref"), "8").await.unwrap();
        m.write(&format!("{base}/event-channel"), "5")
            .await
            .unwrap();
        // Not ready until the state node says so.
        assert_eq!(read_publication(&xs, base).await.unwrap(), None);
        m.write(&format!("{base}/state"), "ready").await.unwrap();
        m.write(&format!("{base}/serial"), "42-1").await.unwrap();
        assert_eq!(
            read_publication(&xs, base).await.unwrap(),
            Some(Publication {
                ring_ref: 8,
                port: 5,
                serial: "42-1".into()
            })
        );
        for bad in ["0", "-1", "x", "99999999999"] {
            m.write(&format!("{base}/ring-ref"), bad).await.unwrap();
            assert!(read_publication(&xs, base).await.is_err(), "{bad}");
        }
        m.write(&format!("{base}/ring-ref"), "8").await.unwrap();
        m.write(&format!("{base}/serial"), &"s".repeat(65))
            .await
            .unwrap();
        assert!(read_publication(&xs, base).await.is_err());
    }
}
