//! Per-guest counters and the control endpoint's answers (`/metrics`, `/status`).
//!
//! The mux counts stream events with relaxed atomics ([`MuxStats`]); a guest
//! keeps the live mux's handle and folds each finished attachment's final
//! numbers into its totals, so counters only go up across reconnects. Reading
//! happens only when the endpoint is asked.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;
use xenvt_ring::control::{metrics_or_status, Exposition, Handler, Kind};
use xenvt_ring::mux::{MuxHandle, MuxStats};

/// Where a guest's agent is, as the backend sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum AgentState {
    /// No (new) publication: waiting for the agent.
    Waiting = 0,
    /// Mapping the channel and exchanging HELLOs.
    Attaching = 1,
    /// The mux runs.
    Attached = 2,
    /// An attachment failed or ended quickly: pausing before the next.
    Backoff = 3,
}

impl AgentState {
    fn from_u8(v: u8) -> AgentState {
        match v {
            1 => AgentState::Attaching,
            2 => AgentState::Attached,
            3 => AgentState::Backoff,
            _ => AgentState::Waiting,
        }
    }

    /// Its name in `/status` and in `xenvt status`.
    pub fn name(self) -> &'static str {
        match self {
            AgentState::Waiting => "waiting",
            AgentState::Attaching => "attaching",
            AgentState::Attached => "attached",
            AgentState::Backoff => "backoff",
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One guest's counters.
#[derive(Debug)]
pub struct GuestStats {
    domid: u16,
    name: String,
    state: AtomicU8,
    /// dom0 -> guest (left) and guest -> dom0 (right) ring orders; 0: none.
    orders: AtomicU8,
    orders_right: AtomicU8,
    attachments: AtomicU64,
    protocol_errors: AtomicU64,
    live: Mutex<Option<MuxHandle>>,
    past: Mutex<MuxStats>,
}

impl GuestStats {
    /// Counters for a new guest task.
    pub fn new(domid: u16, name: &str) -> Self {
        Self {
            domid,
            name: name.to_owned(),
            state: AtomicU8::new(AgentState::Waiting as u8),
            orders: AtomicU8::new(0),
            orders_right: AtomicU8::new(0),
            attachments: AtomicU64::new(0),
            protocol_errors: AtomicU64::new(0),
            live: Mutex::new(None),
            past: Mutex::new(MuxStats::default()),
        }
    }

    /// The agent state changed.
    pub fn set_state(&self, s: AgentState) {
        self.state.store(s as u8, Ordering::Relaxed);
    }

    /// A mux started on a channel of these ring orders.
    pub fn attached(&self, h: &MuxHandle, left_order: u8, right_order: u8) {
        self.orders.store(left_order, Ordering::Relaxed);
        self.orders_right.store(right_order, Ordering::Relaxed);
        self.attachments.fetch_add(1, Ordering::Relaxed);
        *lock(&self.live) = Some(h.clone());
        self.set_state(AgentState::Attached);
    }

    /// The mux finished; `protocol`: because the agent broke the framing rules.
    pub fn detached(&self, protocol: bool) {
        if protocol {
            self.protocol_errors.fetch_add(1, Ordering::Relaxed);
        }
        // `live` is held while `past` grows, as in `snapshot`: a reader never
        // sees an attachment in neither (a counter going back).
        let mut live = lock(&self.live);
        if let Some(h) = live.take() {
            add(&mut lock(&self.past), &h.stats());
        }
        self.orders.store(0, Ordering::Relaxed);
        self.orders_right.store(0, Ordering::Relaxed);
    }

    /// What `/status` says of this guest.
    pub fn snapshot(&self) -> GuestStatus {
        let live = lock(&self.live);
        let mut total = *lock(&self.past);
        let mut open = 0;
        if let Some(h) = live.as_ref() {
            let now = h.stats();
            open = now.streams_open;
            add(&mut total, &now);
        }
        drop(live);
        let attachments = self.attachments.load(Ordering::Relaxed);
        GuestStatus {
            domid: self.domid,
            name: self.name.clone(),
            agent_state: AgentState::from_u8(self.state.load(Ordering::Relaxed))
                .name()
                .to_owned(),
            ring_order_to_guest: self.orders.load(Ordering::Relaxed),
            ring_order_from_guest: self.orders_right.load(Ordering::Relaxed),
            streams_open: open,
            streams_opened: total.streams_opened + total.streams_accepted,
            streams_refused: total.refused,
            streams_reset: total.resets_sent + total.resets_received,
            bytes_to_guest: total.bytes_tx,
            bytes_from_guest: total.bytes_rx,
            credit_stalls: total.credit_stalls,
            frames_rejected: total.stream_violations + self.protocol_errors.load(Ordering::Relaxed),
            reconnects: attachments.saturating_sub(1),
        }
    }
}

fn add(a: &mut MuxStats, b: &MuxStats) {
    a.streams_opened += b.streams_opened;
    a.streams_accepted += b.streams_accepted;
    a.bytes_tx += b.bytes_tx;
    a.bytes_rx += b.bytes_rx;
    a.credit_stalls += b.credit_stalls;
    a.resets_sent += b.resets_sent;
    a.resets_received += b.resets_received;
    a.refused += b.refused;
    a.stream_violations += b.stream_violations;
}

/// One guest in `/status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct GuestStatus {
    /// Domain id.
    pub domid: u16,
    /// Domain name (from xenstore).
    pub name: String,
    /// waiting, attaching, attached or backoff.
    pub agent_state: String,
    /// Order of the dom0 -> guest ring (0: no channel).
    pub ring_order_to_guest: u8,
    /// Order of the guest -> dom0 ring (0: no channel).
    pub ring_order_from_guest: u8,
    /// Streams open now.
    pub streams_open: u64,
    /// Streams opened, both directions.
    pub streams_opened: u64,
    /// Stream requests refused.
    pub streams_refused: u64,
    /// Streams reset, by either side.
    pub streams_reset: u64,
    /// Payload bytes carried into the guest.
    pub bytes_to_guest: u64,
    /// Payload bytes carried out of the guest.
    pub bytes_from_guest: u64,
    /// Times a stream waited for the peer's credit.
    pub credit_stalls: u64,
    /// Frames rejected for breaking the stream or framing rules.
    pub frames_rejected: u64,
    /// Attachments after the first.
    pub reconnects: u64,
}

/// The backend's whole answer to `/status`.
#[derive(Debug, Serialize)]
pub struct Status {
    /// "backend".
    pub daemon: &'static str,
    /// Guests served, by id.
    pub domains: Vec<GuestStatus>,
}

/// Every served guest's counters, by domain id.
#[derive(Debug, Default)]
pub struct Registry {
    guests: Mutex<BTreeMap<u16, Arc<GuestStats>>>,
}

impl Registry {
    /// Registers a guest (replacing an older entry for the id).
    pub fn add(&self, g: Arc<GuestStats>) {
        lock(&self.guests).insert(g.domid, g);
    }

