//! Upstream bytes into our zrle decoder.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xenvt_proxy::rfb::encoding::ZRLE;

fuzz_target!(|data: &[u8]| {
    xenvt_proxy_fuzz::decode_one(ZRLE, data);
});
