//! Upstream bytes into our tight decoder.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xenvt_proxy::rfb::encoding::TIGHT;

fuzz_target!(|data: &[u8]| {
    xenvt_proxy_fuzz::decode_one(TIGHT, data);
});
