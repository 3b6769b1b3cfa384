//! Fuzzes the decoder of a `media` message's payload (`media::protocol::decode_payload`, vector
//! instructions where the CPU has them): it never panics, and it takes and refuses exactly what
//! `base64`'s `STANDARD` engine does, with the same bytes.
#![no_main]

use base64::{Engine as _, engine::general_purpose::STANDARD};
use call_api::media::protocol::decode_payload;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The payload is a JSON string's text, so UTF-8.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    assert_eq!(decode_payload(text), STANDARD.decode(data).ok(), "{text:?}");
});
