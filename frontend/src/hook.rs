//! The command that makes the guest connect its desktop, e.g. asking the X
//! server for its reverse VNC connection, and when it runs.
//!
//! It runs when a backend (re)connects, and again, with a growing pause, when
//! dom0 drops the stream it made (the proxy restarted) while the backend stays:
//! nothing else would ask Xvnc to connect again. An end the guest caused (Xvnc
//! closed the connection) never brings it back. One task runs it, so there is at
//! most one run at a time; it has a deadline and its output is logged line by
//! line (bounded). The daemon never waits for it.

use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::net::TcpStream;
use tokio::process::Command;
use tokio::sync::Notify;
use tracing::{debug, info, warn};
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

/// Linux TCP states (`include/net/tcp_states.h`).
mod state {
    pub const CLOSE: u8 = 7;
    pub const CLOSE_WAIT: u8 = 8;
    pub const LAST_ACK: u8 = 9;
    pub const TIME_WAIT: u8 = 6;
}

/// Who ended a stream, from how it ended and the state of our side of the
/// guest's TCP connection, taken while we still hold it.
///
/// - CLOSE_WAIT or LAST_ACK: the guest's FIN came before ours.
/// - CLOSE: a RST from the guest, or both FINs sent. Then the side that sent the
///   first FIN holds the TIME_WAIT: if it is ours (`our_time_wait`), dom0's end
///   came first.
/// - Anything else (established, FIN_WAIT, CLOSING): the guest had not closed.
pub fn who_ended(
    end: &StreamEnd,
    tcp_state: Option<u8>,
    our_time_wait: impl FnOnce() -> bool,
) -> Ended {
    if *end == StreamEnd::MuxClosed {
        return Ended::Backend;
    }
    match tcp_state {
        // Cannot tell: never risk bringing back what the guest closed.
        None => Ended::Guest,
        Some(state::CLOSE_WAIT | state::LAST_ACK) => Ended::Guest,
        Some(state::CLOSE) if our_time_wait() => Ended::Dom0,
        Some(state::CLOSE) => Ended::Guest,
        Some(_) => Ended::Dom0,
    }
}

/// Our side of a guest connection, kept open (a duplicate descriptor) until the
/// stream has ended so its TCP state can still be read: the multiplexer closes
/// its own descriptor when the stream ends, and an abortive close would erase
/// the state.
#[derive(Debug)]
pub struct Probe {
    fd: OwnedFd,
    local: SocketAddr,
    peer: SocketAddr,
}

impl Probe {
    /// Duplicates `sock`'s descriptor; `None` if that fails (then no redial).
    pub fn new(sock: &TcpStream) -> Option<Probe> {
        Some(Probe {
            fd: sock.as_fd().try_clone_to_owned().ok()?,
            local: sock.local_addr().ok()?,
            peer: sock.peer_addr().ok()?,
        })
    }

    /// Who ended the stream; dropping the probe afterwards performs the close
    /// the multiplexer asked for (FIN or RST).
    pub fn ended(self, end: &StreamEnd) -> Ended {
        who_ended(end, tcp_state(&self.fd), || {
            time_wait_held(self.local, self.peer)
        })
    }
}

/// `tcpi_state`, the first byte of `struct tcp_info`.
fn tcp_state(fd: &OwnedFd) -> Option<u8> {
    let mut buf = [0u8; 8];
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: `fd` is an open descriptor we own for the whole call; `buf` and
    // `len` are live locals, and the kernel writes at most `len` bytes into `buf`
    // and stores the length it wrote in `len`.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            buf.as_mut_ptr().cast(),
            &mut len,
        )
    };
    (r == 0 && len >= 1).then_some(buf[0])
}

/// The most of `/proc/net/tcp{,6}` we read: a guest has few sockets, and a cut
/// table only means "not found", which never re-runs the hook.
const MAX_PROC_NET: u64 = 8 << 20;

/// Whether the connection `local` <-> `peer` sits in TIME_WAIT on our side.
/// A read of a small in-memory file, once per stream end of one service.
fn time_wait_held(local: SocketAddr, peer: SocketAddr) -> bool {
    // A dual-stack socket's connections are in the IPv6 table, even IPv4 ones.
    let file = if local.is_ipv4() {
        "/proc/net/tcp"
    } else {
        "/proc/net/tcp6"
    };
    let mut text = String::new();
    let read =
        std::fs::File::open(file).and_then(|f| f.take(MAX_PROC_NET).read_to_string(&mut text));
    if let Err(e) = read {
        debug!("{file}: {e}");
        return false;
    }
    in_time_wait(&text, unmap(local), unmap(peer))
}

/// An IPv4 address seen through a dual-stack socket, as plain IPv4.
fn unmap(a: SocketAddr) -> SocketAddr {
    match a.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), a.port()),
            None => a,
        },
        IpAddr::V4(_) => a,
    }
}

/// Finds `local` -> `peer` (IPv4-mapped addresses given as plain IPv4) in
/// TIME_WAIT in the text of `/proc/net/tcp{,6}`.
pub fn in_time_wait(table: &str, local: SocketAddr, peer: SocketAddr) -> bool {
    table.lines().skip(1).any(|l| {
        let mut f = l.split_whitespace().skip(1);
        let (Some(l), Some(r), Some(st)) = (f.next(), f.next(), f.next()) else {
            return false;
        };
        u8::from_str_radix(st, 16) == Ok(state::TIME_WAIT)
            && proc_addr(l).map(unmap) == Some(local)
            && proc_addr(r).map(unmap) == Some(peer)
    })
}

