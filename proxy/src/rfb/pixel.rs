//! Pixel formats and conversion between our framebuffer format and a peer's.
//!
//! Our framebuffers hold one `u32` per pixel as `0x00RRGGBB`. Peers choose any sane
//! format; [`PixelFormat::validate`] decides what is sane before anything uses it.

use super::error::{Error, Result};

/// An RFB PIXEL_FORMAT (16 bytes on the wire, three of them padding).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PixelFormat {
    /// 8, 16 or 32.
    pub bits_per_pixel: u8,
    /// Significant bits in a pixel.
    pub depth: u8,
    /// Byte order of multi-byte pixels.
    pub big_endian: bool,
    /// False means 8-bit indices into a colour map.
    pub true_colour: bool,
    /// Largest red value, `2^n - 1`.
    pub red_max: u16,
    /// Largest green value, `2^n - 1`.
    pub green_max: u16,
    /// Largest blue value, `2^n - 1`.
    pub blue_max: u16,
    /// Bit position of red.
    pub red_shift: u8,
    /// Bit position of green.
    pub green_shift: u8,
    /// Bit position of blue.
    pub blue_shift: u8,
}

impl Default for PixelFormat {
    fn default() -> Self {
        Self::rgb888()
    }
}

fn bits(max: u16) -> u32 {
    16 - max.leading_zeros()
}

impl PixelFormat {
    /// Bytes of a PIXEL_FORMAT on the wire.
    pub const WIRE_LEN: usize = 16;

    /// 32 bpp, depth 24, little-endian `0x00RRGGBB`: the same layout as our framebuffer.
    pub const fn rgb888() -> Self {
        PixelFormat {
            bits_per_pixel: 32,
            depth: 24,
            big_endian: false,
            true_colour: true,
            red_max: 255,
            green_max: 255,
            blue_max: 255,
            red_shift: 16,
            green_shift: 8,
            blue_shift: 0,
        }
    }

    /// 16 bpp, depth 16, little-endian 5-6-5.
    pub const fn rgb565() -> Self {
        PixelFormat {
            bits_per_pixel: 16,
            depth: 16,
            big_endian: false,
            true_colour: true,
            red_max: 31,
            green_max: 63,
            blue_max: 31,
            red_shift: 11,
            green_shift: 5,
            blue_shift: 0,
        }
    }

    /// 8 bpp true colour, blue in the top two bits (`bgr233`).
    pub const fn bgr233() -> Self {
        PixelFormat {
            bits_per_pixel: 8,
            depth: 8,
            big_endian: false,
            true_colour: true,
            red_max: 7,
            green_max: 7,
            blue_max: 3,
            red_shift: 0,
            green_shift: 3,
            blue_shift: 6,
        }
    }

    /// 8 bpp through a colour map; we serve [`PixelFormat::colour_map`] to such clients.
    pub const fn colour_map8() -> Self {
        PixelFormat {
            bits_per_pixel: 8,
            depth: 8,
            big_endian: false,
            true_colour: false,
            red_max: 0,
            green_max: 0,
            blue_max: 0,
            red_shift: 0,
            green_shift: 0,
            blue_shift: 0,
        }
    }

    /// Parses and validates the 16-byte wire form.
    pub fn from_wire(b: &[u8; 16]) -> Result<Self> {
        let pf = PixelFormat {
            bits_per_pixel: b[0],
            depth: b[1],
            big_endian: b[2] != 0,
            true_colour: b[3] != 0,
            red_max: u16::from_be_bytes([b[4], b[5]]),
            green_max: u16::from_be_bytes([b[6], b[7]]),
            blue_max: u16::from_be_bytes([b[8], b[9]]),
            red_shift: b[10],
            green_shift: b[11],
            blue_shift: b[12],
        };
        pf.validate()?;
        Ok(pf)
    }

