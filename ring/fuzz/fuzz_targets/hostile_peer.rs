//! The fuzzer plays a hostile peer. As client, it scribbles indices, orders, live
//! and notify bytes and grants into our server's control page between our
//! operations; as server, it hands our client an arbitrary control page. We must
//! only ever return values within bounds or typed errors: never crash or hang.
#![no_main]

use std::sync::atomic::Ordering::Relaxed;

use libfuzzer_sys::fuzz_target;
use xenvt_ring::layout;
use xenvt_ring::platform::heap::HeapHost;
use xenvt_ring::shm::ShmView;
use xenvt_ring::{Channel, ChannelConfig, Platform};

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn u8(&mut self) -> Option<u8> {
        let (b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(*b)
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes([self.u8()?, self.u8()?]))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes([
            self.u8()?,
            self.u8()?,
            self.u8()?,
            self.u8()?,
        ]))
    }
}

/// Touches every byte of every segment, so a wild segment would fault.
fn touch(segs: [(*mut u8, usize); 2], write: bool) -> usize {
    let mut n = 0;
    for (p, len) in segs {
        for i in 0..len {
            // SAFETY: the channel hands out only in-ring segments, valid during
            // the callback; checking that claim is the point of this target.
            unsafe {
                let q = p.add(i);
                if write {
                    q.write_volatile(i as u8);
                } else {
                    let _ = q.read_volatile();
                }
            }
        }
        n += len;
    }
    n
}

fn as_server(mut inp: Input<'_>) {
    let host = HeapHost::new();
    let (lo, ro) = match inp.u8() {
        Some(b) => (10 + (b & 0x0f) % 11, 10 + (b >> 4) % 11),
        None => return,
    };
    let Ok(s) = Channel::server(
        &host.domain(1),
        0,
        ChannelConfig {
            left_order: lo,
            right_order: ro,
        },
    ) else {
        return;
    };
    let peer = host.domain(0);
    let Ok(evt) = peer.bind_interdomain(1, s.event_port()) else {
        return;
    };
    let Ok(page) = peer.map_pages(1, &[s.ring_ref()], true) else {
        return;
    };
    let v = ShmView::of(&*page);
    let mut buf = vec![0u8; 1 << 16];
    while let Some(op) = inp.u8() {
        let arg = inp.u8().unwrap_or(0) as usize;
        match op % 10 {
            0 => {
                let Some(w) = inp.u32() else { break };
                let _ = v.store_u32((arg % 4) * 4, w, Relaxed);
            }
            1 => {
                let _ = v.store_u8(layout::CLI_LIVE + arg % 4, inp.u8().unwrap_or(0), Relaxed);
            }
            2 => {
                let Some(w) = inp.u16() else { break };
                let _ = v.store_u16(layout::LEFT_ORDER + 2 * (arg % 2), w, Relaxed);
            }
            3 => {
                let Some(w) = inp.u32() else { break };
                let _ = v.store_u32(layout::GRANTS + 4 * (arg % 64), w, Relaxed);
            }
            4 => {
                if let Ok(n) = s.read(&mut buf[..arg * 256]) {
                    assert!(n <= arg * 256 && n <= 1 << lo);
                }
            }
            5 => {
                if let Ok(n) = s.write(&buf[..arg * 256]) {
                    assert!(n <= arg * 256 && n <= 1 << ro);
                }
            }
            6 => {
                let _ = s.prepare_read_wait();
                let _ = s.prepare_write_wait();
                let _ = s.peer_state();
            }
            7 => {
                let _ = s.read_with(|segs| Ok(touch(segs, false).min(arg)));
            }
            8 => {
                let _ = s.write_with(|segs| Ok(touch(segs, true).min(arg)));
            }
            _ => {
                let _ = evt.notify();
                let _ = s.clear_events();
            }
        }
    }
}

fn as_client(mut inp: Input<'_>) {
    let host = HeapHost::new();
    // A real server gives us granted pages to point at; then the fuzzer rewrites
    // the header and the grant list with whatever it likes.
    let Ok(s) = Channel::server(
        &host.domain(1),
        0,
        ChannelConfig {
            left_order: 13,
            right_order: 12,
        },
    ) else {
        return;
    };
    // The fuzzer writes the page through a mapping of its own, as the peer would.
    let peer = host.domain(0);
    let Ok(page) = peer.map_pages(1, &[s.ring_ref()], true) else {
        return;
    };
    let v = ShmView::of(&*page);
    let mut off = 0;
    while off < 64 {
        let Some(b) = inp.u8() else { break };
        let _ = v.store_u8(off, b, Relaxed);
        off += 1;
    }
    if let Ok(c) = Channel::client(&peer, 1, s.ring_ref(), s.event_port()) {
        let g = c.geometry();
        let mut buf = vec![0u8; 1 << 12];
        if let Ok(n) = c.read(&mut buf) {
            assert!(n <= 1 << g.right_order);
        }
        let _ = c.write(&buf);
        let _ = c.read_with(|segs| Ok(touch(segs, false)));
        let _ = c.write_with(|segs| Ok(touch(segs, true)));
    }
}

fuzz_target!(|data: &[u8]| {
    let mut inp = Input(data);
    match inp.u8() {
        Some(b) if b & 1 == 0 => as_server(inp),
        Some(_) => as_client(inp),
        None => {}
    }
});
