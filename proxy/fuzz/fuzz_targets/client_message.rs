//! Viewer bytes into our server side's message parser.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xenvt_proxy::rfb::{parse_client_message, ClientLimits};

fuzz_target!(|data: &[u8]| {
    let lim = ClientLimits::default();
    let mut pos = 0;
    while let Ok(Some((msg, used))) = parse_client_message(&data[pos..], &lim) {
        // Whatever parses must serialise back to the bytes it came from, padding aside.
        let again = msg.to_bytes();
        assert_eq!(again.len(), used);
        let reparsed = parse_client_message(&again, &lim).unwrap().unwrap();
        assert_eq!(reparsed.0, msg);
        pos += used;
    }
});
