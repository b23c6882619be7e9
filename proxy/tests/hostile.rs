//! Published proof-of-concept bad inputs (the lessons of TigerVNC CVE-2019-15691..15695
//! and libvncserver CVE-2018-7225): each must give a typed error, never a panic, a hang
//! or a large allocation.

use flate2::{write::ZlibEncoder, Compression};
use std::io::Write;
use xenvt_proxy::rfb::decode::{ClientDecoder, DecoderLimits, ServerEvent};
use xenvt_proxy::rfb::encoding::*;
use xenvt_proxy::rfb::{parse_client_message, ClientLimits, Error, PixelFormat};

fn dec(w: u16, h: u16) -> ClientDecoder {
    ClientDecoder::new(PixelFormat::rgb888(), w, h, DecoderLimits::default()).unwrap()
}

/// x, y, w, h, encoding, body.
type RawRect<'a> = (u16, u16, u16, u16, i32, &'a [u8]);

fn update(rects: &[RawRect<'_>]) -> Vec<u8> {
    let mut v = vec![0, 0];
    v.extend_from_slice(&(rects.len() as u16).to_be_bytes());
    for (x, y, w, h, e, body) in rects {
        for f in [x, y, w, h] {
            v.extend_from_slice(&f.to_be_bytes());
        }
        v.extend_from_slice(&e.to_be_bytes());
        v.extend_from_slice(body);
    }
    v
}

/// Runs the decoder over `bytes` and returns the first error.
fn first_error(d: &mut ClientDecoder, bytes: &[u8]) -> Error {
    let mut pos = 0;
    loop {
        match d.process(&bytes[pos..]) {
            Ok(Some((_, used))) => pos += used,
            Ok(None) => panic!("decoder wanted more instead of failing"),
            Err(e) => return e,
        }
    }
}

fn zlib(data: &[u8]) -> Vec<u8> {
    let mut z = ZlibEncoder::new(Vec::new(), Compression::best());
    z.write_all(data).unwrap();
    z.flush().unwrap();
    z.get_ref().clone()
}

#[test]
fn huge_client_cut_text() {
    let msg = [6u8, 0, 0, 0, 0x7f, 0xff, 0xff, 0xff];
    assert!(matches!(
        parse_client_message(&msg, &ClientLimits::default()),
        Err(Error::TooLarge { .. })
    ));
    // Extended clipboard uses a negative length; it must not be read as a huge one.
    let msg = [6u8, 0, 0, 0, 0xff, 0xff, 0xff, 0xfc];
    assert!(parse_client_message(&msg, &ClientLimits::default()).is_err());
}

#[test]
fn huge_server_cut_text() {
    let msg = [3u8, 0, 0, 0, 0xff, 0xff, 0xff, 0xff];
    assert!(matches!(
        first_error(&mut dec(4, 4), &msg),
        Error::TooLarge { .. }
    ));
}

#[test]
fn colour_max_zero() {
    let mut pf = PixelFormat::rgb888().to_wire();
    pf[8] = 0;
    pf[9] = 0;
    let mut msg = vec![0u8, 0, 0, 0];
    msg.extend_from_slice(&pf);
    assert!(matches!(
        parse_client_message(&msg, &ClientLimits::default()),
        Err(Error::PixelFormat(_))
    ));
}

#[test]
fn oversized_and_wrapping_rectangles() {
    for (x, y, w, h) in [
        (0, 0, 11, 1),
        (65535, 0, 2, 1),
        (0, 65535, 1, 65535),
        (5, 5, 6, 6),
    ] {
        let m = update(&[(x, y, w, h, RAW, &[])]);
        assert!(
            matches!(first_error(&mut dec(10, 10), &m), Error::RectOutside { .. }),
            "{x},{y} {w}x{h}"
        );
    }
}

#[test]
fn copy_rect_from_outside() {
    for (sx, sy) in [(9u16, 0u16), (0, 9), (65535, 65535)] {
        let mut body = sx.to_be_bytes().to_vec();
        body.extend_from_slice(&sy.to_be_bytes());
        let m = update(&[(0, 0, 2, 2, COPY_RECT, &body)]);
        assert!(matches!(
            first_error(&mut dec(10, 10), &m),
            Error::RectOutside { .. }
        ));
    }
}

#[test]
fn zlib_bombs() {
    let bomb = zlib(&vec![0u8; 8 << 20]);
    let mut body = (bomb.len() as u32).to_be_bytes().to_vec();
    body.extend_from_slice(&bomb);
    for enc in [ZLIB, ZRLE] {
        let m = update(&[(0, 0, 4, 4, enc, &body)]);
        assert!(
            matches!(first_error(&mut dec(4, 4), &m), Error::Zlib(_)),
            "encoding {enc}"
        );
    }
    // Tight full colour, stream 0, for a 4x4 rectangle (48 bytes expected).
    let mut tight = vec![0x00];
    let n = bomb.len();
    assert!(n < 1 << 22);
    tight.extend_from_slice(&[
        (n as u8 & 0x7f) | 0x80,
        ((n >> 7) as u8 & 0x7f) | 0x80,
        (n >> 14) as u8,
    ]);
    tight.extend_from_slice(&bomb);
    let m = update(&[(0, 0, 4, 4, TIGHT, &tight)]);
    assert!(matches!(first_error(&mut dec(4, 4), &m), Error::Zlib(_)));
}

#[test]
fn corrupt_zlib_and_short_zlib() {
    let body = [0, 0, 0, 4, 0xde, 0xad, 0xbe, 0xef];
    let m = update(&[(0, 0, 4, 4, ZLIB, &body)]);
    assert!(matches!(first_error(&mut dec(4, 4), &m), Error::Zlib(_)));
    let z = zlib(&[1, 2, 3]);
    let mut body = (z.len() as u32).to_be_bytes().to_vec();
    body.extend_from_slice(&z);
    let m = update(&[(0, 0, 4, 4, ZLIB, &body)]);
    assert!(matches!(first_error(&mut dec(4, 4), &m), Error::Zlib(_)));
}

fn tight_palette(size_minus_one: u8, colours: usize, indices: &[u8]) -> Vec<u8> {
    let mut b = vec![0x60, 1, size_minus_one];
    for i in 0..colours {
        b.extend_from_slice(&[i as u8, 0, 0]);
    }
    if indices.len() < 12 {
        b.extend_from_slice(indices);
    } else {
        let z = zlib(indices);
        assert!(z.len() < 128);
        b.push(z.len() as u8);
        b.extend_from_slice(&z);
    }
    b
}

#[test]
fn tight_palette_edges() {
    // 256 colours is sent as 255; the last index must be usable.
    let body = tight_palette(255, 256, &[255, 0, 128, 7]);
    let m = update(&[(0, 0, 4, 1, TIGHT, &body)]);
    let mut d = dec(4, 1);
    let mut pos = 0;
    while let Some((ev, used)) = d.process(&m[pos..]).unwrap() {
        pos += used;
        if ev == ServerEvent::UpdateEnd {
            break;
        }
    }
    assert_eq!(
        d.framebuffer().pixels(),
        &[255 << 16, 0, 128 << 16, 7 << 16]
    );
    // An index past the palette.
    let body = tight_palette(2, 3, &[0, 1, 3, 2]);
    let m = update(&[(0, 0, 4, 1, TIGHT, &body)]);
    assert!(matches!(
        first_error(&mut dec(4, 1), &m),
        Error::Malformed(_)
    ));
    // A compressed block of indices with one bad one.
    let mut idx = vec![0u8; 64];
    idx[63] = 9;
    let body = tight_palette(3, 4, &idx);
    let m = update(&[(0, 0, 8, 8, TIGHT, &body)]);
    assert!(matches!(
        first_error(&mut dec(8, 8), &m),
        Error::Malformed(_)
    ));
    // A one-colour palette is legal with 8-bit indices.
    let body = tight_palette(0, 1, &[0, 0]);
    let m = update(&[(0, 0, 2, 1, TIGHT, &body)]);
    let mut d = dec(2, 1);
    assert!(d.process(&m).unwrap().is_some());
    assert!(d.process(&m[4..]).unwrap().is_some());
}

#[test]
fn tight_bad_control_and_filter() {
    for body in [&[0xa0u8][..], &[0x40, 7]] {
        let m = update(&[(0, 0, 1, 1, TIGHT, body)]);
        assert!(matches!(
            first_error(&mut dec(4, 4), &m),
            Error::Malformed(_)
        ));
    }
    let m = update(&[(0, 0, 1, 1, TIGHT, &[0x90, 4, 1, 2, 3, 4])]);
    assert!(matches!(first_error(&mut dec(4, 4), &m), Error::Jpeg(_)));
}

#[test]
fn tight_gradient_filter() {
    // A 3x1 row through the gradient filter: each pixel is predicted from the left one,
    // so the data are differences (mod 256 per component).
    let body = [0x40, 2, 10, 20, 30, 5, 5, 5, 251, 0, 1];
    let m = update(&[(0, 0, 3, 1, TIGHT, &body)]);
    let mut d = dec(3, 1);
    d.process(&m).unwrap().unwrap();
    d.process(&m[4..]).unwrap().unwrap();
    assert_eq!(d.framebuffer().pixels(), &[0x0a141e, 0x0f1923, 0x0a1924]);
}

#[test]
fn hextile_subrect_outside_tile() {
    // AnySubrects with one 16x16 subrectangle at 1,0 of a 16x16 tile.
    let body = [8u8 | 2 | 4, 1, 1, 1, 0, 2, 2, 2, 0, 1, 0x10, 0xff];
    let m = update(&[(0, 0, 16, 16, HEXTILE, &body)]);
    assert!(matches!(
        first_error(&mut dec(16, 16), &m),
        Error::RectOutside { .. }
    ));
    // Same for a smaller edge tile.
    let body = [8u8 | 2 | 4, 1, 1, 1, 0, 2, 2, 2, 0, 1, 0x00, 0x44];
    let m = update(&[(0, 0, 4, 4, HEXTILE, &body)]);
    assert!(matches!(
        first_error(&mut dec(4, 4), &m),
        Error::RectOutside { .. }
    ));
}

fn zrle_rect(w: u16, h: u16, tiles: &[u8]) -> Vec<u8> {
    let z = zlib(tiles);
    let mut body = (z.len() as u32).to_be_bytes().to_vec();
    body.extend_from_slice(&z);
    update(&[(0, 0, w, h, ZRLE, &body)])
}

#[test]
fn zrle_bad_tiles() {
    // Palette RLE with 2 colours and index 5.
    let m = zrle_rect(2, 1, &[130, 1, 1, 1, 2, 2, 2, 5, 0]);
    assert!(matches!(
        first_error(&mut dec(2, 1), &m),
        Error::Malformed(_)
    ));
    // Plain RLE whose run is longer than the tile.
    let m = zrle_rect(2, 1, &[128, 1, 2, 3, 255, 255, 7]);
    assert!(matches!(
        first_error(&mut dec(2, 1), &m),
        Error::Malformed(_)
    ));
    // Packed palette of 3 colours with index 3.
    let m = zrle_rect(1, 1, &[3, 0, 0, 0, 1, 1, 1, 2, 2, 2, 0b1100_0000]);
    assert!(matches!(
        first_error(&mut dec(1, 1), &m),
        Error::Malformed(_)
    ));
    // Unused subencodings.
    for sub in [17u8, 127, 129] {
        let m = zrle_rect(1, 1, &[sub, 0, 0, 0]);
        assert!(matches!(
            first_error(&mut dec(1, 1), &m),
            Error::Malformed(_)
        ));
    }
    // Truncated tile data.
    let m = zrle_rect(4, 4, &[0, 1, 2, 3]);
    assert!(matches!(
        first_error(&mut dec(4, 4), &m),
        Error::Malformed(_)
    ));
}

#[test]
fn rre_huge_count_fails_before_the_body() {
    let body = [0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0];
    let m = update(&[(0, 0, 4, 4, RRE, &body)]);
    assert!(matches!(
        first_error(&mut dec(4, 4), &m),
        Error::TooLarge { .. }
    ));
    let mut body = vec![0, 0, 0, 1, 0, 0, 0, 0];
    body.extend_from_slice(&[1, 1, 1, 0, 0, 3, 0, 0, 0, 2, 0, 1]);
    let m = update(&[(0, 0, 4, 4, RRE, &body)]);
    assert!(matches!(
        first_error(&mut dec(4, 4), &m),
        Error::RectOutside { .. }
    ));
}

#[test]
fn unknown_messages_encodings_and_sizes() {
    assert!(matches!(
        first_error(&mut dec(4, 4), &[99]),
        Error::UnknownMessage(99)
    ));
    let m = update(&[(0, 0, 1, 1, 12345, &[])]);
    assert!(matches!(
        first_error(&mut dec(4, 4), &m),
        Error::UnsupportedEncoding(12345)
    ));
    let m = update(&[(0, 0, 65535, 65535, DESKTOP_SIZE, &[])]);
    assert!(matches!(
        first_error(&mut dec(4, 4), &m),
        Error::TooLarge { .. }
    ));
    let m = update(&[(0, 0, 4096, 4096, CURSOR, &[])]);
    assert!(matches!(
        first_error(&mut dec(4, 4), &m),
        Error::TooLarge { .. }
    ));
    let mut name = vec![0xff, 0xff, 0xff, 0xff];
    name.push(b'x');
    let m = update(&[(0, 0, 0, 0, DESKTOP_NAME, &name)]);
    assert!(matches!(
        first_error(&mut dec(4, 4), &m),
        Error::TooLarge { .. }
    ));
}

#[test]
fn last_rect_ends_an_open_update() {
    let m = update(&[(0, 0, 0, 0, LAST_RECT, &[])]);
    let mut m2 = m.clone();
    m2[2] = 0xff;
    m2[3] = 0xff;
    let mut d = dec(4, 4);
    let (ev, n) = d.process(&m2).unwrap().unwrap();
    assert_eq!(ev, ServerEvent::UpdateBegin { rects: 0xffff });
    let (ev, _) = d.process(&m2[n..]).unwrap().unwrap();
    assert_eq!(ev, ServerEvent::UpdateEnd);
    // Ready for a normal message again.
    assert_eq!(d.process(&[2]).unwrap().unwrap().0, ServerEvent::Bell);
}
