//! Fuzzes the carriers' messages (`media::protocol::parse`, the media WebSocket's decoder of
//! outside bytes): it never panics, and its one-scan path for `media` messages gives exactly the
//! answer `serde_json` gives (`parse_json`), `Ok` with the same frame or the same error text.
#![no_main]

use call_api::media::protocol::{Inbound, parse, parse_json};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The WebSocket hands over text frames only after checking they are UTF-8.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let fast = parse(text);
    assert_eq!(format!("{fast:?}"), format!("{:?}", parse_json(text)), "{text}");
    if let Ok(Inbound::Media { payload, .. }) = &fast {
        assert!(!payload.is_empty() && payload.len() <= call_api::media::protocol::MAX_MEDIA_PAYLOAD);
    }
});
