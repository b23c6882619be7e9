//! Round trips through our encoders and decoders, in the style of libvncserver's
//! encodingstest: random framebuffer changes, encoded for a client format, decoded by
//! our client side, compared pixel by pixel with what that format can show.

use xenvt_proxy::rfb::decode::{ClientDecoder, DecoderLimits, ServerEvent};
use xenvt_proxy::rfb::encoding::*;
use xenvt_proxy::rfb::{EncoderState, Framebuffer, PixelFormat, Rect, UpdateWriter};

/// xorshift64*: deterministic, so a failure reproduces.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u32) -> u32 {
        (self.next() % u64::from(n.max(1))) as u32
    }
}

fn random_rect(rng: &mut Rng, w: u16, h: u16) -> Rect {
    let x = rng.below(w.into()) as u16;
    let y = rng.below(h.into()) as u16;
    let rw = 1 + rng.below(u32::from(w - x)) as u16;
    let rh = 1 + rng.below(u32::from(h - y)) as u16;
    Rect::new(x, y, rw, rh)
}

/// Draws one of several kinds of content so every encoder path is taken: solid, two
/// colours, a small palette, noise and a smooth gradient.
fn scribble(rng: &mut Rng, fb: &mut Framebuffer) -> Rect {
    let r = random_rect(rng, fb.width(), fb.height());
    let kind = rng.below(5);
    let pal: Vec<u32> = (0..(2 + rng.below(40)))
        .map(|_| rng.next() as u32 & 0xffffff)
        .collect();
    let base = rng.next() as u32;
    let w = fb.width() as usize;
    for y in r.y..r.y + r.h {
        for x in r.x..r.x + r.w {
            let c = match kind {
                0 => base & 0xffffff,
                1 => pal[usize::from((x / 3 + y / 2) % 2)],
                2 => pal[rng.below(pal.len() as u32) as usize],
                3 => rng.next() as u32 & 0xffffff,
                _ => (u32::from(x as u8) << 16) | (u32::from(y as u8) << 8) | (base & 0xff),
            };
            fb.pixels_mut()[usize::from(y) * w + usize::from(x)] = c;
        }
    }
    r
}

fn formats() -> Vec<PixelFormat> {
    let be = |pf: PixelFormat| PixelFormat {
        big_endian: true,
        ..pf
    };
    vec![
        PixelFormat::rgb888(),
        be(PixelFormat::rgb888()),
        PixelFormat {
            red_shift: 0,
            blue_shift: 16,
            ..PixelFormat::rgb888()
        },
        PixelFormat {
            red_shift: 24,
            green_shift: 16,
            blue_shift: 8,
            depth: 24,
            ..PixelFormat::rgb888()
        },
        be(PixelFormat {
            red_shift: 24,
            green_shift: 16,
            blue_shift: 8,
            ..PixelFormat::rgb888()
        }),
        PixelFormat::rgb565(),
        be(PixelFormat::rgb565()),
        PixelFormat {
            depth: 15,
            red_max: 31,
            green_max: 31,
            blue_max: 31,
            red_shift: 10,
            green_shift: 5,
            blue_shift: 0,
            ..PixelFormat::rgb565()
        },
        PixelFormat::bgr233(),
    ]
}

/// Feeds `bytes` to the decoder in small random pieces, as a socket would, and returns
/// the events.
fn feed(dec: &mut ClientDecoder, bytes: &[u8], rng: &mut Rng) -> Vec<ServerEvent> {
    let mut evs = Vec::new();
    let mut have = 0usize;
    let mut pos = 0usize;
    loop {
        match dec.process(&bytes[pos..have]).expect("decode") {
            Some((ev, used)) => {
                pos += used;
                let end = ev == ServerEvent::UpdateEnd;
                evs.push(ev);
                if end && pos == bytes.len() {
                    return evs;
                }
            }
            None => {
                assert!(have < bytes.len(), "decoder wants more than was sent");
                have = (have + 1 + rng.below(9000) as usize).min(bytes.len());
            }
        }
    }
}

