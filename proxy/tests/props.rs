//! Property tests: message round trips, and encode/decode agreement on arbitrary
//! framebuffers and rectangles.

use proptest::prelude::*;
use xenvt_proxy::rfb::decode::{ClientDecoder, DecoderLimits, ServerEvent};
use xenvt_proxy::rfb::encoding::*;
use xenvt_proxy::rfb::{
    parse_client_message, ClientLimits, ClientMessage, EncoderState, Framebuffer, PixelFormat,
    Rect, Screen, UpdateWriter,
};

fn rect() -> impl Strategy<Value = Rect> {
    (any::<u16>(), any::<u16>(), any::<u16>(), any::<u16>())
        .prop_map(|(x, y, w, h)| Rect::new(x, y, w, h))
}

fn pixel_format() -> impl Strategy<Value = PixelFormat> {
    (
        prop_oneof![Just(8u8), Just(16), Just(32)],
        any::<bool>(),
        1u32..=8,
        1u32..=8,
        1u32..=8,
        0u8..32,
        0u8..32,
        0u8..32,
    )
        .prop_map(|(bpp, be, r, g, b, rs, gs, bs)| PixelFormat {
            bits_per_pixel: bpp,
            depth: bpp.min(24),
            big_endian: be,
            true_colour: true,
            red_max: ((1u32 << r) - 1) as u16,
            green_max: ((1u32 << g) - 1) as u16,
            blue_max: ((1u32 << b) - 1) as u16,
            red_shift: rs,
            green_shift: gs,
            blue_shift: bs,
        })
        .prop_filter("sane", |pf| pf.validate().is_ok())
}

fn client_message() -> impl Strategy<Value = ClientMessage> {
    prop_oneof![
        pixel_format().prop_map(ClientMessage::SetPixelFormat),
        prop::collection::vec(any::<i32>(), 0..50).prop_map(ClientMessage::SetEncodings),
        (any::<bool>(), rect()).prop_map(|(incremental, rect)| {
            ClientMessage::FramebufferUpdateRequest { incremental, rect }
        }),
        (any::<bool>(), any::<u32>()).prop_map(|(down, key)| ClientMessage::KeyEvent { down, key }),
        (any::<u8>(), any::<u16>(), any::<u16>())
            .prop_map(|(buttons, x, y)| ClientMessage::PointerEvent { buttons, x, y }),
        prop::collection::vec(any::<u8>(), 0..300).prop_map(ClientMessage::ClientCutText),
        (any::<bool>(), rect())
            .prop_map(|(enable, rect)| ClientMessage::EnableContinuousUpdates { enable, rect }),
        (any::<u32>(), prop::collection::vec(any::<u8>(), 0..=64))
            .prop_map(|(flags, payload)| ClientMessage::Fence { flags, payload }),
        (
            any::<u16>(),
            any::<u16>(),
            prop::collection::vec((any::<u32>(), rect(), any::<u32>()), 0..16)
        )
            .prop_map(|(width, height, s)| {
                ClientMessage::SetDesktopSize {
                    width,
                    height,
                    screens: s
                        .into_iter()
                        .map(|(id, rect, flags)| Screen { id, rect, flags })
                        .collect(),
                }
            }),
        (any::<bool>(), any::<u32>(), any::<u32>()).prop_map(|(down, keysym, keycode)| {
            ClientMessage::QemuKeyEvent {
                down,
                keysym,
                keycode,
            }
        }),
    ]
}

proptest! {
    #[test]
    fn client_messages_round_trip(msgs in prop::collection::vec(client_message(), 1..8), cut in any::<prop::sample::Index>()) {
        let lim = ClientLimits::default();
        let mut bytes = Vec::new();
        for m in &msgs {
            m.write(&mut bytes);
        }
        // A prefix never yields a wrong message: either one of ours or "need more".
        let c = cut.index(bytes.len() + 1);
        if let Some((m, _)) = parse_client_message(&bytes[..c], &lim).unwrap() {
            prop_assert_eq!(&m, &msgs[0]);
        }
        let mut pos = 0;
        for m in &msgs {
            let (got, used) = parse_client_message(&bytes[pos..], &lim).unwrap().unwrap();
            prop_assert_eq!(&got, m);
            pos += used;
        }
        prop_assert_eq!(pos, bytes.len());
    }

    #[test]
    fn every_encoding_agrees_with_raw(
        pf in pixel_format(),
        w in 1u16..80,
        h in 1u16..80,
        seed in any::<u64>(),
        colours in 1usize..300,
        enc in prop_oneof![Just(RAW), Just(HEXTILE), Just(ZLIB), Just(ZRLE), Just(TIGHT)],
    ) {
        let mut fb = Framebuffer::new(w, h).unwrap();
        let mut s = seed | 1;
        let pal: Vec<u32> = (0..colours).map(|i| (i as u32).wrapping_mul(0x9e3779b1) & 0xffffff).collect();
        for p in fb.pixels_mut() {
            s ^= s << 13; s ^= s >> 7; s ^= s << 17;
            *p = pal[(s % colours as u64) as usize];
        }
        let mut st = EncoderState::new(pf).unwrap();
        st.set_encodings(&[enc]);
        let mut out = Vec::new();
        let mut upd = UpdateWriter::begin(&mut out);
        st.encode(&mut upd, &mut out, &fb, &fb.rect()).unwrap();
        upd.finish(&mut out);
        let mut dec = ClientDecoder::new(pf, w, h, DecoderLimits::default()).unwrap();
        let mut pos = 0;
        loop {
            let (ev, used) = dec.process(&out[pos..]).unwrap().unwrap();
            pos += used;
            if ev == ServerEvent::UpdateEnd { break; }
        }
        prop_assert_eq!(pos, out.len());
        for (&src, &got) in fb.pixels().iter().zip(dec.framebuffer().pixels()) {
            prop_assert_eq!(got, st.seen_colour(src));
        }
    }
}
