//! Rectangles and the framebuffer we keep per view.

use super::error::{Error, Result};

/// The most pixels a framebuffer may have (256 MiB of `u32`); a peer's DesktopSize above
/// this is refused instead of allocated.
pub const MAX_FB_PIXELS: usize = 1 << 26;

/// A rectangle in wire units.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Rect {
    /// Left edge.
    pub x: u16,
    /// Top edge.
    pub y: u16,
    /// Width.
    pub w: u16,
    /// Height.
    pub h: u16,
}

impl Rect {
    /// A rectangle from its corner and size.
    pub const fn new(x: u16, y: u16, w: u16, h: u16) -> Self {
        Rect { x, y, w, h }
    }

    /// Fails unless the rectangle lies inside a `width` x `height` area, checked per
    /// dimension in wider arithmetic so `x + w` cannot wrap.
    pub fn check_within(&self, width: u16, height: u16) -> Result<()> {
        if u32::from(self.x) + u32::from(self.w) > u32::from(width)
            || u32::from(self.y) + u32::from(self.h) > u32::from(height)
        {
            return Err(Error::RectOutside {
                x: self.x,
                y: self.y,
                w: self.w,
                h: self.h,
                fb_w: width,
                fb_h: height,
            });
        }
        Ok(())
    }

    /// Pixels covered.
    pub fn area(&self) -> usize {
        usize::from(self.w) * usize::from(self.h)
    }

    /// True when the rectangle covers nothing.
    pub fn is_empty(&self) -> bool {
        self.w == 0 || self.h == 0
    }

    /// The overlap of two rectangles, if any.
    pub fn intersect(&self, o: &Rect) -> Option<Rect> {
        let x0 = u32::from(self.x).max(u32::from(o.x));
        let y0 = u32::from(self.y).max(u32::from(o.y));
        let x1 = (u32::from(self.x) + u32::from(self.w)).min(u32::from(o.x) + u32::from(o.w));
        let y1 = (u32::from(self.y) + u32::from(self.h)).min(u32::from(o.y) + u32::from(o.h));
        if x1 <= x0 || y1 <= y0 {
            return None;
        }
        Some(Rect::new(
            x0 as u16,
            y0 as u16,
            (x1 - x0) as u16,
            (y1 - y0) as u16,
        ))
    }
}

/// One view's pixels as `0x00RRGGBB`, row-major.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Framebuffer {
    width: u16,
    height: u16,
    pixels: Vec<u32>,
}

impl Framebuffer {
    /// A black framebuffer; refuses sizes above [`MAX_FB_PIXELS`].
    pub fn new(width: u16, height: u16) -> Result<Self> {
        let n = usize::from(width) * usize::from(height);
        if n > MAX_FB_PIXELS {
            return Err(Error::TooLarge {
                what: "framebuffer pixels",
                len: n as u64,
                limit: MAX_FB_PIXELS as u64,
            });
        }
        Ok(Framebuffer {
            width,
            height,
            pixels: vec![0; n],
        })
    }

