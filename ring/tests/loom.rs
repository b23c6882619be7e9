//! Model checks of the real ring and notify code under loom.
//!
//! Run with:
//! `RUSTFLAGS="--cfg xenvt_loom" cargo test -p xenvt-ring --release --test loom`
//!
//! The ring's [`Producer`], [`Consumer`] and [`Notifier`] are generic over
//! [`SharedMem`]; here that is loom atomics for the indices and notify bytes and
//! one loom `UnsafeCell` per data byte, so loom both explores the interleavings and
//! flags any data byte read that is not ordered after its write.
//!
//! The `weakened_*` tests run the same code on memory that downgrades the index
//! orderings, or the notify orderings and fences, to `Relaxed`. They must fail: that shows the
//! orderings in the ring are what makes it correct, and that these tests can see it.
#![cfg(xenvt_loom)]

use std::sync::atomic::Ordering;

use loom::cell::UnsafeCell;
use loom::sync::atomic::{AtomicU32, AtomicU8};
use loom::sync::Notify;
// std `Arc`, not loom's: loom's panics when dropped while a failing model unwinds,
// which aborts the `should_panic` tests. Reference counting is not under test.
use loom::thread;
use std::sync::Arc;
use xenvt_ring::layout::{CLI_NOTIFY, NOTIFY_READ, NOTIFY_WRITE, SRV_NOTIFY};
use xenvt_ring::notify::Notifier;
use xenvt_ring::ring::{Consumer, Producer, SharedMem};
use xenvt_ring::spin::Spinner;
use xenvt_ring::{Error, Result};

const SIZE: u32 = 2;

struct Mem {
    /// `ring_shared` at offset 0: cons (0), prod (4).
    cons: AtomicU32,
    prod: AtomicU32,
    cli_notify: AtomicU8,
    srv_notify: AtomicU8,
    data: Vec<UnsafeCell<u8>>,
}

// SAFETY: every data cell access goes through loom's `UnsafeCell`, which checks
// (and fails the test on) any access not ordered by the ring's protocol.
unsafe impl Sync for Mem {}
// SAFETY: as above; loom types are Send.
unsafe impl Send for Mem {}

#[derive(Clone)]
struct View {
    mem: Arc<Mem>,
    /// Downgrade the index orderings to Relaxed.
    weak: bool,
    /// Downgrade the notify-byte orderings to Relaxed and skip fences.
    weak_notify: bool,
}

impl View {
    fn o(&self, o: Ordering) -> Ordering {
        if self.weak {
            Ordering::Relaxed
        } else {
            o
        }
    }
    fn on(&self, o: Ordering) -> Ordering {
        if self.weak_notify {
            Ordering::Relaxed
        } else {
            o
        }
    }
    fn word(&self, off: usize) -> Result<&AtomicU32> {
        match off {
            0 => Ok(&self.mem.cons),
            4 => Ok(&self.mem.prod),
            _ => Err(Error::Invalid(format!("no word at {off}"))),
        }
    }
    fn byte(&self, off: usize) -> Result<&AtomicU8> {
        match off {
            CLI_NOTIFY => Ok(&self.mem.cli_notify),
            SRV_NOTIFY => Ok(&self.mem.srv_notify),
            _ => Err(Error::Invalid(format!("no byte at {off}"))),
        }
    }
}

impl SharedMem for View {
    fn len(&self) -> usize {
        self.mem.data.len()
    }
    fn load_u32(&self, off: usize, o: Ordering) -> Result<u32> {
        Ok(self.word(off)?.load(self.o(o)))
    }
    fn store_u32(&self, off: usize, v: u32, o: Ordering) -> Result<()> {
        self.word(off)?.store(v, self.o(o));
        Ok(())
    }
    fn load_u8(&self, off: usize, o: Ordering) -> Result<u8> {
        Ok(self.byte(off)?.load(self.on(o)))
    }
    fn store_u8(&self, off: usize, v: u8, o: Ordering) -> Result<()> {
        self.byte(off)?.store(v, self.on(o));
        Ok(())
    }
    fn fetch_or_u8(&self, off: usize, v: u8, o: Ordering) -> Result<u8> {
        Ok(self.byte(off)?.fetch_or(v, self.on(o)))
    }
    fn fetch_and_u8(&self, off: usize, v: u8, o: Ordering) -> Result<u8> {
        Ok(self.byte(off)?.fetch_and(v, self.on(o)))
    }
    fn fence(&self, o: Ordering) {
        if !self.weak_notify {
            loom::sync::atomic::fence(o);
        }
    }
    fn copy_in(&self, off: usize, src: &[u8]) -> Result<()> {
        for (i, b) in src.iter().enumerate() {
            // SAFETY: loom's cell checks this write is not concurrent with a read.
            self.mem.data[off + i].with_mut(|p| unsafe { *p = *b });
        }
        Ok(())
    }
    fn copy_out(&self, off: usize, dst: &mut [u8]) -> Result<()> {
        for (i, b) in dst.iter_mut().enumerate() {
            // SAFETY: loom's cell checks this read is ordered after the write.
            *b = self.mem.data[off + i].with(|p| unsafe { *p });
        }
        Ok(())
    }
}

fn mem() -> Arc<Mem> {
    Arc::new(Mem {
        cons: AtomicU32::new(0),
        prod: AtomicU32::new(0),
        cli_notify: AtomicU8::new(0),
        srv_notify: AtomicU8::new(0),
        data: (0..SIZE).map(|_| UnsafeCell::new(0)).collect(),
    })
}