    /// Forgets a guest that is no longer served.
    pub fn remove(&self, domid: u16) {
        lock(&self.guests).remove(&domid);
    }

    /// A snapshot of every guest.
    pub fn status(&self) -> Status {
        let gs: Vec<Arc<GuestStats>> = lock(&self.guests).values().cloned().collect();
        Status {
            daemon: "backend",
            domains: gs.iter().map(|g| g.snapshot()).collect(),
        }
    }

    /// The Prometheus text.
    pub fn metrics(&self) -> String {
        let st = self.status();
        let mut e = Exposition::new();
        let mut fam = e.per_domain(&st.domains, |d| (d.domid, d.name.as_str()));
        let states = ["waiting", "attaching", "attached", "backoff"];
        fam.family(
            "xenvt_backend_agent_attached",
            Kind::Gauge,
            "1 when the guest's agent is attached (its channel mapped and the mux running).",
            |d| u64::from(d.agent_state == "attached"),
        );
        fam.family(
            "xenvt_backend_agent_state",
            Kind::Gauge,
            "The agent state: 0 waiting, 1 attaching, 2 attached, 3 backoff.",
            |d| states.iter().position(|s| *s == d.agent_state).unwrap_or(0) as u64,
        );
        fam.family(
            "xenvt_backend_ring_order_to_guest",
            Kind::Gauge,
            "Order (log2 bytes) of the dom0-to-guest ring; 0 when there is no channel.",
            |d| d.ring_order_to_guest.into(),
        );
        fam.family(
            "xenvt_backend_ring_order_from_guest",
            Kind::Gauge,
            "Order (log2 bytes) of the guest-to-dom0 ring; 0 when there is no channel.",
            |d| d.ring_order_from_guest.into(),
        );
        fam.family(
            "xenvt_backend_streams_open",
            Kind::Gauge,
            "Streams open or pending now.",
            |d| d.streams_open,
        );
        fam.family(
            "xenvt_backend_streams_opened_total",
            Kind::Counter,
            "Streams opened, both directions.",
            |d| d.streams_opened,
        );
        fam.family(
            "xenvt_backend_streams_refused_total",
            Kind::Counter,
            "Stream requests refused (unknown service, limit, service down).",
            |d| d.streams_refused,
        );
        fam.family(
            "xenvt_backend_streams_reset_total",
            Kind::Counter,
            "Streams reset by either side.",
            |d| d.streams_reset,
        );
        fam.family(
            "xenvt_backend_bytes_to_guest_total",
            Kind::Counter,
            "Stream payload bytes carried into the guest.",
            |d| d.bytes_to_guest,
        );
        fam.family(
            "xenvt_backend_bytes_from_guest_total",
            Kind::Counter,
            "Stream payload bytes carried out of the guest.",
            |d| d.bytes_from_guest,
        );
        fam.family(
            "xenvt_backend_credit_stalls_total",
            Kind::Counter,
            "Times a stream had data for the guest but no credit.",
            |d| d.credit_stalls,
        );
        fam.family(
            "xenvt_backend_frames_rejected_total",
            Kind::Counter,
            "Frames from the guest rejected for breaking the stream or framing rules.",
            |d| d.frames_rejected,
        );
        fam.family(
            "xenvt_backend_reconnects_total",
            Kind::Counter,
            "Agent attachments after the first.",
            |d| d.reconnects,
        );
        e.single(
            "xenvt_backend_domains",
            Kind::Gauge,
            "Guests served.",
            st.domains.len() as u64,
        );
        e.finish()
    }
}

impl Handler for Registry {
    fn get(&self, path: &str) -> Option<(&'static str, String)> {
        metrics_or_status(path, || self.metrics(), || self.status())
    }
}

#[cfg(test)]
mod tests {
    use xenvt_ring::control::JSON_TYPE;

    use super::*;

    #[test]
    fn status_and_metrics_of_a_waiting_guest() {
        let r = Registry::default();
        let g = Arc::new(GuestStats::new(3, "vm\"3"));
        g.set_state(AgentState::Backoff);
        g.detached(true);
        r.add(g);
        let st = r.status();
        assert_eq!(st.domains.len(), 1);
        assert_eq!(st.domains[0].agent_state, "backoff");
        assert_eq!(st.domains[0].frames_rejected, 1);
        let m = r.metrics();
        assert!(
            m.contains("xenvt_backend_agent_state{domid=\"3\",name=\"vm\\\"3\"} 3\n"),
            "{m}"
        );
        assert!(m.contains("# TYPE xenvt_backend_bytes_to_guest_total counter\n"));
        let (t, body) = r.get("/status").unwrap();
        assert_eq!(t, JSON_TYPE);
        assert!(body.contains("\"agent_state\":\"backoff\""), "{body}");
        assert!(r.get("/other").is_none());
        r.remove(3);
        assert!(r.status().domains.is_empty());
    }
}
