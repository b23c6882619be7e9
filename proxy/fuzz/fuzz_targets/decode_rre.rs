//! Upstream bytes into our rre decoder.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xenvt_proxy::rfb::encoding::RRE;

fuzz_target!(|data: &[u8]| {
    xenvt_proxy_fuzz::decode_one(RRE, data);
});
