//! Upstream bytes into our raw decoder.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xenvt_proxy::rfb::encoding::RAW;

fuzz_target!(|data: &[u8]| {
    xenvt_proxy_fuzz::decode_one(RAW, data);
});
