//! Property tests: random interleavings of writes and reads of random sizes, over
//! several ring orders and across index wrap-around, deliver exactly the bytes
//! written, in order; the zero-copy segment paths agree with the copying ones.

use proptest::prelude::*;
use xenvt_ring::platform::heap::HeapHost;
use xenvt_ring::{Channel, ChannelConfig, Error};

#[derive(Clone, Debug)]
enum Op {
    /// Client writes this many bytes (or as many as fit).
    Write(usize),
    /// Client writes via `write_with`, filling at most this many bytes.
    WriteWith(usize),
    /// Server reads up to this many.
    Read(usize),
    /// Server reads via `read_with`, taking at most this many.
    ReadWith(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0usize..9000).prop_map(Op::Write),
        (0usize..9000).prop_map(Op::WriteWith),
        (0usize..9000).prop_map(Op::Read),
        (0usize..9000).prop_map(Op::ReadWith),
    ]
}

fn orders() -> impl Strategy<Value = (u8, u8)> {
    prop_oneof![
        Just((10u8, 11u8)),
        Just((11, 10)),
        Just((12, 12)),
        Just((13, 11)),
        Just((14, 15)),
    ]
}

/// Copies from a private buffer into raw ring segments.
fn fill(segs: [(*mut u8, usize); 2], src: &[u8]) -> usize {
    let mut done = 0;
    for (p, len) in segs {
        let n = len.min(src.len() - done);
        // SAFETY: `p..p+len` is free ring space handed to us for this callback.
        unsafe { std::ptr::copy_nonoverlapping(src[done..].as_ptr(), p, n) };
        done += n;
    }
    done
}

/// Copies from raw ring segments into a private buffer.
fn drain(segs: [(*mut u8, usize); 2], dst: &mut [u8]) -> usize {
    let mut done = 0;
    for (p, len) in segs {
        let n = len.min(dst.len() - done);
        // SAFETY: `p..p+len` is ready ring data handed to us for this callback.
        unsafe { std::ptr::copy_nonoverlapping(p, dst[done..].as_mut_ptr(), n) };
        done += n;
    }
    done
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn bytes_arrive_exactly_in_order(
        (lo, ro) in orders(),
        ops in proptest::collection::vec(op(), 1..200),
    ) {
        let host = HeapHost::new();
        let s = Channel::server(&host.domain(1), 0, ChannelConfig { left_order: lo, right_order: ro }).unwrap();
        let c = Channel::client(&host.domain(0), 1, s.ring_ref(), s.event_port()).unwrap();
        let size = 1usize << lo;
        let mut next: u32 = 0x1234_5678;
        let mut byte = || {
            next = next.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (next >> 24) as u8
        };
        let mut sent = Vec::new();
        let mut got = Vec::new();
        let mut buf = vec![0u8; 9000];
        for op in ops {
            let in_flight = sent.len() - got.len();
            match op {
                Op::Write(n) => {
                    let data: Vec<u8> = (0..n).map(|_| byte()).collect();
                    let w = c.write(&data).unwrap();
                    prop_assert_eq!(w, n.min(size - in_flight));
                    sent.extend_from_slice(&data[..w]);
                }
                Op::WriteWith(n) => {
                    let data: Vec<u8> = (0..n).map(|_| byte()).collect();
                    match c.write_with(|segs| Ok(fill(segs, &data))).unwrap() {
                        None => prop_assert_eq!(in_flight, size),
                        Some(w) => {
                            prop_assert_eq!(w, n.min(size - in_flight));
                            sent.extend_from_slice(&data[..w]);
                        }
                    }
                }
                Op::Read(n) => {
                    let r = s.read(&mut buf[..n]).unwrap();
                    prop_assert_eq!(r, n.min(in_flight));
                    got.extend_from_slice(&buf[..r]);
                }
                Op::ReadWith(n) => {
                    match s.read_with(|segs| Ok(drain(segs, &mut buf[..n]))).unwrap() {
                        None => prop_assert_eq!(in_flight, 0),
                        Some(r) => {
                            prop_assert_eq!(r, n.min(in_flight));
                            got.extend_from_slice(&buf[..r]);
                        }
                    }
                }
            }
            prop_assert_eq!(&got[..], &sent[..got.len()]);
        }
        // Close and drain: everything sent arrives, then end of stream.
        c.close();
        loop {
            match s.read(&mut buf) {
                Ok(r) => got.extend_from_slice(&buf[..r]),
                Err(Error::PeerClosed) => break,
                Err(e) => return Err(TestCaseError::fail(e.to_string())),
            }
        }
        prop_assert_eq!(got, sent);
    }

    /// Whatever a hostile peer writes into the control page, operations return
    /// values or typed errors, never panic, and never report more than the ring holds.
    #[test]
    fn hostile_control_words_never_panic(
        words in proptest::collection::vec((0usize..6, any::<u32>()), 1..40),
    ) {
        let host = HeapHost::new();
        let s = Channel::server(&host.domain(1), 0, ChannelConfig { left_order: 12, right_order: 12 }).unwrap();
        let peer = host.domain(0);
        let page = xenvt_ring::Platform::map_pages(&peer, 1, &[s.ring_ref()], true).unwrap();
        let v = xenvt_ring::shm::ShmView::of(&*page);
        let mut buf = [0u8; 5000];
        for (slot, val) in words {
            match slot {
                0..=3 => v.store_u32(slot * 4, val, std::sync::atomic::Ordering::Relaxed).unwrap(),
                4 => v.store_u8(20 + (val as usize % 4), val as u8, std::sync::atomic::Ordering::Relaxed).unwrap(),
                _ => v.store_u16(16 + 2 * (val as usize % 2), val as u16, std::sync::atomic::Ordering::Relaxed).unwrap(),
            }
            if let Ok(n) = s.read(&mut buf) { prop_assert!(n <= 4096) }
            if let Ok(n) = s.write(&buf) { prop_assert!(n <= 4096) }
            let _ = s.prepare_read_wait();
            let _ = s.prepare_write_wait();
            let _ = s.peer_state();
        }
    }
}
