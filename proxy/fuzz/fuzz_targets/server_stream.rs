//! Arbitrary upstream bytes, from the first message on, into our client side.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    xenvt_proxy_fuzz::run_stream(data);
});
