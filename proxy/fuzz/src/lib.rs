//! Shared drivers for the fuzz targets.

use xenvt_proxy::rfb::decode::{ClientDecoder, DecoderLimits};
use xenvt_proxy::rfb::PixelFormat;

const FORMATS: [PixelFormat; 4] = [
    PixelFormat::rgb888(),
    PixelFormat::rgb565(),
    PixelFormat::bgr233(),
    PixelFormat {
        big_endian: true,
        red_shift: 24,
        green_shift: 16,
        blue_shift: 8,
        ..PixelFormat::rgb888()
    },
];

/// Feeds everything to a decoder for a 64x48 framebuffer until it errors or wants more,
/// also feeding it in two pieces to check that "need more" changes nothing.
pub fn run_stream(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let pf = FORMATS[usize::from(sel) % FORMATS.len()];
    let limits = DecoderLimits {
        max_rect_bytes: 1 << 20,
        ..DecoderLimits::default()
    };
    let mut whole = ClientDecoder::new(pf, 64, 48, limits).expect("decoder");
    let mut pos = 0;
    let mut events = Vec::new();
    while let Ok(Some((ev, used))) = whole.process(&rest[pos..]) {
        pos += used;
        events.push(ev);
        if events.len() > 10_000 {
            break;
        }
    }
    // The same bytes with every parse first tried on a cut-short buffer.
    let mut split = ClientDecoder::new(pf, 64, 48, limits).expect("decoder");
    let mut pos = 0;
    for ev in &events {
        let cut = (rest.len() - pos) / 2;
        if let Ok(Some((e2, used))) = split.process(&rest[pos..pos + cut]) {
            assert_eq!(&e2, ev);
            pos += used;
            continue;
        }
        let (e2, used) = split.process(&rest[pos..]).unwrap().unwrap();
        assert_eq!(&e2, ev);
        pos += used;
    }
    assert_eq!(split.framebuffer(), whole.framebuffer());
}

/// Wraps `data` as one FramebufferUpdate rectangle of `encoding`: the first byte picks
/// the pixel format, the next eight are the rectangle, the rest is its body.
pub fn decode_one(encoding: i32, data: &[u8]) {
    if data.len() < 9 {
        return;
    }
    let mut msg = vec![data[0], 0, 0, 0, 1];
    msg.extend_from_slice(&data[1..9]);
    msg.extend_from_slice(&encoding.to_be_bytes());
    msg.extend_from_slice(&data[9..]);
    // Two copies, so zlib stream state carries from one rectangle to the next.
    msg[4] = 2;
    msg.extend_from_slice(&data[1..9]);
    msg.extend_from_slice(&encoding.to_be_bytes());
    msg.extend_from_slice(&data[9..]);
    run_stream(&msg);
}