/// Producer sends 1, 2, 3 through a 2-byte ring (so it wraps and fills); the
/// consumer must see exactly those bytes, with each data read ordered after its
/// write (loom's cell check) and never a space reuse before the read finished.
fn index_protocol(weak_producer: bool) {
    loom::model(move || {
        let m = mem();
        let pv = View {
            mem: m.clone(),
            weak: weak_producer,
            weak_notify: false,
        };
        let cv = View {
            mem: m,
            weak: false,
            weak_notify: false,
        };
        let mut p = Producer::new(pv.clone(), 0, pv, SIZE, 0).unwrap();
        let mut c = Consumer::new(cv.clone(), 0, cv, SIZE, 0).unwrap();
        let t = thread::spawn(move || {
            let msg = [1u8, 2, 3];
            let mut off = 0;
            while off < msg.len() {
                let n = p.write(&msg[off..]).unwrap();
                off += n;
                if n == 0 {
                    thread::yield_now();
                }
            }
        });
        let spinner = Spinner::new(std::time::Duration::from_nanos(1));
        let tick = std::cell::Cell::new(0u64);
        let mut got = Vec::new();
        while got.len() < 3 {
            let mut b = [0u8; 2];
            let n = c.read(&mut b).unwrap();
            got.extend_from_slice(&b[..n]);
            if n == 0 {
                thread::yield_now();
            }
        }
        assert_eq!(got, [1, 2, 3]);
        t.join().unwrap();
    });
}

#[test]
fn ring_index_protocol() {
    index_protocol(false);
}

/// A Relaxed publish of `prod` (where Release is needed) lets the consumer read
/// data bytes not yet ordered after their write: loom reports the race.
#[test]
#[should_panic(expected = "Causality violation")]
fn weakened_ring_index_protocol_fails() {
    index_protocol(true);
}

/// Both sides sleep on their event channel (a loom `Notify`, which is a pending
/// flag like an event-channel port) after posting a request and re-checking; they
/// kick only when the peer's request bit was set. A lost wakeup leaves a thread
/// blocked forever, which loom reports as a deadlock.
///
/// With `spin`, the consumer first looks at the ring through the stream's spin
/// policy ([`Spinner`]; a budget of one clock tick, so one probe, which keeps the
/// model small) before it posts its request: the spin may find the data or give
/// up, and either way no wakeup may be lost.
fn notify_handshake(weak: bool, spin: bool) {
    loom::model(move || {
        let m = mem();
        let srv = View {
            mem: m.clone(),
            weak: false,
            weak_notify: weak,
        };
        let cli = View {
            mem: m,
            weak: false,
            weak_notify: weak,
        };
        // Client produces into the ring; the server consumes.
        let mut p = Producer::new(cli.clone(), 0, cli.clone(), SIZE, 0).unwrap();
        let mut c = Consumer::new(srv.clone(), 0, srv.clone(), SIZE, 0).unwrap();
        let cli_n = Notifier::new(cli, SRV_NOTIFY, CLI_NOTIFY);
        let srv_n = Notifier::new(srv, CLI_NOTIFY, SRV_NOTIFY);
        let srv_evt = Arc::new(Notify::new());
        let cli_evt = Arc::new(Notify::new());
        let (se, ce) = (srv_evt.clone(), cli_evt.clone());
        let t = thread::spawn(move || {
            let msg = [7u8, 8, 9];
            let mut off = 0;
            while off < msg.len() {
                let n = p.write(&msg[off..]).unwrap();
                if n > 0 {
                    off += n;
                    if cli_n.take_request(NOTIFY_WRITE).unwrap() {
                        se.notify();
                    }
                    continue;
                }
                cli_n.request(NOTIFY_READ).unwrap();
                if p.writable().unwrap() > 0 {
                    continue;
                }
                ce.wait();
            }
        });
        let spinner = Spinner::new(std::time::Duration::from_nanos(1));
        let tick = std::cell::Cell::new(0u64);
        let mut got = Vec::new();
        while got.len() < 3 {
            let mut b = [0u8; 2];
            let n = c.read(&mut b).unwrap();
            if n > 0 {
                got.extend_from_slice(&b[..n]);
                if srv_n.take_request(NOTIFY_READ).unwrap() {
                    cli_evt.notify();
                }
                continue;
            }
            if spin {
                let hit = spinner.spin_clocked(
                    1,
                    (),
                    || c.readable().unwrap() > 0,
                    |()| {
                        tick.set(tick.get() + 1);
                        tick.get()
                    },
                );
                if hit {
                    continue;
                }
            }
            srv_n.request(NOTIFY_WRITE).unwrap();
            if c.readable().unwrap() > 0 {
                continue;
            }
            srv_evt.wait();
        }
        assert_eq!(got, [7, 8, 9]);
        t.join().unwrap();
    });
}

#[test]
fn notify_no_lost_wakeup() {
    notify_handshake(false, false);
}

#[test]
fn spin_then_sleep_loses_no_wakeup() {
    notify_handshake(false, true);
}

/// With Relaxed request/clear and no fences (indices still Release/Acquire), a
/// side can read a stale index after posting its request while the other side
/// misses the request: both sleep, and loom reports the deadlock.
#[test]
#[should_panic(expected = "deadlock")]
fn weakened_notify_loses_a_wakeup() {
    notify_handshake(true, false);
}
