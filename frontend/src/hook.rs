//! The command that makes the guest connect its desktop, e.g. asking the X
//! server for its reverse VNC connection, and when it runs.
//!
//! It runs when a backend (re)connects, and again, with a growing pause, when
//! dom0 drops the stream it made (the proxy restarted) while the backend stays:
//! nothing else would ask Xvnc to connect again. An end the guest caused (Xvnc
//! closed the connection) never brings it back. One task runs it, so there is at
//! most one run at a time; it has a deadline and its output is logged line by
//! line (bounded). The daemon never waits for it.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;
use tokio::sync::Notify;
use tracing::{info, warn};
use xenvt_ring::mux::StreamEnd;
use xenvt_ring::ratelimit::RateLimit;

use crate::config::{Hook, Redial};

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

/// Who ended a stream of the hook's service, as far as redialling cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// dom0 closed or reset it while the guest's side was still open (the proxy
    /// went away): the hook should bring it back.
    Dom0,
    /// The guest's program closed or reset it first (X stopped, or someone
    /// disconnected on purpose), or we cannot tell: leave it.
    Guest,
    /// The backend went away; its reconnection runs the hook.
    Backend,
}

/// Why the hook runs, for the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    /// A backend connected.
    Connected,
    /// dom0 dropped or refused the hook's service.
    Redial,
}

/// When the hook runs: the decisions alone, with the clock passed in, so they
/// can be tested without processes or sleeps.
///
/// Streams carry the backend generation they were opened in, so a late end from
/// a backend that has gone does not disturb the count of the current one.
#[derive(Debug)]
pub struct Schedule {
    redial: Option<Redial>,
    /// The pause the next failure waits.
    next: Duration,
    gen: u64,
    connected: bool,
    /// Streams of the service open or waiting for dom0's answer.
    open: usize,
    due: Option<(Instant, Why)>,
    running: bool,
}

impl Schedule {
    /// A schedule with no backend yet; `redial: None` runs only on connect.
    pub fn new(redial: Option<Redial>) -> Self {
        let next = redial.as_ref().map_or(Duration::ZERO, |r| r.min);
        Self {
            redial,
            next,
            gen: 0,
            connected: false,
            open: 0,
            due: None,
            running: false,
        }
    }

    /// A backend connected: run now, and start the pauses afresh.
    pub fn connected(&mut self, now: Instant) {
        self.gen += 1;
        self.connected = true;
        self.open = 0;
        self.reset_pause();
        self.due = Some((now, Why::Connected));
    }

    /// The backend went away: nothing runs until one connects again.
    pub fn gone(&mut self) {
        self.gen += 1;
        self.connected = false;
        self.open = 0;
        self.due = None;
    }

    fn reset_pause(&mut self) {
        if let Some(r) = &self.redial {
            self.next = r.min;
        }
    }

    /// A connection of the service was accepted and its REQUEST sent: it may be
    /// the desktop coming back by itself, so a pending run is dropped. Returns
    /// the generation to pass back with its end.
    pub fn opening(&mut self) -> u64 {
        self.open += 1;
        self.due = None;
        self.gen
    }

    /// dom0 refused the REQUEST (nobody takes the service yet): a failure.
    /// Returns the pause before the next run, if one was scheduled.
    pub fn refused(&mut self, gen: u64, now: Instant) -> Option<Duration> {
        if gen != self.gen {
            return None;
        }
        self.open = self.open.saturating_sub(1);
        self.fail(now)
    }

    /// A stream of the service ended after `lasted`. Returns the pause before the
    /// next run, if one was scheduled.
    pub fn ended(
        &mut self,
        gen: u64,
        now: Instant,
        lasted: Duration,
        how: Ended,
    ) -> Option<Duration> {
        if gen != self.gen {
            return None;
        }
        self.open = self.open.saturating_sub(1);
        if self.redial.as_ref().is_some_and(|r| lasted >= r.reset) {
            self.reset_pause();
        }
        match how {
            Ended::Dom0 => self.fail(now),
            Ended::Guest | Ended::Backend => None,
        }
    }