fn round_trip(enc: &[i32], lossy: bool) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ enc[0] as u64);
    for pf in formats() {
        let (w, h) = (203u16, 151u16);
        let mut fb = Framebuffer::new(w, h).unwrap();
        let mut st = EncoderState::new(pf).unwrap();
        st.set_encodings(enc);
        let mut dec = ClientDecoder::new(pf, w, h, DecoderLimits::default()).unwrap();
        for frame in 0..12 {
            let mut rects = vec![fb.rect()];
            if frame > 0 {
                rects = (0..1 + rng.below(4))
                    .map(|_| scribble(&mut rng, &mut fb))
                    .collect();
            }
            let mut out = Vec::new();
            let mut upd = UpdateWriter::begin(&mut out);
            for r in &rects {
                st.encode(&mut upd, &mut out, &fb, r).unwrap();
            }
            upd.finish(&mut out);
            let evs = feed(&mut dec, &out, &mut rng);
            assert!(matches!(evs[0], ServerEvent::UpdateBegin { .. }));
            let got = dec.framebuffer().pixels();
            let mut err = 0u64;
            for (i, (&src, &g)) in fb.pixels().iter().zip(got).enumerate() {
                let want = st.seen_colour(src);
                if lossy {
                    for s in [0, 8, 16] {
                        err += u64::from(((want >> s) & 0xff).abs_diff((g >> s) & 0xff));
                    }
                } else {
                    assert_eq!(
                        g,
                        want,
                        "enc {enc:?} pf {pf:?} frame {frame} pixel {},{}",
                        i % usize::from(w),
                        i / usize::from(w)
                    );
                }
            }
            if lossy {
                let mean = err as f64 / (fb.pixels().len() * 3) as f64;
                assert!(mean < 12.0, "JPEG error {mean} too large for {pf:?}");
            }
        }
    }
}

#[test]
fn raw_round_trip() {
    round_trip(&[RAW], false);
}

#[test]
fn hextile_round_trip() {
    round_trip(&[HEXTILE], false);
}

#[test]
fn zlib_round_trip() {
    round_trip(&[ZLIB, COMPRESS_LEVEL_0 + 1], false);
}

#[test]
fn zrle_round_trip() {
    round_trip(&[ZRLE], false);
}

#[test]
fn tight_lossless_round_trip() {
    round_trip(&[TIGHT, COMPRESS_LEVEL_0 + 6], false);
}

#[test]
fn tight_jpeg_round_trip() {
    round_trip(&[TIGHT, TIGHT_QUALITY_0 + 9], true);
}

#[test]
fn copy_rect_round_trip() {
    let pf = PixelFormat::rgb888();
    let mut rng = Rng(7);
    let mut fb = Framebuffer::new(64, 48).unwrap();
    scribble(&mut rng, &mut fb);
    for p in fb.pixels_mut() {
        *p = rng.next() as u32 & 0xffffff;
    }
    let mut st = EncoderState::new(pf).unwrap();
    let mut dec = ClientDecoder::new(pf, 64, 48, DecoderLimits::default()).unwrap();
    let mut out = Vec::new();
    let mut upd = UpdateWriter::begin(&mut out);
    st.encode_with(&mut upd, &mut out, &fb, &fb.rect(), RAW)
        .unwrap();
    upd.finish(&mut out);
    feed(&mut dec, &out, &mut rng);
    for _ in 0..20 {
        let dst = random_rect(&mut rng, 64, 48);
        let sx = rng.below(u32::from(64 - dst.w) + 1) as u16;
        let sy = rng.below(u32::from(48 - dst.h) + 1) as u16;
        fb.copy_rect(&dst, sx, sy).unwrap();
        let mut out = Vec::new();
        let mut upd = UpdateWriter::begin(&mut out);
        st.copy_rect(&mut upd, &mut out, &fb, &dst, sx, sy).unwrap();
        upd.finish(&mut out);
        feed(&mut dec, &out, &mut rng);
        assert_eq!(dec.framebuffer(), &fb);
    }
}

#[test]
fn wide_tight_rectangles_are_split() {
    let pf = PixelFormat::rgb888();
    let mut fb = Framebuffer::new(4100, 40).unwrap();
    let mut rng = Rng(3);
    for p in fb.pixels_mut() {
        *p = rng.next() as u32 & 0xffffff;
    }
    let mut st = EncoderState::new(pf).unwrap();
    st.set_encodings(&[TIGHT]);
    let mut out = Vec::new();
    let mut upd = UpdateWriter::begin(&mut out);
    st.encode(&mut upd, &mut out, &fb, &fb.rect()).unwrap();
    assert!(upd.count() >= 3);
    upd.finish(&mut out);
    let mut dec = ClientDecoder::new(pf, 4100, 40, DecoderLimits::default()).unwrap();
    let evs = feed(&mut dec, &out, &mut rng);
    for ev in &evs {
        if let ServerEvent::Rect { rect, .. } = ev {
            assert!(rect.w <= 2048 && rect.area() <= 65536);
        }
    }
    assert_eq!(dec.framebuffer(), &fb);
}