/// `0100007F:1F90` (IPv4) or 32 hex digits and a port (IPv6): the kernel prints
/// each 32-bit word of the address as a host-order number.
fn proc_addr(s: &str) -> Option<SocketAddr> {
    let (ip, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        let w = ip.get(i * 8..i * 8 + 8)?;
        Some(u32::from_str_radix(w, 16).ok()?.to_ne_bytes())
    };
    let ip = match ip.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(b))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
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
    fn who_ended_by_tcp_state() {
        let closed = StreamEnd::Closed;
        let rst = StreamEnd::ResetByPeer;
        // The guest's FIN came first.
        for st in [state::CLOSE_WAIT, state::LAST_ACK] {
            assert_eq!(who_ended(&closed, Some(st), || true), Ended::Guest);
            assert_eq!(who_ended(&rst, Some(st), || true), Ended::Guest);
        }
        // Fully closed: the TIME_WAIT tells.
        assert_eq!(who_ended(&closed, Some(state::CLOSE), || true), Ended::Dom0);
        assert_eq!(
            who_ended(&closed, Some(state::CLOSE), || false),
            Ended::Guest
        );
        // Still open on the guest's side (established 1, FIN_WAIT1 4, FIN_WAIT2 5, CLOSING 11).
        for st in [1, 4, 5, 11] {
            assert_eq!(who_ended(&rst, Some(st), || false), Ended::Dom0);
        }
        assert_eq!(who_ended(&closed, None, || true), Ended::Guest);
        assert_eq!(
            who_ended(&StreamEnd::MuxClosed, Some(1), || true),
            Ended::Backend
        );
    }

    #[test]
    fn proc_net_tcp_lines() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:157C 0100007F:A1B2 06 00000000:00000000 03:000012C4 00000000     0        0 0 3 0000000000000000\n\
   1: 0100007F:157C 0100007F:A1B3 01 00000000:00000000 00:00000000 00000000     0        0 9 1 0000000000000000\n";
        let local: SocketAddr = "127.0.0.1:5500".parse().unwrap();
        // On a little-endian host 127.0.0.1 prints as 0100007F.
        if cfg!(target_endian = "little") {
            assert!(in_time_wait(
                table,
                local,
                "127.0.0.1:41394".parse().unwrap()
            ));
            assert!(!in_time_wait(
                table,
                local,
                "127.0.0.1:41395".parse().unwrap()
            ));
            assert!(!in_time_wait(
                table,
                "127.0.0.1:41394".parse().unwrap(),
                local
            ));
            let v6 = "  sl\n   0: 0000000000000000FFFF00000100007F:157C 0000000000000000FFFF00000100007F:A1B2 06 0\n";
            assert!(in_time_wait(v6, local, "127.0.0.1:41394".parse().unwrap()));
        }
        for junk in [
            "",
            "x\n",
            "h\n 0: zz:1 yy:2 06\n",
            "h\n 0: 0100007F 0100007F:1 06\n",
        ] {
            assert!(!in_time_wait(junk, local, local));
        }
    }

    /// The kernel facts `who_ended` relies on, with real loopback connections:
    /// `ours` plays the agent's socket, `guest` Xvnc's.
    #[tokio::test]
    async fn real_connections_tell_who_closed_first() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        async fn pair_on(bind: &str) -> Option<(TcpStream, TcpStream)> {
            let l = tokio::net::TcpListener::bind(bind).await.ok()?;
            let port = l.local_addr().unwrap().port();
            let guest = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            let (ours, _) = l.accept().await.unwrap();
            Some((ours, guest))
        }
        async fn pair() -> (TcpStream, TcpStream) {
            pair_on("127.0.0.1:0").await.unwrap()
        }
        async fn eof(s: &mut TcpStream) {
            let mut b = [0u8; 16];
            assert_eq!(s.read(&mut b).await.unwrap(), 0);
        }
        // dom0 first: we send FIN, the guest answers by closing. Also on a
        // dual-stack listener, where IPv4 peers look IPv4-mapped (if the host has IPv6).
        for bind in ["127.0.0.1:0", "[::]:0"] {
            let Some((mut ours, mut guest)) = pair_on(bind).await else {
                continue;
            };
            let probe = Probe::new(&ours).unwrap();
            ours.shutdown().await.unwrap();
            eof(&mut guest).await;
            drop(guest);
            eof(&mut ours).await;
            drop(ours);
            assert_eq!(probe.ended(&StreamEnd::Closed), Ended::Dom0, "{bind}");
        }

        // The guest first: it closes, we answer with our FIN.
        let (mut ours, guest) = pair().await;
        let probe = Probe::new(&ours).unwrap();
        drop(guest);
        eof(&mut ours).await;
        ours.shutdown().await.unwrap();
        drop(ours);
        assert_eq!(probe.ended(&StreamEnd::Closed), Ended::Guest);

        // The guest closed, then dom0 reset the stream.
        let (mut ours, guest) = pair().await;
        let probe = Probe::new(&ours).unwrap();
        drop(guest);
        eof(&mut ours).await;
        drop(ours);
        assert_eq!(probe.ended(&StreamEnd::ResetByPeer), Ended::Guest);

        // dom0 reset the stream while the guest was connected.
        let (ours, _guest) = pair().await;
        let probe = Probe::new(&ours).unwrap();
        drop(ours);
        assert_eq!(probe.ended(&StreamEnd::ResetByPeer), Ended::Dom0);

        // The guest reset it (Xvnc killed with unread data).
        let (mut ours, guest) = pair().await;
        let probe = Probe::new(&ours).unwrap();
        ours.write_all(b"unread").await.unwrap();
        // Closing with unread data resets the connection.
        guest.readable().await.unwrap();
        drop(guest);
        let mut b = [0u8; 16];
        assert!(ours.read(&mut b).await.is_err(), "a reset");
        drop(ours);
        assert_eq!(
            probe.ended(&StreamEnd::ResetLocal("x".into())),
            Ended::Guest
        );
    }
}
