//! Upstream bytes into our zlib decoder.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xenvt_proxy::rfb::encoding::ZLIB;

fuzz_target!(|data: &[u8]| {
    xenvt_proxy_fuzz::decode_one(ZLIB, data);
});