#[test]
fn pseudo_rectangles_round_trip() {
    use xenvt_proxy::rfb::server_msg::{EDS_INVALID_LAYOUT, EDS_REASON_THIS_CLIENT};
    use xenvt_proxy::rfb::{Packer, Screen};
    let pf = PixelFormat::rgb565();
    let mut out = Vec::new();
    let mut upd = UpdateWriter::begin(&mut out);
    upd.desktop_name(&mut out, "guest 7");
    upd.desktop_size(&mut out, 32, 16);
    let screens = [Screen {
        id: 9,
        rect: Rect::new(0, 0, 32, 16),
        flags: 0,
    }];
    upd.extended_desktop_size(
        &mut out,
        EDS_REASON_THIS_CLIENT,
        EDS_INVALID_LAYOUT,
        32,
        16,
        &screens,
    );
    upd.cursor(
        &mut out,
        &Packer::new(pf),
        1,
        2,
        3,
        2,
        &[0xff0000, 0, 0xffffff, 0, 0, 0],
        &[0b1010_0000, 0b0100_0000],
    )
    .unwrap();
    upd.finish(&mut out);
    let mut dec = ClientDecoder::new(pf, 8, 8, DecoderLimits::default()).unwrap();
    let evs = feed(&mut dec, &out, &mut Rng(1));
    assert_eq!(evs[1], ServerEvent::DesktopName("guest 7".into()));
    assert_eq!(
        evs[2],
        ServerEvent::DesktopSize {
            width: 32,
            height: 16
        }
    );
    assert_eq!(
        (dec.framebuffer().width(), dec.framebuffer().height()),
        (32, 16)
    );
    assert_eq!(
        evs[3],
        ServerEvent::ExtendedDesktopSize {
            reason: EDS_REASON_THIS_CLIENT,
            status: EDS_INVALID_LAYOUT,
            width: 32,
            height: 16,
            screens: screens.to_vec()
        }
    );
    match &evs[4] {
        ServerEvent::Cursor {
            hot_x: 1,
            hot_y: 2,
            width: 3,
            height: 2,
            pixels,
            mask,
        } => {
            assert_eq!(pixels[0], 0xff0000);
            assert_eq!(pixels[2], 0xffffff);
            assert_eq!(mask, &[0b1010_0000, 0b0100_0000]);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(evs[5], ServerEvent::UpdateEnd);
}

#[test]
fn server_messages_parse_on_the_client() {
    use xenvt_proxy::rfb::ServerMessage;
    let msgs = [
        ServerMessage::Bell,
        ServerMessage::ServerCutText(b"clip".to_vec()),
        ServerMessage::EndOfContinuousUpdates,
        ServerMessage::Fence {
            flags: 3,
            payload: vec![9; 64],
        },
        ServerMessage::SetColourMapEntries {
            first: 4,
            colours: vec![[1, 2, 3], [4, 5, 6]],
        },
    ];
    let mut out = Vec::new();
    for m in &msgs {
        m.write(&mut out);
    }
    let mut dec =
        ClientDecoder::new(PixelFormat::rgb888(), 4, 4, DecoderLimits::default()).unwrap();
    let mut pos = 0;
    let mut evs = Vec::new();
    while pos < out.len() {
        let (ev, used) = dec.process(&out[pos..]).unwrap().unwrap();
        pos += used;
        evs.push(ev);
    }
    assert_eq!(
        evs,
        vec![
            ServerEvent::Bell,
            ServerEvent::CutText(b"clip".to_vec()),
            ServerEvent::EndOfContinuousUpdates,
            ServerEvent::Fence {
                flags: 3,
                payload: vec![9; 64]
            },
            ServerEvent::ColourMap {
                first: 4,
                colours: vec![[1, 2, 3], [4, 5, 6]]
            },
        ]
    );
}