    /// Schedules a run after the current pause, then doubles the pause, unless
    /// another stream of the service is open or a run is already due.
    fn fail(&mut self, now: Instant) -> Option<Duration> {
        let r = self.redial.as_ref()?;
        if !self.connected || self.open > 0 || self.due.is_some() {
            return None;
        }
        let pause = self.next;
        self.due = Some((now + pause, Why::Redial));
        self.next = (pause * 2).min(r.max);
        Some(pause)
    }

    /// When the next run is due (it may still wait for a running one).
    pub fn due(&self) -> Option<Instant> {
        self.due.map(|(t, _)| t)
    }

    /// Whether to start a run now; if so it counts as running until
    /// [`finished`](Self::finished).
    pub fn start(&mut self, now: Instant) -> Option<Why> {
        match self.due {
            Some((t, why)) if t <= now && !self.running && self.connected => {
                self.due = None;
                self.running = true;
                Some(why)
            }
            _ => None,
        }
    }

    /// The run ended (its exit status does not matter: `vncconfig -connect`
    /// succeeds before the connection is even tried; dom0's answer tells).
    pub fn finished(&mut self) {
        self.running = false;
    }
}

/// Who ended a stream of the hook's service, from what the multiplexer saw
/// first (docs/protocol.md, "Who ended a stream"): dom0 if its SHUTDOWN or RST
/// came before the guest program's EOF, the guest otherwise. A local reset is
/// the guest's socket failing (or dom0 breaking the stream rules, which is no
/// reason to bring it back either).
pub fn who_ended(end: &StreamEnd) -> Ended {
    match end {
        StreamEnd::Closed { peer_first: true } | StreamEnd::ResetByPeer { peer_first: true } => {
            Ended::Dom0
        }
        StreamEnd::Closed { peer_first: false }
        | StreamEnd::ResetByPeer { peer_first: false }
        | StreamEnd::ResetLocal(_) => Ended::Guest,
        StreamEnd::MuxClosed => Ended::Backend,
    }
}

/// The hook's schedule, shared by the agent's connection tasks and the task
/// that runs the hook.
#[derive(Debug)]
pub struct Hooks {
    inner: Mutex<(Schedule, RateLimit)>,
    wake: Notify,
    service: Option<String>,
}

impl Hooks {
    /// For `hook`; its redial service, if any, is the one whose streams count.
    pub fn new(hook: &Hook) -> Self {
        Self {
            inner: Mutex::new((Schedule::new(hook.redial.clone()), RateLimit::default())),
            wake: Notify::new(),
            service: hook.redial.as_ref().map(|r| r.service.clone()),
        }
    }

    /// Whether streams of `service` matter to the hook.
    pub fn watches(&self, service: &str) -> bool {
        self.service.as_deref() == Some(service)
    }

    fn with<R>(&self, f: impl FnOnce(&mut Schedule, &mut RateLimit) -> R) -> R {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (s, l) = &mut *g;
        let r = f(s, l);
        drop(g);
        self.wake.notify_one();
        r
    }

    /// See [`Schedule::connected`].
    pub fn connected(&self) {
        self.with(|s, _| s.connected(Instant::now()));
    }

    /// See [`Schedule::gone`].
    pub fn gone(&self) {
        self.with(|s, _| s.gone());
    }

    /// See [`Schedule::opening`].
    pub fn opening(&self) -> u64 {
        self.with(|s, _| s.opening())
    }

    /// See [`Schedule::refused`].
    pub fn refused(&self, gen: u64) {
        let svc = self.service.as_deref().unwrap_or_default();
        self.with(|s, l| {
            if let Some(pause) = s.refused(gen, Instant::now()) {
                if let Some(n) = l.allow() {
                    info!(
                        suppressed = n,
                        service = svc,
                        "hook: dom0 refused the stream; running the hook again in {pause:?}"
                    );
                }
            }
        });
    }

