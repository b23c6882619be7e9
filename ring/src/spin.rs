//! A short, bounded spin before sleeping on the event channel.
//!
//! A wakeup through the event channel costs far more than the ring itself: tens of
//! microseconds between two processes, and from 0.25 ms to over 10 ms between two
//! domains under QEMU/TCG (a sleeping vCPU must be scheduled again). When the peer
//! is running and about to produce (a round trip, a reader draining a full ring),
//! looking at the ring indices for a few microseconds finds the data without that
//! cost. The spin only delays the sleep: once the budget is spent the waiter arms
//! its notify request, re-checks and sleeps exactly as without it, so an idle
//! stream costs one budget per wait and then nothing.
//!
//! # When and how long it spins
//!
//! Spinning helps only if the peer can run meanwhile. Counting our own CPUs does
//! not tell: under Xen each domain often has one vCPU, yet the peer's vCPU runs
//! beside ours, and that is exactly where spinning pays most. What does tell is
//! what a sleep costs, and spinning longer than a sleep would have lasted cannot
//! pay (the classic rule for spin-then-block: spin at most what blocking costs,
//! and never pay more than twice the best choice). So each waiter measures its
//! sleeps, from arming to finding the ring ready, and spins for at most a moving
//! average of them (each sample capped at the budget). Between two processes on
//! one core, or on a busy machine, a sleep costs tens of microseconds, and the
//! spin shrinks to that; between two domains under TCG, where a sleep lasts
//! 0.25 ms or more, the whole budget is used.
//!
//! Only waits after small transfers spin ([`Spinner::moved`]: the last read
//! took at most [`SMALL`] bytes). Small messages are latency-bound, and a round
//! trip is where a wakeup hurts most. Bulk transfers are bound by copying and
//! gain from sleeping: the sleeping side lets its peer fill (or drain) the ring
//! and then moves it in one batch, while a spinning side moves it in slivers and
//! takes a core its peer may need; on the simulated host with 4 and 64 KiB rings
//! and a busy machine, spinning on every wait cut throughput 15 to 45 times
//! (docs/benchmarks.md). For the same reason a writer waiting for space (a full
//! ring is bulk by definition) does not spin. A half already asleep that is
//! polled again (woken for the other half) does not spin again either. An idle
//! stream costs one budget per wait, that is per message arriving after a pause.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The default budget. A round trip through the ring between two running
/// domains takes 50 to 80 us under TCG (a few us between two processes); under
/// a loaded host a vCPU is often descheduled for longer, and a spin shorter than
/// that lets both ends fall asleep (docs/benchmarks.md).
pub const DEFAULT_BUDGET: Duration = Duration::from_micros(500);

/// The environment variable that overrides [`DEFAULT_BUDGET`] for every stream
/// of the process, in microseconds (0 disables spinning; at most [`MAX_BUDGET`]).
pub const ENV_BUDGET: &str = "XENVT_SPIN_US";

/// The largest budget [`ENV_BUDGET`] may ask for: a spin is a delay before
/// sleeping, not a polling loop.
pub const MAX_BUDGET: Duration = Duration::from_millis(10);

/// The budget new streams get: [`ENV_BUDGET`] if set and valid, read once per
/// process, else [`DEFAULT_BUDGET`].
pub fn default_budget() -> Duration {
    static BUDGET: OnceLock<Duration> = OnceLock::new();
    *BUDGET.get_or_init(|| {
        let v = std::env::var(ENV_BUDGET).ok();
        parse_budget(v.as_deref()).unwrap_or_else(|| {
            tracing::warn!("{ENV_BUDGET}: not a number of microseconds, using the default");
            DEFAULT_BUDGET
        })
    })
}

/// The budget a value of [`ENV_BUDGET`] asks for (unset: the default); `None` if invalid.
fn parse_budget(v: Option<&str>) -> Option<Duration> {
    let Some(v) = v else {
        return Some(DEFAULT_BUDGET);
    };
    let us = v.trim().parse::<u64>().ok()?;
    Some(Duration::from_micros(us).min(MAX_BUDGET))
}

/// The largest transfer after which the next wait spins.
pub const SMALL: usize = 512;

/// Probes between two reads of the clock: the clock can cost more than a probe.
pub const CLOCK_STRIDE: u32 = 8;

/// Polls `probe` until it returns true (then true) or until `budget_ns`, as
/// measured by `now` (nanoseconds), is spent (then false). `now` is read once at
/// the start and then every `stride` probes. A zero budget returns false at once
/// without probing.
pub fn spin_with(
    budget_ns: u64,
    stride: u32,
    mut now: impl FnMut() -> u64,
    mut probe: impl FnMut() -> bool,
) -> bool {
    if budget_ns == 0 {
        return false;
    }
    let stride = stride.max(1);
    let start = now();
    let mut i = 0u32;
    loop {
        if probe() {
            return true;
        }
        i = i.wrapping_add(1);
        if i % stride == 0 && now().saturating_sub(start) >= budget_ns {
            return false;
        }
        std::hint::spin_loop();
    }
}

