//! The shared control page, byte-compatible with libxenvchan's `struct vchan_interface`.
//!
//! ```text
//! offset  size  field
//!      0     4  left.cons    left ring: client writes, server reads
//!      4     4  left.prod
//!      8     4  right.cons   right ring: server writes, client reads
//!     12     4  right.prod
//!     16     2  left_order
//!     18     2  right_order
//!     20     1  cli_live     0 exited, 1 connected, 2 not yet connected
//!     21     1  srv_live
//!     22     1  cli_notify   requests posted by the server, cleared by the client
//!     23     1  srv_notify   requests posted by the client, cleared by the server
//!     24   4*n  grants[]     left ring's pages, then right ring's
//! ```
//!
//! A ring of order 10 lives inside the control page at offset 1024, one of order 11
//! at offset 2048; orders 12 to 20 use `2^(order-12)` pages granted separately. The
//! grant list must end before the first in-page ring, or before the end of the page.
//!
//! Everything here is pure arithmetic on private values: nothing reads shared memory.

use crate::platform::PAGE_SIZE;
use crate::{Error, Result};

/// Offset of `left.cons` (the ring the client writes and the server reads).
pub const LEFT: usize = 0;
/// Offset of `right.cons` (the ring the server writes and the client reads).
pub const RIGHT: usize = 8;
/// Within a `ring_shared`, the consumer index.
pub const CONS: usize = 0;
/// Within a `ring_shared`, the producer index.
pub const PROD: usize = 4;
/// Offset of `left_order` (u16).
pub const LEFT_ORDER: usize = 16;
/// Offset of `right_order` (u16).
pub const RIGHT_ORDER: usize = 18;
/// Offset of `cli_live`.
pub const CLI_LIVE: usize = 20;
/// Offset of `srv_live`.
pub const SRV_LIVE: usize = 21;
/// Offset of `cli_notify`: the server sets request bits here, the client clears them.
pub const CLI_NOTIFY: usize = 22;
/// Offset of `srv_notify`: the client sets request bits here, the server clears them.
pub const SRV_NOTIFY: usize = 23;
/// Offset of `grants[0]`.
pub const GRANTS: usize = 24;

/// Notify bit: "tell me when you write (produce) data".
pub const NOTIFY_WRITE: u8 = 0x1;
/// Notify bit: "tell me when you read (consume) data".
pub const NOTIFY_READ: u8 = 0x2;

/// Live byte: that side has exited or closed.
pub const LIVE_CLOSED: u8 = 0;
/// Live byte: that side is connected.
pub const LIVE_CONNECTED: u8 = 1;
/// Live byte: the client has not connected yet (set by the server at setup).
pub const LIVE_NOT_YET: u8 = 2;

/// Smallest ring order vchan allows (1 KiB, inside the control page at 1024).
pub const MIN_ORDER: u8 = 10;
/// Order of the in-page ring at offset 2048.
pub const LARGE_IN_PAGE_ORDER: u8 = 11;
/// Largest ring order vchan allows (1 MiB, 256 granted pages).
pub const MAX_ORDER: u8 = 20;
/// Offset of an order-10 ring in the control page.
pub const SMALL_RING_OFFSET: usize = 1024;
/// Offset of an order-11 ring in the control page.
pub const LARGE_RING_OFFSET: usize = 2048;
/// log2 of the page size.
pub const PAGE_SHIFT: u8 = 12;

/// Where one ring's bytes live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// Inside the control page, at this byte offset.
    InPage(usize),
    /// In `count` separately granted pages, whose refs sit at `grants[first..first+count]`.
    Granted {
        /// Index of the first grant in the `grants[]` array.
        first: usize,
        /// Number of pages.
        count: usize,
    },
}

/// The validated shape of a channel: both orders and where each ring lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Order of the left ring (client to server).
    pub left_order: u8,
    /// Order of the right ring (server to client).
    pub right_order: u8,
    /// Where the left ring lives.
    pub left: Placement,
    /// Where the right ring lives.
    pub right: Placement,
}

