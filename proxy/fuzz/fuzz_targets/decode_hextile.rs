//! Upstream bytes into our hextile decoder.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xenvt_proxy::rfb::encoding::HEXTILE;

fuzz_target!(|data: &[u8]| {
    xenvt_proxy_fuzz::decode_one(HEXTILE, data);
});