/// Nanoseconds on the process's monotonic clock (never 0).
fn mono_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let t0 = *EPOCH.get_or_init(Instant::now);
    u64::try_from(t0.elapsed().as_nanos())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// One waiter's spin policy: the budget and the measured cost of sleeping.
///
/// Atomics only so that the owner can sit in shared state; one waiter uses it at
/// a time, and a race between two would only misplace a sample.
#[derive(Debug)]
pub struct Spinner {
    budget_ns: AtomicU64,
    /// Moving average of sleeps (ns, each capped at the budget).
    sleep_avg_ns: AtomicU64,
    /// When the current sleep began ([`mono_ns`]); 0: not sleeping.
    slept_at: AtomicU64,
    /// Whether the last transfer was at most [`SMALL`] bytes.
    small: AtomicBool,
}

impl Default for Spinner {
    /// A policy with [`default_budget`].
    fn default() -> Self {
        Self::new(default_budget())
    }
}

impl Spinner {
    /// A policy with `budget` per wait; zero disables spinning.
    pub fn new(budget: Duration) -> Self {
        let s = Self {
            budget_ns: AtomicU64::new(0),
            sleep_avg_ns: AtomicU64::new(0),
            slept_at: AtomicU64::new(0),
            small: AtomicBool::new(true),
        };
        s.set_budget(budget);
        s
    }

    /// Changes the budget (zero disables spinning) and forgets past sleeps.
    pub fn set_budget(&self, budget: Duration) {
        let ns = u64::try_from(budget.as_nanos()).unwrap_or(u64::MAX);
        self.budget_ns.store(ns, Ordering::Relaxed);
        // Until a sleep is measured, assume it costs the whole budget.
        self.sleep_avg_ns.store(ns, Ordering::Relaxed);
        self.slept_at.store(0, Ordering::Relaxed);
    }

    /// How long the next spin may last: the budget, or less if sleeps are cheaper.
    pub fn effective_budget(&self) -> Duration {
        Duration::from_nanos(self.effective_ns())
    }

    fn effective_ns(&self) -> u64 {
        let b = self.budget_ns.load(Ordering::Relaxed);
        b.min(self.sleep_avg_ns.load(Ordering::Relaxed))
    }

    /// The waiter moved `n` bytes: only after a small transfer does its next
    /// wait spin.
    pub fn moved(&self, n: usize) {
        self.small.store(n <= SMALL, Ordering::Relaxed);
    }

    /// The waiter is about to sleep (it armed and found nothing). A sleep already
    /// under way keeps its start: a spurious wakeup does not end it.
    pub fn sleeping(&self) {
        self.sleeping_at(mono_ns());
    }

    /// The waiter found the ring ready; ends a sleep, if any, and counts it.
    pub fn ready(&self) {
        if self.slept_at.load(Ordering::Relaxed) != 0 {
            self.ready_at(mono_ns());
        }
    }

    /// [`Spinner::sleeping`] at `now_ns` (non-zero).
    pub fn sleeping_at(&self, now_ns: u64) {
        if self.slept_at.load(Ordering::Relaxed) == 0 {
            self.slept_at.store(now_ns.max(1), Ordering::Relaxed);
        }
    }

    /// [`Spinner::ready`] at `now_ns`.
    pub fn ready_at(&self, now_ns: u64) {
        let t0 = self.slept_at.swap(0, Ordering::Relaxed);
        if t0 == 0 {
            return;
        }
        let b = self.budget_ns.load(Ordering::Relaxed);
        let sample = now_ns.saturating_sub(t0).min(b);
        let avg = self.sleep_avg_ns.load(Ordering::Relaxed);
        // avg += (sample - avg) / 4, in unsigned arithmetic.
        let next = avg - avg / 4 + sample / 4;
        self.sleep_avg_ns.store(next, Ordering::Relaxed);
    }

    /// The budget per wait.
    pub fn budget(&self) -> Duration {
        Duration::from_nanos(self.budget_ns.load(Ordering::Relaxed))
    }

