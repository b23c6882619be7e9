//! The proxy's control endpoint: `GET /metrics` and `GET /status` about every
//! served domain (the server itself is [`xenvt_ring::control`]).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde::Serialize;
use xenvt_ring::control::{metrics_or_status, Exposition, Handler, Kind};

use crate::daemon::Directory;
use crate::metrics::Disconnect;

/// One domain in `/status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DomainStatus {
    /// Domain id.
    pub domid: u16,
    /// Name.
    pub name: String,
    /// Viewers attached now.
    pub viewers: u64,
    /// The current view's label (console, desktop, or a configured view's name).
    pub view: String,
    /// "connected" while a desktop view exists, else "none".
    pub desktop: String,
    /// FramebufferUpdates sent to viewers.
    pub updates_sent: u64,
    /// Bytes sent to viewers.
    pub bytes_to_viewers: u64,
    /// Bytes read from upstream desktops.
    pub upstream_bytes: u64,
    /// Changes of the current view.
    pub view_switches: u64,
    /// Viewers that completed the handshake.
    pub viewers_connected: u64,
    /// Viewer sessions ended, by reason.
    pub viewer_disconnects: std::collections::BTreeMap<&'static str, u64>,
}

/// The proxy's whole answer to `/status`.
#[derive(Debug, Serialize)]
pub struct Status {
    /// "proxy".
    pub daemon: &'static str,
    /// Served domains, by id.
    pub domains: Vec<DomainStatus>,
}

/// Answers the control endpoint from the daemon's domain list.
pub struct Control(pub Arc<dyn Directory>);

impl Control {
    /// A snapshot of every served domain.
    pub fn status(&self) -> Status {
        let mut domains = Vec::new();
        for info in self.0.list() {
            let Some(d) = self.0.find(&info.domid.to_string()) else {
                continue;
            };
            let st = d.stats();
            let desktop = if d.slots().iter().any(|s| s == "desktop") {
                "connected"
            } else {
                "none"
            };
            domains.push(DomainStatus {
                domid: info.domid,
                name: info.name,
                viewers: info.viewers as u64,
                view: d.current_label(),
                desktop: desktop.into(),
                updates_sent: st.updates_sent.load(Ordering::Relaxed),
                bytes_to_viewers: st.bytes_to_viewers.load(Ordering::Relaxed),
                upstream_bytes: st.upstream_bytes.load(Ordering::Relaxed),
                view_switches: d.view_switches(),
                viewers_connected: st.viewers_connected.load(Ordering::Relaxed),
                viewer_disconnects: Disconnect::ALL
                    .iter()
                    .map(|r| (r.label(), st.disconnects(*r)))
                    .collect(),
            });
        }
        Status {
            daemon: "proxy",
            domains,
        }
    }

    /// The Prometheus text.
    pub fn metrics(&self) -> String {
        let st = self.status();
        let mut e = Exposition::new();
        let mut fam = e.per_domain(&st.domains, |d| (d.domid, d.name.as_str()));
        fam.family(
            "xenvt_proxy_viewers",
            Kind::Gauge,
            "Viewers attached now.",
            |d| d.viewers,
        );
        fam.family(
            "xenvt_proxy_desktop_connected",
            Kind::Gauge,
            "1 while the domain has a desktop view (an upstream desktop is connected).",
            |d| u64::from(d.desktop == "connected"),
        );
        fam.family(
            "xenvt_proxy_updates_sent_total",
            Kind::Counter,
            "FramebufferUpdates sent to viewers.",
            |d| d.updates_sent,
        );
        fam.family(
            "xenvt_proxy_viewer_bytes_total",
            Kind::Counter,
            "Bytes sent to viewers.",
            |d| d.bytes_to_viewers,
        );
        fam.family(
            "xenvt_proxy_upstream_bytes_total",
            Kind::Counter,
            "Bytes read from upstream desktops.",
            |d| d.upstream_bytes,
        );
        fam.family(
            "xenvt_proxy_view_switches_total",
            Kind::Counter,
            "Changes of the current view.",
            |d| d.view_switches,
        );
        fam.family(
            "xenvt_proxy_viewers_connected_total",
            Kind::Counter,
            "Viewers that completed the handshake.",
            |d| d.viewers_connected,
        );
        // The current view as an info-style gauge: 1 for the view shown.
        fam.labelled(
            "xenvt_proxy_current_view",
            Kind::Gauge,
            "1 for the view viewers of the domain see now (label view).",
            "view",
            |d| [(d.view.as_str(), 1)],
        );
        fam.labelled(
            "xenvt_proxy_viewer_disconnects_total",
            Kind::Counter,
            "Viewer sessions ended, by reason: left, handshake, protocol, io, closed.",
            "reason",
            |d| d.viewer_disconnects.iter().map(|(r, n)| (*r, *n)),
        );
        e.single(
            "xenvt_proxy_domains",
            Kind::Gauge,
            "Domains served.",
            st.domains.len() as u64,
        );
        e.finish()
    }
}

impl Handler for Control {
    fn get(&self, path: &str) -> Option<(&'static str, String)> {
        metrics_or_status(path, || self.metrics(), || self.status())
    }
}
