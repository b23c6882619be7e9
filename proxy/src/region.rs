//! Damage: a bounded, coalescing set of rectangles.
//!
//! A viewer that does not read for a while must not make us queue one entry per
//! upstream change, so a region never holds more than [`MAX_RECTS`] rectangles: past
//! that it collapses into its bounding box. Memory per viewer is fixed whatever the
//! upstream does.

use crate::rfb::Rect;

/// Most rectangles a region keeps before collapsing into its bounding box.
pub const MAX_RECTS: usize = 32;

/// A set of damaged rectangles (they may overlap).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Region {
    rects: Vec<Rect>,
}

fn union(a: &Rect, b: &Rect) -> Rect {
    let x0 = a.x.min(b.x);
    let y0 = a.y.min(b.y);
    let x1 = (u32::from(a.x) + u32::from(a.w)).max(u32::from(b.x) + u32::from(b.w));
    let y1 = (u32::from(a.y) + u32::from(a.h)).max(u32::from(b.y) + u32::from(b.h));
    Rect::new(
        x0,
        y0,
        (x1 - u32::from(x0)).min(u32::from(u16::MAX)) as u16,
        (y1 - u32::from(y0)).min(u32::from(u16::MAX)) as u16,
    )
}

fn contains(outer: &Rect, inner: &Rect) -> bool {
    inner.x >= outer.x
        && inner.y >= outer.y
        && u32::from(inner.x) + u32::from(inner.w) <= u32::from(outer.x) + u32::from(outer.w)
        && u32::from(inner.y) + u32::from(inner.h) <= u32::from(outer.y) + u32::from(outer.h)
}

impl Region {
    /// An empty region.
    pub fn new() -> Self {
        Region::default()
    }

    /// True when nothing is damaged.
    pub fn is_empty(&self) -> bool {
        self.rects.is_empty()
    }

    /// The rectangles, in no particular order.
    pub fn rects(&self) -> &[Rect] {
        &self.rects
    }

    /// Adds `r`, merging it with a rectangle it overlaps when the union wastes little,
    /// and collapsing everything when the count bound is reached.
    pub fn add(&mut self, r: Rect) {
        if r.is_empty() {
            return;
        }
        let mut r = r;
        // Absorb rectangles that r covers or that cover r, and cheap unions.
        let mut i = 0;
        while i < self.rects.len() {
            let o = self.rects[i];
            if contains(&o, &r) {
                return;
            }
            let u = union(&o, &r);
            if contains(&r, &o) || u.area() <= (o.area() + r.area()) * 5 / 4 {
                self.rects.swap_remove(i);
                r = u;
                i = 0;
                continue;
            }
            i += 1;
        }
        self.rects.push(r);
        if self.rects.len() > MAX_RECTS {
            let b = self.bounds().unwrap_or(r);
            self.rects.clear();
            self.rects.push(b);
        }
    }

    /// Adds every rectangle of `o`.
    pub fn add_region(&mut self, o: &Region) {
        for r in &o.rects {
            self.add(*r);
        }
    }

    /// The bounding box, if any.
    pub fn bounds(&self) -> Option<Rect> {
        let mut it = self.rects.iter();
        let first = *it.next()?;
        Some(it.fold(first, |a, b| union(&a, b)))
    }

    /// Empties the region and returns what it held.
    pub fn take(&mut self) -> Region {
        std::mem::take(self)
    }

    /// Keeps only what lies inside `clip`.
    pub fn clip(&mut self, clip: &Rect) {
        self.rects = self
            .rects
            .iter()
            .filter_map(|r| r.intersect(clip))
            .collect();
    }

    /// Empties the region.
    pub fn clear(&mut self) {
        self.rects.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_and_contains() {
        let mut g = Region::new();
        g.add(Rect::new(0, 0, 10, 10));
        g.add(Rect::new(2, 2, 3, 3));
        assert_eq!(g.rects(), &[Rect::new(0, 0, 10, 10)]);
        g.add(Rect::new(10, 0, 10, 10));
        assert_eq!(g.rects(), &[Rect::new(0, 0, 20, 10)], "adjacent merge");
        g.add(Rect::new(100, 100, 1, 1));
        assert_eq!(g.rects().len(), 2, "far apart stays apart");
        g.add(Rect::new(0, 0, 0, 5));
        assert_eq!(g.rects().len(), 2, "empty ignored");
    }

    #[test]
    fn bounded_whatever_is_added() {
        let mut g = Region::new();
        let at = |i: u32| Rect::new((i * 37 % 3000) as u16, (i * 91 % 2000) as u16, 1, 1);
        for i in 0..10_000u32 {
            g.add(at(i));
            assert!(g.rects().len() <= MAX_RECTS);
        }
        let b = g.bounds().unwrap();
        // Every pixel added is still covered.
        for i in 0..10_000u32 {
            let p = at(i);
            assert!(g.rects().iter().any(|r| contains(r, &p)) || contains(&b, &p));
        }
    }

    #[test]
    fn clip_and_edges() {
        let mut g = Region::new();
        g.add(Rect::new(65530, 65530, 5, 5));
        g.add(Rect::new(0, 0, 4, 4));
        g.clip(&Rect::new(0, 0, 2, 2));
        assert_eq!(g.rects(), &[Rect::new(0, 0, 2, 2)]);
    }
}
