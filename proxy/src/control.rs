//! The proxy's control endpoint: `GET /metrics` and `GET /status` about every
//! served domain (the server itself is [`xenvt_ring::control`]).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde::Serialize;
use xenvt_ring::control::{Exposition, Handler, Kind, JSON_TYPE, METRICS_TYPE};

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
        let ids: Vec<String> = st.domains.iter().map(|d| d.domid.to_string()).collect();
        let labels: Vec<[(&str, &str); 2]> = st
            .domains
            .iter()
            .zip(&ids)
            .map(|(d, id)| [("domid", id.as_str()), ("name", d.name.as_str())])
            .collect();
        let mut e = Exposition::new();
        let mut fam = |name: &str, kind: Kind, help: &str, f: &dyn Fn(&DomainStatus) -> u64| {
            e.family(
                name,
                kind,
                help,
                st.domains.iter().zip(&labels).map(|(d, l)| (&l[..], f(d))),
            );
        };
        fam(
            "xenvt_proxy_viewers",
            Kind::Gauge,
            "Viewers attached now.",
            &|d| d.viewers,
        );
        fam(
            "xenvt_proxy_desktop_connected",
            Kind::Gauge,
            "1 while the domain has a desktop view (an upstream desktop is connected).",
            &|d| u64::from(d.desktop == "connected"),
        );
        fam(
            "xenvt_proxy_updates_sent_total",
            Kind::Counter,
            "FramebufferUpdates sent to viewers.",
            &|d| d.updates_sent,
        );
        fam(
            "xenvt_proxy_viewer_bytes_total",
            Kind::Counter,
            "Bytes sent to viewers.",
            &|d| d.bytes_to_viewers,
        );
        fam(
            "xenvt_proxy_upstream_bytes_total",
            Kind::Counter,
            "Bytes read from upstream desktops.",
            &|d| d.upstream_bytes,
        );
        fam(
            "xenvt_proxy_view_switches_total",
            Kind::Counter,
            "Changes of the current view.",
            &|d| d.view_switches,
        );
        fam(
            "xenvt_proxy_viewers_connected_total",
            Kind::Counter,
            "Viewers that completed the handshake.",
            &|d| d.viewers_connected,
        );
        // The current view as an info-style gauge: 1 for the view shown.
        let view_labels: Vec<[(&str, &str); 3]> = st
            .domains
            .iter()
            .zip(&ids)
            .map(|(d, id)| {
                [
                    ("domid", id.as_str()),
                    ("name", d.name.as_str()),
                    ("view", d.view.as_str()),
                ]
            })
            .collect();
        e.family(
            "xenvt_proxy_current_view",
            Kind::Gauge,
            "1 for the view viewers of the domain see now (label view).",
            view_labels.iter().map(|l| (&l[..], 1)),
        );
        let mut reasons = Vec::new();
        for (d, id) in st.domains.iter().zip(&ids) {
            for (r, n) in &d.viewer_disconnects {
                reasons.push((
                    [
                        ("domid", id.as_str()),
                        ("name", d.name.as_str()),
                        ("reason", *r),
                    ],
                    *n,
                ));
            }
        }
        e.family(
            "xenvt_proxy_viewer_disconnects_total",
            Kind::Counter,
            "Viewer sessions ended, by reason: left, handshake, protocol, io, closed.",
            reasons.iter().map(|(l, n)| (&l[..], *n)),
        );
        e.family(
            "xenvt_proxy_domains",
            Kind::Gauge,
            "Domains served.",
            [(&[][..], st.domains.len() as u64)],
        );
        e.finish()
    }
}

impl Handler for Control {
    fn get(&self, path: &str) -> Option<(&'static str, String)> {
        match path {
            "/metrics" => Some((METRICS_TYPE, self.metrics())),
            "/status" => Some((
                JSON_TYPE,
                serde_json::to_string(&self.status()).unwrap_or_else(|_| "{}".into()),
            )),
            _ => None,
        }
    }
}