fn pages_for(order: u8) -> usize {
    if order >= PAGE_SHIFT {
        1 << (order - PAGE_SHIFT)
    } else {
        0
    }
}

impl Geometry {
    /// Checks a pair of orders (from a caller, or read once from a peer's page) and
    /// works out the placements. Rejects what libxenvchan rejects (orders outside
    /// 10..=20, two rings at the same in-page offset) and also a grant list that
    /// would run into an in-page ring, which libxenvchan does not check.
    pub fn new(left_order: u16, right_order: u16) -> Result<Self> {
        let check = |o: u16, which: &str| -> Result<u8> {
            if (MIN_ORDER as u16..=MAX_ORDER as u16).contains(&o) {
                Ok(o as u8)
            } else {
                Err(Error::Protocol(format!(
                    "{which} ring order {o} outside {MIN_ORDER}..={MAX_ORDER}"
                )))
            }
        };
        let l = check(left_order, "left")?;
        let r = check(right_order, "right")?;
        if l == r && l < PAGE_SHIFT {
            return Err(Error::Protocol(format!(
                "both rings at the same in-page offset (order {l})"
            )));
        }
        let lp = pages_for(l);
        let rp = pages_for(r);
        let place = |o: u8, first: usize, count: usize| match o {
            MIN_ORDER => Placement::InPage(SMALL_RING_OFFSET),
            LARGE_IN_PAGE_ORDER => Placement::InPage(LARGE_RING_OFFSET),
            _ => Placement::Granted { first, count },
        };
        let g = Geometry {
            left_order: l,
            right_order: r,
            left: place(l, 0, lp),
            right: place(r, lp, rp),
        };
        let end = GRANTS + 4 * g.grant_count();
        if end > g.grant_limit() {
            return Err(Error::Protocol(format!(
                "{} grants end at byte {end}, past the limit {}",
                g.grant_count(),
                g.grant_limit()
            )));
        }
        Ok(g)
    }

    /// How many grant refs follow the header (left's then right's).
    pub fn grant_count(&self) -> usize {
        pages_for(self.left_order) + pages_for(self.right_order)
    }

    /// The byte offset the grant list must not pass: the lowest in-page ring, or
    /// the end of the page.
    pub fn grant_limit(&self) -> usize {
        [self.left, self.right]
            .iter()
            .filter_map(|p| match p {
                Placement::InPage(off) => Some(*off),
                Placement::Granted { .. } => None,
            })
            .min()
            .unwrap_or(PAGE_SIZE)
    }

    /// Ring size in bytes for an order.
    pub fn size(order: u8) -> u32 {
        1u32 << order
    }
}

/// The order libxenvchan's server would pick for a minimum size, but never below
/// a page; `None` when the size is over 1 MiB.
pub fn order_for_size(min: usize) -> Option<u8> {
    let mut o = PAGE_SHIFT;
    while (1usize << o) < min {
        o += 1;
        if o > MAX_ORDER {
            return None;
        }
    }
    Some(o)
}

