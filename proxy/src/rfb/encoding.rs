//! Encoding and pseudo-encoding numbers.

/// Raw pixels.
pub const RAW: i32 = 0;
/// Copy from elsewhere in the framebuffer.
pub const COPY_RECT: i32 = 1;
/// Rise-and-run-length.
pub const RRE: i32 = 2;
/// 16x16 tiles.
pub const HEXTILE: i32 = 5;
/// Raw through one zlib stream.
pub const ZLIB: i32 = 6;
/// Tight.
pub const TIGHT: i32 = 7;
/// Zlib run-length in 64x64 tiles.
pub const ZRLE: i32 = 16;

/// Tight JPEG quality 0 (the lowest); -23 is quality 9.
pub const TIGHT_QUALITY_0: i32 = -32;
/// Tight JPEG quality 9 (the highest).
pub const TIGHT_QUALITY_9: i32 = -23;
/// Compression level 0; -247 is level 9.
pub const COMPRESS_LEVEL_0: i32 = -256;
/// Compression level 9.
pub const COMPRESS_LEVEL_9: i32 = -247;

/// The framebuffer size changed.
pub const DESKTOP_SIZE: i32 = -223;
/// No more rectangles in this update, whatever the count said.
pub const LAST_RECT: i32 = -224;
/// A cursor shape with a transparency mask.
pub const CURSOR: i32 = -239;
/// QEMU extended key events (keycodes).
pub const QEMU_EXTENDED_KEY: i32 = -258;
/// The desktop's name changed.
pub const DESKTOP_NAME: i32 = -307;
/// Screen layout and SetDesktopSize replies.
pub const EXTENDED_DESKTOP_SIZE: i32 = -308;
/// Fence messages.
pub const FENCE: i32 = -312;
/// Continuous updates.
pub const CONTINUOUS_UPDATES: i32 = -313;

/// What a client said it accepts, in its order of preference.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientEncodings {
    /// Real encodings, most preferred first (CopyRect excluded).
    pub preferred: Vec<i32>,
    /// CopyRect accepted.
    pub copy_rect: bool,
    /// Tight JPEG quality 0..=9, if the client asked for JPEG.
    pub quality: Option<u8>,
    /// Compression level 0..=9, if given.
    pub compress: Option<u8>,
    /// DesktopSize accepted.
    pub desktop_size: bool,
    /// ExtendedDesktopSize accepted.
    pub extended_desktop_size: bool,
    /// DesktopName accepted.
    pub desktop_name: bool,
    /// LastRect accepted.
    pub last_rect: bool,
    /// Cursor accepted.
    pub cursor: bool,
    /// Fence accepted.
    pub fence: bool,
    /// Continuous updates accepted.
    pub continuous_updates: bool,
    /// QEMU extended key events accepted.
    pub qemu_extended_key: bool,
}

impl ClientEncodings {
    /// Sorts a SetEncodings list into what we act on; unknown numbers are ignored, as the
    /// protocol asks.
    pub fn from_list(list: &[i32]) -> Self {
        let mut c = ClientEncodings::default();
        for &e in list {
            match e {
                RAW | RRE | HEXTILE | ZLIB | TIGHT | ZRLE if !c.preferred.contains(&e) => {
                    c.preferred.push(e)
                }
                COPY_RECT => c.copy_rect = true,
                TIGHT_QUALITY_0..=TIGHT_QUALITY_9 => {
                    c.quality.get_or_insert((e - TIGHT_QUALITY_0) as u8);
                }
                COMPRESS_LEVEL_0..=COMPRESS_LEVEL_9 => {
                    c.compress.get_or_insert((e - COMPRESS_LEVEL_0) as u8);
                }
                DESKTOP_SIZE => c.desktop_size = true,
                EXTENDED_DESKTOP_SIZE => c.extended_desktop_size = true,
                DESKTOP_NAME => c.desktop_name = true,
                LAST_RECT => c.last_rect = true,
                CURSOR => c.cursor = true,
                FENCE => c.fence = true,
                CONTINUOUS_UPDATES => c.continuous_updates = true,
                QEMU_EXTENDED_KEY => c.qemu_extended_key = true,
                _ => {}
            }
        }
        c
    }

    /// The encoding we will send pixel data in: the client's first one that we encode
    /// (RRE is decode-only here), else Raw.
    pub fn pick(&self) -> i32 {
        self.preferred
            .iter()
            .copied()
            .find(|e| matches!(*e, RAW | HEXTILE | ZLIB | TIGHT | ZRLE))
            .unwrap_or(RAW)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_list_sorts_pseudo_encodings() {
        let c = ClientEncodings::from_list(&[
            TIGHT,
            ZRLE,
            COPY_RECT,
            -26,
            -254,
            DESKTOP_SIZE,
            EXTENDED_DESKTOP_SIZE,
            LAST_RECT,
            12345,
        ]);
        assert_eq!(c.preferred, vec![TIGHT, ZRLE]);
        assert_eq!(c.quality, Some(6));
        assert_eq!(c.compress, Some(2));
        assert!(c.copy_rect && c.desktop_size && c.extended_desktop_size && c.last_rect);
        assert!(!c.fence);
        assert_eq!(c.pick(), TIGHT);
        assert_eq!(ClientEncodings::from_list(&[RRE]).pick(), RAW);
    }
}