    /// The 16-byte wire form.
    pub fn to_wire(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0] = self.bits_per_pixel;
        b[1] = self.depth;
        b[2] = u8::from(self.big_endian);
        b[3] = u8::from(self.true_colour);
        b[4..6].copy_from_slice(&self.red_max.to_be_bytes());
        b[6..8].copy_from_slice(&self.green_max.to_be_bytes());
        b[8..10].copy_from_slice(&self.blue_max.to_be_bytes());
        b[10] = self.red_shift;
        b[11] = self.green_shift;
        b[12] = self.blue_shift;
        b
    }

    /// Refuses formats that would make conversion undefined (zero maxima, overlapping
    /// or out-of-pixel channels, odd sizes). Colour maps are accepted at 8 bpp only.
    pub fn validate(&self) -> Result<()> {
        let bpp = u32::from(self.bits_per_pixel);
        if !matches!(bpp, 8 | 16 | 32) {
            return Err(Error::PixelFormat("bits-per-pixel must be 8, 16 or 32"));
        }
        if self.depth == 0 || u32::from(self.depth) > bpp {
            return Err(Error::PixelFormat("depth must be 1..=bits-per-pixel"));
        }
        if !self.true_colour {
            if bpp != 8 {
                return Err(Error::PixelFormat(
                    "colour maps are supported at 8 bpp only",
                ));
            }
            return Ok(());
        }
        let chans = [
            (self.red_max, self.red_shift),
            (self.green_max, self.green_shift),
            (self.blue_max, self.blue_shift),
        ];
        let mut total = 0;
        let mut used: u32 = 0;
        for (max, shift) in chans {
            if max == 0 {
                return Err(Error::PixelFormat("a colour maximum is zero"));
            }
            if max & max.wrapping_add(1) != 0 {
                return Err(Error::PixelFormat("a colour maximum is not 2^n-1"));
            }
            let n = bits(max);
            if u32::from(shift) + n > bpp {
                return Err(Error::PixelFormat(
                    "a colour channel lies outside the pixel",
                ));
            }
            let mask = u32::from(max) << shift;
            if used & mask != 0 {
                return Err(Error::PixelFormat("colour channels overlap"));
            }
            used |= mask;
            total += n;
        }
        if total > u32::from(self.depth) {
            return Err(Error::PixelFormat("colour channels exceed the depth"));
        }
        Ok(())
    }

    /// Bytes per pixel on the wire.
    pub fn bytes_per_pixel(&self) -> usize {
        usize::from(self.bits_per_pixel / 8)
    }

    /// Whether Tight sends pixels of this format as 3-byte R,G,B (its TPIXEL).
    pub fn is_tight_888(&self) -> bool {
        self.true_colour
            && self.bits_per_pixel == 32
            && self.depth == 24
            && self.red_max == 255
            && self.green_max == 255
            && self.blue_max == 255
    }

    /// ZRLE's CPIXEL: for 32 bpp true colour with depth <= 24 whose channels fit in three
    /// bytes, the index (in wire order) of the always-zero byte that is left out.
    pub fn cpixel_dropped_byte(&self) -> Option<usize> {
        if !self.true_colour || self.bits_per_pixel != 32 || self.depth > 24 {
            return None;
        }
        let used = (u32::from(self.red_max) << self.red_shift)
            | (u32::from(self.green_max) << self.green_shift)
            | (u32::from(self.blue_max) << self.blue_shift);
        if used & 0xff00_0000 == 0 {
            Some(if self.big_endian { 0 } else { 3 })
        } else if used & 0xff == 0 {
            Some(if self.big_endian { 3 } else { 0 })
        } else {
            None
        }
    }

    /// The 256-entry map we send to colour-map clients: index bits `rrrgggbb`.
    pub fn colour_map() -> Vec<[u16; 3]> {
        (0..=255u32).map(map_entry).collect()
    }

    /// Our colour for one wire pixel value.
    pub fn unpack(&self, v: u32) -> u32 {
        if !self.true_colour {
            let [r, g, b] = map_entry(v & 0xff);
            return (u32::from(r >> 8) << 16) | (u32::from(g >> 8) << 8) | u32::from(b >> 8);
        }
        let ch = |max: u16, shift: u8| -> u32 {
            let max = u32::from(max);
            let c = (v >> shift) & max;
            (c * 255 + max / 2) / max
        };
        (ch(self.red_max, self.red_shift) << 16)
            | (ch(self.green_max, self.green_shift) << 8)
            | ch(self.blue_max, self.blue_shift)
    }

    /// Reads one wire pixel value (`bytes_per_pixel` bytes).
    pub fn read_value(&self, b: &[u8]) -> u32 {
        match self.bits_per_pixel {
            8 => u32::from(b[0]),
            16 if self.big_endian => u32::from(u16::from_be_bytes([b[0], b[1]])),
            16 => u32::from(u16::from_le_bytes([b[0], b[1]])),
            _ if self.big_endian => u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
            _ => u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        }
    }

    /// Appends one wire pixel value.
    pub fn write_value(&self, v: u32, out: &mut Vec<u8>) {
        match self.bits_per_pixel {
            8 => out.push(v as u8),
            16 if self.big_endian => out.extend_from_slice(&(v as u16).to_be_bytes()),
            16 => out.extend_from_slice(&(v as u16).to_le_bytes()),
            _ if self.big_endian => out.extend_from_slice(&v.to_be_bytes()),
            _ => out.extend_from_slice(&v.to_le_bytes()),
        }
    }
}