/// The orders libxenvchan's `server_init` picks for a left (server reads) and right
/// (server writes) minimum size: in-page rings when both are small, otherwise the
/// smallest power of two of at least a page, with one in-page ring of order 11 when
/// one side fits in 2 KiB.
pub fn vchan_orders(left_min: usize, right_min: usize) -> Option<(u8, u8)> {
    const SMALL: usize = 1 << MIN_ORDER;
    const LARGE: usize = 1 << LARGE_IN_PAGE_ORDER;
    let mut l = order_for_size(left_min)?;
    let mut r = order_for_size(right_min)?;
    if left_min <= SMALL && right_min <= LARGE {
        (l, r) = (MIN_ORDER, LARGE_IN_PAGE_ORDER);
    } else if left_min <= LARGE && right_min <= SMALL {
        (l, r) = (LARGE_IN_PAGE_ORDER, MIN_ORDER);
    } else if left_min <= LARGE {
        l = LARGE_IN_PAGE_ORDER;
    } else if right_min <= LARGE {
        r = LARGE_IN_PAGE_ORDER;
    }
    Some((l, r))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_match_vchan_interface() {
        // struct ring_shared { u32 cons, prod; } left, right;
        assert_eq!((LEFT + CONS, LEFT + PROD), (0, 4));
        assert_eq!((RIGHT + CONS, RIGHT + PROD), (8, 12));
        assert_eq!((LEFT_ORDER, RIGHT_ORDER), (16, 18));
        assert_eq!(
            (CLI_LIVE, SRV_LIVE, CLI_NOTIFY, SRV_NOTIFY),
            (20, 21, 22, 23)
        );
        assert_eq!(GRANTS, 24);
        assert_eq!((NOTIFY_WRITE, NOTIFY_READ), (1, 2));
        assert_eq!((LIVE_CLOSED, LIVE_CONNECTED, LIVE_NOT_YET), (0, 1, 2));
    }

    #[test]
    fn in_page_placements() {
        let g = Geometry::new(10, 11).unwrap();
        assert_eq!(g.left, Placement::InPage(1024));
        assert_eq!(g.right, Placement::InPage(2048));
        assert_eq!(g.grant_count(), 0);
        let g = Geometry::new(11, 10).unwrap();
        assert_eq!(g.left, Placement::InPage(2048));
        assert_eq!(g.right, Placement::InPage(1024));
    }

    #[test]
    fn granted_placements_left_then_right() {
        let g = Geometry::new(13, 12).unwrap();
        assert_eq!(g.left, Placement::Granted { first: 0, count: 2 });
        assert_eq!(g.right, Placement::Granted { first: 2, count: 1 });
        assert_eq!(g.grant_count(), 3);
        let g = Geometry::new(11, 16).unwrap();
        assert_eq!(g.left, Placement::InPage(2048));
        assert_eq!(
            g.right,
            Placement::Granted {
                first: 0,
                count: 16
            }
        );
        let g = Geometry::new(20, 20).unwrap();
        assert_eq!(g.grant_count(), 512);
        assert_eq!(g.grant_limit(), PAGE_SIZE);
    }

    #[test]
    fn rejects_bad_orders() {
        for (l, r) in [
            (9, 12),
            (12, 21),
            (0, 0),
            (10, 10),
            (11, 11),
            (u16::MAX, 12),
        ] {
            assert!(
                matches!(Geometry::new(l, r), Err(Error::Protocol(_))),
                "{l} {r}"
            );
        }
    }

    #[test]
    fn rejects_grants_running_into_in_page_ring() {
        // Order 10 sits at 1024: 24 + 4*256 = 1048 > 1024.
        assert!(Geometry::new(10, 20).is_err());
        assert!(Geometry::new(20, 10).is_err());
        // 24 + 4*128 = 536 fits below 1024.
        assert!(Geometry::new(10, 19).is_ok());
        // Order 11 sits at 2048: 256 grants end at 1048.
        assert!(Geometry::new(11, 20).is_ok());
    }

    #[test]
    fn server_order_choice_matches_vchan() {
        assert_eq!(vchan_orders(1, 1), Some((10, 11)));
        assert_eq!(vchan_orders(1024, 2048), Some((10, 11)));
        assert_eq!(vchan_orders(2048, 1024), Some((11, 10)));
        assert_eq!(vchan_orders(2048, 2048), Some((11, 12)));
        assert_eq!(vchan_orders(65536, 1), Some((16, 11)));
        assert_eq!(vchan_orders(4097, 65536), Some((13, 16)));
        assert_eq!(vchan_orders(1 << 20, 1 << 20), Some((20, 20)));
        assert_eq!(vchan_orders((1 << 20) + 1, 1), None);
        for (l, r) in [(1, 1), (2048, 1), (65536, 1), (1 << 20, 3000)] {
            let (lo, ro) = vchan_orders(l, r).unwrap();
            Geometry::new(lo.into(), ro.into()).unwrap();
        }
    }
}