    /// See [`Schedule::ended`].
    pub fn ended(&self, gen: u64, lasted: Duration, how: Ended) {
        let svc = self.service.as_deref().unwrap_or_default();
        self.with(|s, l| {
            let pause = s.ended(gen, Instant::now(), lasted, how);
            match (how, pause) {
                (Ended::Dom0, Some(pause)) => {
                    if let Some(n) = l.allow() {
                        info!(
                            suppressed = n,
                            service = svc,
                            "hook: dom0 ended the stream; running the hook again in {pause:?}"
                        );
                    }
                }
                (Ended::Guest, _) => {
                    if let Some(n) = l.allow() {
                        info!(
                            suppressed = n,
                            service = svc,
                            "hook: the guest ended the stream; not running the hook"
                        );
                    }
                }
                _ => {}
            }
        });
    }
}

/// Runs `hook` whenever its schedule says so, one run at a time, until aborted.
pub async fn control(hook: Hook, hooks: Arc<Hooks>) {
    loop {
        let now = Instant::now();
        let (start, due) = {
            let mut g = hooks.inner.lock().unwrap_or_else(|p| p.into_inner());
            (g.0.start(now), g.0.due())
        };
        if let Some(why) = start {
            match why {
                Why::Connected => info!("hook: a backend connected, running {:?}", hook.command[0]),
                Why::Redial => info!(
                    "hook: running {:?} again to bring the stream back",
                    hook.command[0]
                ),
            }
            run(&hook).await;
            hooks
                .inner
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .0
                .finished();
            continue;
        }
        match due {
            Some(t) => {
                tokio::select! {
                    () = hooks.wake.notified() => {}
                    () = tokio::time::sleep_until(t.into()) => {}
                }
            }
            None => hooks.wake.notified().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(cmd: &[&str], secs: u64) -> Hook {
        Hook {
            command: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: Duration::from_secs(secs),
            redial: None,
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

#[cfg(test)]
mod schedule_tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn redial() -> Redial {
        Redial {
            service: "vnc".into(),
            min: S,
            max: 8 * S,
            reset: 10 * S,
        }
    }

    /// A connected schedule whose connect run has been and gone.
    fn settled(t: Instant) -> Schedule {
        let mut s = Schedule::new(Some(redial()));
        s.connected(t);
        assert_eq!(s.start(t), Some(Why::Connected));
        s.finished();
        s
    }

    #[test]
    fn a_guest_side_end_never_runs_the_hook() {
        let t = Instant::now();
        let mut s = settled(t);
        let g = s.opening();
        assert_eq!(s.ended(g, t + 60 * S, 60 * S, Ended::Guest), None);
        assert_eq!(s.due(), None);
        assert_eq!(s.start(t + 3600 * S), None);
        // Nor does a short one, nor the backend going.
        let g = s.opening();
        assert_eq!(s.ended(g, t, Duration::ZERO, Ended::Guest), None);
        let g = s.opening();
        assert_eq!(s.ended(g, t, Duration::ZERO, Ended::Backend), None);
        assert_eq!(s.start(t + 3600 * S), None);
    }

    #[test]
    fn dom0_ends_back_off_doubling_to_the_cap_and_reset_after_a_lasting_stream() {
        let t0 = Instant::now();
        let mut s = settled(t0);
        let mut t = t0;
        let mut pauses = Vec::new();
        // The desktop lasted a minute, then the proxy went: 1 s. Then each redial's
        // stream is refused (the proxy is still down): 2, 4, 8, 8 s.
        let g = s.opening();
        pauses.push(s.ended(g, t, 60 * S, Ended::Dom0).unwrap());
        for _ in 0..4 {
            let due = s.due().unwrap();
            assert_eq!(
                s.start(due - Duration::from_millis(1)),
                None,
                "not before its time"
            );
            t = due;
            assert_eq!(s.start(t), Some(Why::Redial));
            s.finished();
            let g = s.opening();
            pauses.push(s.refused(g, t).unwrap());
        }
        assert_eq!(pauses, [S, 2 * S, 4 * S, 8 * S, 8 * S]);
        // A stream that dom0 drops soon after is a failure too: the cap again.
        t = s.due().unwrap();
        assert_eq!(s.start(t), Some(Why::Redial));
        s.finished();
        let g = s.opening();
        assert_eq!(s.ended(g, t, 3 * S, Ended::Dom0), Some(8 * S));
        // One that lasted resets the pause.
        t = s.due().unwrap();
        assert_eq!(s.start(t), Some(Why::Redial));
        s.finished();
        let g = s.opening();
        assert_eq!(s.ended(g, t, 10 * S, Ended::Dom0), Some(S));
    }

    #[test]
    fn no_run_while_another_stream_of_the_service_is_open() {
        let t = Instant::now();
        let mut s = settled(t);
        let a = s.opening();
        let b = s.opening();
        assert_eq!(s.ended(a, t, 60 * S, Ended::Dom0), None);
        assert_eq!(s.due(), None);
        // The last one going is what counts.
        assert_eq!(s.ended(b, t, 60 * S, Ended::Dom0), Some(S));
        // A connection made meanwhile (the desktop came back by itself) cancels it.
        let c = s.opening();
        assert_eq!(s.start(t + S), None);
        assert_eq!(s.ended(c, t + S, 60 * S, Ended::Guest), None);
        assert_eq!(s.start(t + 3600 * S), None);
    }

    #[test]
    fn one_run_at_a_time_and_none_without_a_backend() {
        let t = Instant::now();
        let mut s = Schedule::new(Some(redial()));
        s.connected(t);
        assert_eq!(s.start(t), Some(Why::Connected));
        // A redial falls due while the connect run is still going: it waits.
        let g = s.opening();
        assert_eq!(s.refused(g, t), Some(S));
        assert_eq!(s.start(t + S), None);
        s.finished();
        assert_eq!(s.start(t + S), Some(Why::Redial));
        s.finished();
        // The backend goes: what was pending is dropped, late ends are ignored.
        let g = s.opening();
        s.gone();
        assert_eq!(s.ended(g, t, Duration::ZERO, Ended::Dom0), None);
        assert_eq!(s.start(t + 3600 * S), None);
        // It comes back: the connect run, and pauses from the start again.
        s.connected(t + 10 * S);
        assert_eq!(s.start(t + 10 * S), Some(Why::Connected));
        s.finished();
        let g = s.opening();
        assert_eq!(s.refused(g, t + 10 * S), Some(S));
    }

    #[test]
    fn without_redial_only_connections_run_it() {
        let t = Instant::now();
        let mut s = Schedule::new(None);
        s.connected(t);
        assert_eq!(s.start(t), Some(Why::Connected));
        s.finished();
        let g = s.opening();
        assert_eq!(s.ended(g, t, 60 * S, Ended::Dom0), None);
        let g = s.opening();
        assert_eq!(s.refused(g, t), None);
        assert_eq!(s.start(t + 3600 * S), None);
    }

    #[test]
    fn who_ended_by_stream_end() {
        use StreamEnd::*;
        let dom0 = [
            Closed { peer_first: true },
            ResetByPeer { peer_first: true },
        ];
        let guest = [
            Closed { peer_first: false },
            ResetByPeer { peer_first: false },
            ResetLocal("socket read: reset".into()),
        ];
        for e in dom0 {
            assert_eq!(who_ended(&e), Ended::Dom0, "{e:?}");
        }
        for e in guest {
            assert_eq!(who_ended(&e), Ended::Guest, "{e:?}");
        }
        assert_eq!(who_ended(&MuxClosed), Ended::Backend);
    }

    /// The whole path with real TCP connections on both ends of a multiplexer
    /// pair: `xvnc` plays the guest program, the agent's socket goes into the
    /// guest's multiplexer, the backend's into dom0's, and `proxy` plays the proxy.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn real_connections_tell_who_ended_first() {
        use tokio::io::AsyncReadExt;
        use tokio::net::{TcpListener, TcpStream};
        use xenvt_ring::mux::{self, Incoming, MuxConfig, MuxHandle};
        use xenvt_ring::platform::heap::HeapHost;
        use xenvt_ring::{Channel, ChannelConfig};

        async fn tcp_pair() -> (TcpStream, TcpStream) {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = l.local_addr().unwrap();
            let (c, a) = tokio::join!(TcpStream::connect(addr), l.accept());
            (c.unwrap(), a.unwrap().0)
        }
        /// (xvnc, proxy, the guest's stream).
        async fn desktop(
            guest: &MuxHandle,
            dom0_in: &mut Incoming,
        ) -> (TcpStream, TcpStream, mux::StreamHandle) {
            let (xvnc, agent) = tcp_pair().await;
            let (backend, proxy) = tcp_pair().await;
            let accept = async {
                let req = dom0_in.next().await.unwrap();
                req.accept(backend);
            };
            let (st, ()) = tokio::join!(guest.open("vnc", agent), accept);
            (xvnc, proxy, st.unwrap())
        }
        async fn eof(s: &mut TcpStream) {
            let mut b = [0u8; 16];
            assert_eq!(s.read(&mut b).await.unwrap(), 0);
        }
        /// What a program does when its connection ends: reads until EOF or a
        /// reset, then closes.
        async fn gone(mut s: TcpStream) {
            let mut b = [0u8; 64];
            while matches!(s.read(&mut b).await, Ok(n) if n > 0) {}
        }
        /// A program killed: its connection is reset.
        fn killed(s: TcpStream) {
            s.set_zero_linger().unwrap();
            drop(s);
        }
        async fn who(st: mux::StreamHandle, other: TcpStream) -> Ended {
            let (end, ()) = tokio::join!(st.done(), gone(other));
            who_ended(&end)
        }

        let run = async {
            let host = HeapHost::new();
            let cfg = ChannelConfig::default();
            let srv = Channel::server(&host.domain(1), 0, cfg).unwrap();
            let cli =
                Channel::client(&host.domain(0), 1, srv.ring_ref(), srv.event_port()).unwrap();
            let mcfg = MuxConfig::default();
            let (g, d) = tokio::join!(mux::start(srv, mcfg), mux::start(cli, mcfg));
            let (guest, _guest_in) = g.unwrap();
            let (dom0, mut dom0_in) = d.unwrap();

            // The proxy exits, or is killed: Xvnc sees the end and closes in turn.
            let (xvnc, proxy, st) = desktop(&guest, &mut dom0_in).await;
            drop(proxy);
            assert_eq!(who(st, xvnc).await, Ended::Dom0);
            let (xvnc, proxy, st) = desktop(&guest, &mut dom0_in).await;
            killed(proxy);
            assert_eq!(who(st, xvnc).await, Ended::Dom0);

            // Xvnc disconnects, or is killed: the proxy closes in turn.
            let (xvnc, proxy, st) = desktop(&guest, &mut dom0_in).await;
            drop(xvnc);
            assert_eq!(who(st, proxy).await, Ended::Guest);
            let (xvnc, proxy, st) = desktop(&guest, &mut dom0_in).await;
            killed(xvnc);
            assert_eq!(who(st, proxy).await, Ended::Guest);

            // Xvnc disconnects, and the proxy is killed once it has seen that: dom0
            // resets a stream the guest had already ended.
            let (xvnc, mut proxy, st) = desktop(&guest, &mut dom0_in).await;
            drop(xvnc);
            eof(&mut proxy).await;
            killed(proxy);
            assert_eq!(who_ended(&st.done().await), Ended::Guest);

            // The backend goes away.
            let (_xvnc, _proxy, st) = desktop(&guest, &mut dom0_in).await;
            dom0.shutdown();
            assert_eq!(who_ended(&st.done().await), Ended::Backend);
        };
        tokio::time::timeout(Duration::from_secs(60), run)
            .await
            .expect("no hang");
    }
}