fn map_entry(i: u32) -> [u16; 3] {
    let r = (i >> 5) & 7;
    let g = (i >> 2) & 7;
    let b = i & 3;
    [
        (r * 65535 / 7) as u16,
        (g * 65535 / 7) as u16,
        (b * 65535 / 3) as u16,
    ]
}

/// Precomputed conversion from our colours to one valid format's pixel values.
#[derive(Clone, Debug)]
pub struct Packer {
    pf: PixelFormat,
    identity: bool,
    r: [u32; 256],
    g: [u32; 256],
    b: [u32; 256],
}

impl Packer {
    /// Builds the tables; `pf` must have passed [`PixelFormat::validate`].
    pub fn new(pf: PixelFormat) -> Self {
        let mut p = Packer {
            pf,
            identity: pf == PixelFormat::rgb888(),
            r: [0; 256],
            g: [0; 256],
            b: [0; 256],
        };
        for i in 0..256u32 {
            if pf.true_colour {
                let s = |max: u16, shift: u8| ((i * u32::from(max) + 127) / 255) << shift;
                p.r[i as usize] = s(pf.red_max, pf.red_shift);
                p.g[i as usize] = s(pf.green_max, pf.green_shift);
                p.b[i as usize] = s(pf.blue_max, pf.blue_shift);
            } else {
                p.r[i as usize] = (i >> 5) << 5;
                p.g[i as usize] = (i >> 5) << 2;
                p.b[i as usize] = i >> 6;
            }
        }
        p
    }

    /// The format this packer produces.
    pub fn format(&self) -> &PixelFormat {
        &self.pf
    }

    /// The wire pixel value for one of our colours.
    #[inline]
    pub fn pack(&self, rgb: u32) -> u32 {
        self.r[((rgb >> 16) & 0xff) as usize]
            | self.g[((rgb >> 8) & 0xff) as usize]
            | self.b[(rgb & 0xff) as usize]
    }

    /// True when the wire value of a colour is the colour itself (`0x00RRGGBB` at 32
    /// bits): packing is then a mask.
    #[inline]
    pub fn is_identity(&self) -> bool {
        self.identity
    }

    /// Appends the wire values of `src` to `out`.
    #[inline]
    pub fn pack_into(&self, src: &[u32], out: &mut Vec<u32>) {
        if self.is_identity() {
            out.extend(src.iter().map(|&p| p & 0xff_ffff));
        } else {
            out.extend(src.iter().map(|&p| self.pack(p)));
        }
    }

    /// Appends one of our colours as a wire pixel.
    #[inline]
    pub fn put(&self, rgb: u32, out: &mut Vec<u8>) {
        self.pf.write_value(self.pack(rgb), out);
    }

    /// Appends many of our colours as wire pixels.
    pub fn put_all(&self, src: &[u32], out: &mut Vec<u8>) {
        let pf = &self.pf;
        out.reserve(src.len() * pf.bytes_per_pixel());
        if *pf == PixelFormat::rgb888() {
            for &p in src {
                out.extend_from_slice(&(p & 0xff_ffff).to_le_bytes());
            }
            return;
        }
        for &p in src {
            pf.write_value(self.pack(p), out);
        }
    }