    /// Before sleeping: spins on `probe` for the effective budget. Whether `probe`
    /// became true (the caller then retries instead of sleeping).
    pub fn spin(&self, probe: impl FnMut() -> bool) -> bool {
        self.spin_clocked(CLOCK_STRIDE, Instant::now(), probe, |t0| {
            u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX)
        })
    }

    /// [`Spinner::spin`] with a given clock (tests and model checks).
    pub fn spin_clocked<C>(
        &self,
        stride: u32,
        clock: C,
        probe: impl FnMut() -> bool,
        now: impl Fn(&C) -> u64,
    ) -> bool {
        let budget_ns = self.effective_ns();
        if budget_ns == 0
            || !self.small.load(Ordering::Relaxed)
            || self.slept_at.load(Ordering::Relaxed) != 0
        {
            return false;
        }
        spin_with(budget_ns, stride, || now(&clock), probe)
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    /// A clock that advances `step` ns per read.
    fn ticking(step: u64) -> impl FnMut() -> u64 {
        let mut t = 0;
        move || {
            t += step;
            t
        }
    }

    #[test]
    fn the_environment_budget_is_checked() {
        assert_eq!(parse_budget(None), Some(DEFAULT_BUDGET));
        assert_eq!(parse_budget(Some("0")), Some(Duration::ZERO));
        assert_eq!(parse_budget(Some(" 50 ")), Some(Duration::from_micros(50)));
        assert_eq!(parse_budget(Some("99999999999")), Some(MAX_BUDGET));
        assert_eq!(parse_budget(Some("-1")), None);
        assert_eq!(parse_budget(Some("1ms")), None);
    }

    #[test]
    fn the_budget_is_honoured() {
        let probes = Cell::new(0u32);
        let reads = Cell::new(0u32);
        let mut clock = ticking(1_000);
        let hit = spin_with(
            10_000,
            4,
            || {
                reads.set(reads.get() + 1);
                clock()
            },
            || {
                probes.set(probes.get() + 1);
                false
            },
        );
        assert!(!hit);
        // Start at 1000; the 10th later read (at 11000) is 10000 past it.
        assert_eq!(reads.get(), 11);
        assert_eq!(probes.get(), 40);
    }

    #[test]
    fn zero_disables_it() {
        let probes = Cell::new(0u32);
        let hit = spin_with(0, 1, ticking(1), || {
            probes.set(probes.get() + 1);
            true
        });
        assert!(!hit);
        assert_eq!(probes.get(), 0);
        let s = Spinner::new(Duration::ZERO);
        assert!(!s.spin(|| panic!("probed with a zero budget")));
    }

    #[test]
    fn a_hit_during_the_spin_ends_it() {
        let probes = Cell::new(0u32);
        let hit = spin_with(u64::MAX, 3, ticking(1), || {
            probes.set(probes.get() + 1);
            probes.get() == 5
        });
        assert!(hit);
        assert_eq!(probes.get(), 5);
    }

    #[test]
    fn only_small_transfers_and_fresh_waits_spin() {
        let s = Spinner::new(Duration::from_nanos(10));
        let probes = Cell::new(0u32);
        let clock = Cell::new(0u64);
        let spin = || {
            let before = probes.get();
            s.spin_clocked(
                1,
                (),
                || {
                    probes.set(probes.get() + 1);
                    false
                },
                |()| {
                    clock.set(clock.get() + 100);
                    clock.get()
                },
            );
            probes.get() > before
        };
        assert!(spin(), "spins at first");
        s.moved(SMALL + 1);
        assert!(!spin(), "not after a bulk transfer");
        s.moved(SMALL);
        assert!(spin());
        s.sleeping_at(1);
        assert!(!spin(), "not while asleep");
        s.ready_at(2);
        assert!(spin());
    }

    #[test]
    fn cheap_sleeps_shorten_the_spin() {
        let s = Spinner::new(Duration::from_micros(200));
        assert_eq!(s.effective_budget(), Duration::from_micros(200));
        // Not sleeping: a ready ring changes nothing.
        s.ready_at(5_000_000);
        assert_eq!(s.effective_budget(), Duration::from_micros(200));
        // Sleeps of 20 us pull the spin towards 20 us.
        let mut t = 1_000_000;
        for _ in 0..40 {
            s.sleeping_at(t);
            s.sleeping_at(t + 5_000); // a spurious wakeup: the sleep goes on
            s.ready_at(t + 20_000);
            t += 1_000_000;
        }
        let e = s.effective_budget();
        assert!(
            e >= Duration::from_micros(20) && e < Duration::from_micros(21),
            "{e:?}"
        );
        // Long sleeps (an idle peer, a slow wakeup) count as the budget, no more.
        for _ in 0..40 {
            s.sleeping_at(t);
            s.ready_at(t + 900_000_000);
            t += 1_000_000_000;
        }
        let e = s.effective_budget();
        assert!(
            e <= Duration::from_micros(200) && e > Duration::from_micros(199),
            "{e:?}"
        );
        // The spin itself uses the shorter budget: with sleeps of 4 us measured on
        // a 100 us budget, a clock ticking 1 us per read ends the spin near 4 us.
        let s = Spinner::new(Duration::from_micros(100));
        for i in 0..40u64 {
            s.sleeping_at(1 + i * 100_000);
            s.ready_at(4_001 + i * 100_000);
        }
        let e = s.effective_budget().as_nanos() as u64;
        assert!((4_000..4_010).contains(&e), "{e}");
        let reads = Cell::new(0u64);
        let hit = s.spin_clocked(
            1,
            (),
            || false,
            |()| {
                reads.set(reads.get() + 1);
                reads.get() * 1_000
            },
        );
        assert!(!hit);
        // The start, then one read per microsecond until `e` has passed.
        assert_eq!(reads.get(), 1 + e.div_ceil(1_000));
    }
}
