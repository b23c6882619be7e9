//! Upstream bytes into our copy_rect decoder.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xenvt_proxy::rfb::encoding::COPY_RECT;

fuzz_target!(|data: &[u8]| {
    xenvt_proxy_fuzz::decode_one(COPY_RECT, data);
});