    /// Our colour as the wire value would decode: the colour a client will see.
    pub fn round_trip(&self, rgb: u32) -> u32 {
        self.pf.unpack(self.pack(rgb))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_round_trip() {
        for pf in [
            PixelFormat::rgb888(),
            PixelFormat::rgb565(),
            PixelFormat::bgr233(),
            PixelFormat::colour_map8(),
        ] {
            assert_eq!(PixelFormat::from_wire(&pf.to_wire()).unwrap(), pf);
        }
    }

    #[test]
    fn insane_formats_are_refused() {
        let good = PixelFormat::rgb888();
        let cases = [
            PixelFormat {
                bits_per_pixel: 24,
                ..good
            },
            PixelFormat { depth: 33, ..good },
            PixelFormat { depth: 0, ..good },
            PixelFormat { red_max: 0, ..good },
            PixelFormat {
                green_max: 254,
                ..good
            },
            PixelFormat {
                blue_shift: 8,
                ..good
            },
            PixelFormat {
                red_shift: 30,
                ..good
            },
            PixelFormat {
                red_max: 65535,
                ..good
            },
            PixelFormat {
                bits_per_pixel: 16,
                true_colour: false,
                ..good
            },
            PixelFormat {
                depth: 16,
                ..PixelFormat::rgb888()
            },
        ];
        for pf in cases {
            assert!(
                matches!(
                    PixelFormat::from_wire(&pf.to_wire()),
                    Err(Error::PixelFormat(_))
                ),
                "{pf:?}"
            );
        }
    }

    #[test]
    fn conversion_keeps_colours_at_full_depth() {
        for pf in [
            PixelFormat::rgb888(),
            PixelFormat {
                big_endian: true,
                ..PixelFormat::rgb888()
            },
            PixelFormat {
                red_shift: 0,
                blue_shift: 16,
                ..PixelFormat::rgb888()
            },
        ] {
            let p = Packer::new(pf);
            for rgb in [0u32, 0xffffff, 0x123456, 0xff0000, 0x00ff00, 0x0000ff] {
                let mut out = Vec::new();
                p.put(rgb, &mut out);
                assert_eq!(pf.unpack(pf.read_value(&out)), rgb);
            }
        }
    }

    #[test]
    fn endianness_is_honoured() {
        let le = Packer::new(PixelFormat::rgb565());
        let be = Packer::new(PixelFormat {
            big_endian: true,
            ..PixelFormat::rgb565()
        });
        let (mut a, mut b) = (Vec::new(), Vec::new());
        le.put(0xff0000, &mut a);
        be.put(0xff0000, &mut b);
        assert_eq!(a, [0x00, 0xf8]);
        assert_eq!(b, [0xf8, 0x00]);
    }

    #[test]
    fn cpixel_drops_the_unused_byte() {
        let pf = PixelFormat::rgb888();
        assert_eq!(pf.cpixel_dropped_byte(), Some(3));
        let be = PixelFormat {
            big_endian: true,
            ..pf
        };
        assert_eq!(be.cpixel_dropped_byte(), Some(0));
        let high = PixelFormat {
            red_shift: 24,
            green_shift: 16,
            blue_shift: 8,
            ..pf
        };
        assert_eq!(high.cpixel_dropped_byte(), Some(0));
        assert_eq!(PixelFormat::rgb565().cpixel_dropped_byte(), None);
    }

    #[test]
    fn colour_map_matches_packing() {
        let pf = PixelFormat::colour_map8();
        let p = Packer::new(pf);
        let map = PixelFormat::colour_map();
        for rgb in [0u32, 0xffffff, 0xe0e0c0] {
            let idx = p.pack(rgb) as usize;
            let [r, g, b] = map[idx];
            let via_map = (u32::from(r >> 8) << 16) | (u32::from(g >> 8) << 8) | u32::from(b >> 8);
            assert_eq!(pf.unpack(idx as u32), via_map);
        }
        assert_eq!(p.pack(0xffffff), 255);
    }
}