    /// Width in pixels.
    pub fn width(&self) -> u16 {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> u16 {
        self.height
    }

    /// The whole framebuffer as a rectangle.
    pub fn rect(&self) -> Rect {
        Rect::new(0, 0, self.width, self.height)
    }

    /// All pixels, row-major.
    pub fn pixels(&self) -> &[u32] {
        &self.pixels
    }

    /// All pixels, row-major, for drawing.
    pub fn pixels_mut(&mut self) -> &mut [u32] {
        &mut self.pixels
    }

    /// Changes the size; the content becomes black.
    pub fn resize(&mut self, width: u16, height: u16) -> Result<()> {
        *self = Framebuffer::new(width, height)?;
        Ok(())
    }

    fn idx(&self, x: u16, y: u16) -> usize {
        usize::from(y) * usize::from(self.width) + usize::from(x)
    }

    /// One pixel; `None` outside.
    pub fn get(&self, x: u16, y: u16) -> Option<u32> {
        (x < self.width && y < self.height).then(|| self.pixels[self.idx(x, y)])
    }

    /// One row of a checked rectangle.
    pub fn row(&self, r: &Rect, dy: u16) -> &[u32] {
        let s = self.idx(r.x, r.y + dy);
        &self.pixels[s..s + usize::from(r.w)]
    }

    /// One row of a checked rectangle, for drawing.
    pub fn row_mut(&mut self, r: &Rect, dy: u16) -> &mut [u32] {
        let s = self.idx(r.x, r.y + dy);
        &mut self.pixels[s..s + usize::from(r.w)]
    }

    /// Copies a rectangle out, row-major.
    pub fn read_rect(&self, r: &Rect) -> Result<Vec<u32>> {
        r.check_within(self.width, self.height)?;
        let mut v = Vec::with_capacity(r.area());
        for dy in 0..r.h {
            v.extend_from_slice(self.row(r, dy));
        }
        Ok(v)
    }

    /// Writes a row-major block of `r.area()` pixels.
    pub fn put_rect(&mut self, r: &Rect, src: &[u32]) -> Result<()> {
        r.check_within(self.width, self.height)?;
        if src.len() != r.area() {
            return Err(Error::Malformed("pixel block size"));
        }
        if r.w == 0 {
            return Ok(());
        }
        for (dy, row) in src.chunks_exact(usize::from(r.w)).enumerate() {
            let s = self.idx(r.x, r.y + dy as u16);
            self.pixels[s..s + row.len()].copy_from_slice(row);
        }
        Ok(())
    }

    /// Fills a rectangle with one colour.
    pub fn fill_rect(&mut self, r: &Rect, colour: u32) -> Result<()> {
        r.check_within(self.width, self.height)?;
        for dy in 0..r.h {
            let s = self.idx(r.x, r.y + dy);
            self.pixels[s..s + usize::from(r.w)].fill(colour);
        }
        Ok(())
    }

    /// Copies `dst.w` x `dst.h` pixels from `(sx, sy)` to `dst`; both areas are checked and
    /// may overlap.
    pub fn copy_rect(&mut self, dst: &Rect, sx: u16, sy: u16) -> Result<()> {
        dst.check_within(self.width, self.height)?;
        Rect::new(sx, sy, dst.w, dst.h).check_within(self.width, self.height)?;
        let w = usize::from(dst.w);
        let rows: Box<dyn Iterator<Item = u16>> = if sy < dst.y {
            Box::new((0..dst.h).rev())
        } else {
            Box::new(0..dst.h)
        };
        for dy in rows {
            let s = self.idx(sx, sy + dy);
            let d = self.idx(dst.x, dst.y + dy);
            self.pixels.copy_within(s..s + w, d);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_within_does_not_wrap() {
        assert!(Rect::new(65535, 0, 2, 1).check_within(100, 100).is_err());
        assert!(Rect::new(0, 65535, 1, 65535)
            .check_within(100, 100)
            .is_err());
        assert!(Rect::new(90, 90, 10, 10).check_within(100, 100).is_ok());
        assert!(Rect::new(90, 90, 11, 10).check_within(100, 100).is_err());
        assert!(Rect::new(100, 100, 0, 0).check_within(100, 100).is_ok());
    }

    #[test]
    fn huge_framebuffer_refused() {
        assert!(matches!(
            Framebuffer::new(65535, 65535),
            Err(Error::TooLarge { .. })
        ));
    }

    #[test]
    fn overlapping_copy_is_memmove() {
        let mut fb = Framebuffer::new(4, 4).unwrap();
        for (i, p) in fb.pixels_mut().iter_mut().enumerate() {
            *p = i as u32;
        }
        let orig = fb.clone();
        fb.copy_rect(&Rect::new(1, 1, 3, 3), 0, 0).unwrap();
        for y in 0..3u16 {
            for x in 0..3u16 {
                assert_eq!(fb.get(x + 1, y + 1), orig.get(x, y));
            }
        }
        let mut fb2 = orig.clone();
        fb2.copy_rect(&Rect::new(0, 0, 3, 3), 1, 1).unwrap();
        for y in 0..3u16 {
            for x in 0..3u16 {
                assert_eq!(fb2.get(x, y), orig.get(x + 1, y + 1));
            }
        }
        assert!(fb.copy_rect(&Rect::new(0, 0, 2, 2), 3, 3).is_err());
    }

    #[test]
    fn intersect() {
        let a = Rect::new(0, 0, 10, 10);
        assert_eq!(
            a.intersect(&Rect::new(5, 5, 10, 10)),
            Some(Rect::new(5, 5, 5, 5))
        );
        assert_eq!(a.intersect(&Rect::new(10, 0, 5, 5)), None);
    }
}
