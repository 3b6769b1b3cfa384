//! The Twilio Media Streams protocol: what a carrier sends over the media WebSocket and what we
//! send back. Messages are JSON text frames; audio is base64 μ-law at 8 kHz, mono.
//!
//! In: `connected`, `start`, `media`, `mark`, `dtmf`, `stop`. Out: `media`, `mark`, `clear`.
//! Every inbound message is checked strictly: unknown events, missing fields, bad base64 and
//! oversized payloads are errors that name what is wrong (never a panic).

use std::{borrow::Cow, collections::BTreeMap};

use base64::{Engine as _, engine::general_purpose::STANDARD};
use serde::Deserialize;
use serde_json::json;

/// Largest audio payload accepted in one `media` message: 1 s of 8 kHz μ-law (carriers send
/// 20 ms, 160 bytes).
pub const MAX_MEDIA_PAYLOAD: usize = 8000;
/// Bytes in one 20 ms frame of 8 kHz μ-law.
pub const FRAME_BYTES: usize = 160;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MediaFormat {
    pub encoding: String,
    pub sample_rate: u32,
    pub channels: u32,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StartInfo {
    #[serde(default)]
    pub account_sid: Option<String>,
    #[serde(default)]
    pub call_sid: Option<String>,
    #[serde(default)]
    pub tracks: Vec<String>,
    #[serde(default)]
    pub custom_parameters: BTreeMap<String, String>,
    pub media_format: MediaFormat,
}

/// The `media` object of a `media` message, borrowed from the text where it has no escapes.
#[derive(Debug, Deserialize)]
pub struct MediaInfo<'a> {
    #[serde(borrow, default)]
    pub track: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub chunk: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub timestamp: Cow<'a, str>,
    #[serde(borrow)]
    pub payload: Cow<'a, str>,
}

#[derive(Debug, Deserialize)]
pub struct MarkInfo {
    pub name: String,
}

#[derive(Debug, Deserialize)]
pub struct DtmfInfo {
    #[serde(default)]
    pub track: Option<String>,
    pub digit: String,
}

/// One message from the carrier, as sent: the fields of every event, parsed in one pass without
/// buffering (a tagged enum would buffer every message first) and borrowed where possible, so
/// that a `media` frame costs one allocation: its decoded audio.
#[derive(Debug, Deserialize)]
struct Raw<'a> {
    #[serde(borrow)]
    event: Cow<'a, str>,
    #[serde(rename = "sequenceNumber", borrow, default)]
    sequence_number: Option<Cow<'a, str>>,
    #[serde(rename = "streamSid", borrow, default)]
    stream_sid: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    media: Option<MediaInfo<'a>>,
    #[serde(default)]
    start: Option<StartInfo>,
    #[serde(default)]
    mark: Option<MarkInfo>,
    #[serde(default)]
    dtmf: Option<DtmfInfo>,
}

/// One message from the carrier, checked.
#[derive(Debug)]
pub enum Inbound {
    Connected,
    Start {
        stream_sid: String,
        call_sid: Option<String>,
        custom_parameters: BTreeMap<String, String>,
    },
    Media {
        sequence_number: u64,
        timestamp_ms: u64,
        payload: Vec<u8>,
    },
    /// `sequence_number`: the message's number (shared with the media frames), `None` when
    /// missing or not a number (only line quality reads it).
    Mark {
        name: String,
        sequence_number: Option<u64>,
    },
    Dtmf {
        digit: char,
        sequence_number: Option<u64>,
    },
    Stop,
}

/// Parses and checks one text frame.
///
/// A `media` message in the shape carriers send (known keys only, strings without escapes) is
/// read by [`fast_media`], a single scan over the text; anything else, and every message that
/// scan does not take, goes through `serde_json`. Both give the same answer for every text (a
/// property test holds them to it); the scan takes about a third of the time
/// (`benches/protocol.rs`).
pub fn parse(text: &str) -> Result<Inbound, String> {
    match fast_media(text) {
        // The scan takes the payload's text up to the next quote without looking inside it
        // (see [`Scan::payload`]); an escape or a control character there fails the base64
        // decode, so every answer but a decoded frame is the full parser's.
        Some(m) => media_parts(m.sequence_number, m.timestamp, m.track, m.payload).or_else(|_| parse_json(text)),
        None => parse_json(text),
    }
}

/// [`parse`] by `serde_json` alone: the reference the one-scan path is held to (by the property
/// tests and by the `media_message` fuzz target, `crates/call-api/fuzz`).
pub fn parse_json(text: &str) -> Result<Inbound, String> {
    let raw: Raw<'_> = serde_json::from_str(text).map_err(|e| format!("invalid message: {e}"))?;
    let missing = |event: &str, field: &str| format!("invalid message: {event} without `{field}`");
    Ok(match raw.event.as_ref() {
        "connected" => Inbound::Connected,
        "start" => {
            let stream_sid = raw.stream_sid.ok_or_else(|| missing("start", "streamSid"))?.into_owned();
            let start = raw.start.ok_or_else(|| missing("start", "start"))?;
            if stream_sid.is_empty() || stream_sid.len() > 64 {
                return Err("start: streamSid must be 1 to 64 characters".into());
            }
            let f = &start.media_format;
            if !f.encoding.eq_ignore_ascii_case("audio/x-mulaw") || f.sample_rate != 8000 || f.channels != 1 {
                return Err(format!(
                    "start: media format must be audio/x-mulaw at 8000 Hz, 1 channel (got {} at {} Hz, {} channels)",
                    f.encoding, f.sample_rate, f.channels
                ));
            }
            if start.custom_parameters.len() > 32
                || start.custom_parameters.iter().any(|(k, v)| k.len() > 64 || v.len() > 1024)
            {
                return Err("start: too many or too long custom parameters".into());
            }
            let _ = (&start.account_sid, &start.tracks);
            Inbound::Start { stream_sid, call_sid: start.call_sid, custom_parameters: start.custom_parameters }
        }
        "media" => {
            let sequence_number = raw.sequence_number.ok_or_else(|| missing("media", "sequenceNumber"))?;
            let m = raw.media.ok_or_else(|| missing("media", "media"))?;
            let _ = &m.chunk;
            return media_parts(&sequence_number, &m.timestamp, m.track.as_deref(), &m.payload);
        }
        "mark" => {
            let mark = raw.mark.ok_or_else(|| missing("mark", "mark"))?;
            if mark.name.len() > 256 {
                return Err("mark: name longer than 256 characters".into());
            }
            Inbound::Mark { name: mark.name, sequence_number: number(raw.sequence_number.as_deref()) }
        }
        "dtmf" => {
            let dtmf = raw.dtmf.ok_or_else(|| missing("dtmf", "dtmf"))?;
            let mut chars = dtmf.digit.chars();
            match (chars.next(), chars.next()) {
                (Some(d), None) if d.is_ascii_digit() || matches!(d, '*' | '#' | 'A'..='D') => {
                    let _ = &dtmf.track;
                    Inbound::Dtmf { digit: d, sequence_number: number(raw.sequence_number.as_deref()) }
                }
                _ => return Err("dtmf: digit must be one of 0-9, *, #, A-D".into()),
            }
        }
        "stop" => Inbound::Stop,
        other => {
            let shown: String = other.chars().take(32).collect();
            return Err(format!(
                "invalid message: unknown event `{shown}`, expected one of connected, start, media, mark, dtmf, stop"
            ));
        }
    })
}

/// Checks a `media` message's parts and decodes its audio (the one allocation).
fn media_parts(sequence_number: &str, timestamp: &str, track: Option<&str>, payload: &str) -> Result<Inbound, String> {
    let sequence_number =
        sequence_number.parse().map_err(|_| "media: sequenceNumber must be a whole number".to_string())?;
    let timestamp_ms = timestamp.parse().map_err(|_| "media: timestamp must be a whole number of ms".to_string())?;
    if let Some(track) = track
        && track != "inbound"
        && track != "inbound_track"
    {
        return Err(format!("media: only the inbound track is accepted (got {track})"));
    }
    if payload.len() > MAX_MEDIA_PAYLOAD * 4 / 3 + 4 {
        return Err(format!("media: payload larger than {MAX_MEDIA_PAYLOAD} bytes"));
    }
    let payload = decode_payload(payload).ok_or("media: payload is not base64")?;
    if payload.is_empty() || payload.len() > MAX_MEDIA_PAYLOAD {
        return Err(format!("media: payload must be 1 to {MAX_MEDIA_PAYLOAD} bytes"));
    }
    Ok(Inbound::Media { sequence_number, timestamp_ms, payload })
}

/// A `media` payload's audio: standard base64, padded, its unused bits zero — exactly what
/// `base64`'s `STANDARD` engine accepts (a property test and the fuzz target hold the two to
/// the same answer), decoded with the CPU's vector instructions where it has them (a frame's
/// 216 characters in about a quarter of the instructions: 17.2M → 4.7M at 10 live calls).
pub fn decode_payload(text: &str) -> Option<Vec<u8>> {
    base64_simd::STANDARD.decode_to_vec(text.as_bytes()).ok()
}

/// The parts of a `media` message that [`fast_media`] read, borrowed from the text.
#[derive(Debug, PartialEq)]
struct FastMedia<'a> {
    sequence_number: &'a str,
    timestamp: &'a str,
    track: Option<&'a str>,
    payload: &'a str,
}

/// Reads a `media` message in the shape carriers send, in one scan: an object with `event`
/// (`"media"`), `sequenceNumber`, `media` (`timestamp`, `payload`, optionally `track` and
/// `chunk`) and optionally `streamSid`, in any order, every other value a string without
/// escapes or control characters (the payload's text is checked by its decode, [`parse`]), and
/// nothing after the object but white space. `None` for anything else (another event, an
/// unknown, repeated or missing key, an escape, a `null`, a number, text that is not JSON),
/// which [`parse_json`] then reads, and names what is wrong with.
fn fast_media(text: &str) -> Option<FastMedia<'_>> {
    let mut s = Scan { text, at: 0 };
    let (mut event, mut sequence_number, mut stream_sid, mut media) = (None, None, None, None);
    s.object(|s, key| match key {
        "event" => once(&mut event, s.string()?),
        "sequenceNumber" => once(&mut sequence_number, s.string()?),
        "streamSid" => once(&mut stream_sid, s.string()?),
        "media" => once(&mut media, s.media()?),
        _ => None,
    })?;
    s.skip_white();
    if s.at != text.len() || event != Some("media") {
        return None;
    }
    let (timestamp, track, payload) = media?;
    Some(FastMedia { sequence_number: sequence_number?, timestamp, track, payload })
}

/// Sets a key's value the first time; `None` (not this path) when the key comes again.
fn once<T>(slot: &mut Option<T>, value: T) -> Option<()> {
    slot.is_none().then(|| *slot = Some(value))
}

/// Where a string's text ends: the first `"`, `\\` or control character, if any. Eight bytes
/// at a time (a word's bytes tested together with the usual carry tricks), so a frame's
/// 216-character payload costs a few hundred instructions, not a branch per byte.
fn string_end(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    // A byte's high bit is set where that byte of `v` is zero (below the lowest such byte the
    // answer is exact, which is all the lowest set bit needs).
    let zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
    let mut words = bytes.chunks_exact(8);
    let mut at = 0;
    for word in words.by_ref() {
        let w = u64::from_le_bytes(word.try_into().expect("eight bytes"));
        let hit = zero(w ^ (ONES * u64::from(b'"')))
            | zero(w ^ (ONES * u64::from(b'\\')))
            | (w.wrapping_sub(ONES * 0x20) & !w & HIGH);
        if hit != 0 {
            return Some(at + (hit.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    words.remainder().iter().position(|&b| b == b'"' || b == b'\\' || b < 0x20).map(|p| at + p)
}

/// A cursor over a message's text for [`fast_media`].
struct Scan<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Scan<'a> {
    fn skip_white(&mut self) {
        let bytes = self.text.as_bytes();
        while self.at < bytes.len() && matches!(bytes[self.at], b' ' | b'\t' | b'\n' | b'\r') {
            self.at += 1;
        }
    }

    /// The next byte after white space.
    fn next(&mut self) -> Option<u8> {
        self.skip_white();
        let b = *self.text.as_bytes().get(self.at)?;
        self.at += 1;
        Some(b)
    }

    fn expect(&mut self, want: u8) -> Option<()> {
        (self.next()? == want).then_some(())
    }

    /// A string without escapes or control characters, borrowed.
    fn string(&mut self) -> Option<&'a str> {
        self.expect(b'"')?;
        let start = self.at;
        let end = start + string_end(&self.text.as_bytes()[start..])?;
        if self.text.as_bytes()[end] != b'"' {
            return None;
        }
        self.at = end + 1;
        // Both ends are ASCII quotes, so both are character boundaries.
        self.text.get(start..end)
    }

    /// The payload's text: everything up to the next `"`, found with `memchr`'s vector search
    /// rather than checked for escapes and control characters as it goes. Those are left to
    /// the base64 decode, which refuses `\\` and every control character; [`parse`] then gives
    /// the message to the full parser. (The quote found is the string's end whenever the text
    /// holds no `\\`: an escaped quote always follows one.)
    fn payload(&mut self) -> Option<&'a str> {
        self.expect(b'"')?;
        let start = self.at;
        let end = start + memchr::memchr(b'"', &self.text.as_bytes()[start..])?;
        self.at = end + 1;
        // Both ends are ASCII quotes, so both are character boundaries.
        self.text.get(start..end)
    }

    /// An object whose members `member` reads (called with each key after its `:`, it reads the
    /// value); `None` as soon as a member or the object's syntax is not as expected.
    fn object(&mut self, mut member: impl FnMut(&mut Self, &'a str) -> Option<()>) -> Option<()> {
        self.expect(b'{')?;
        loop {
            let key = self.string()?;
            self.expect(b':')?;
            member(self, key)?;
            match self.next()? {
                b',' => {}
                b'}' => return Some(()),
                _ => return None,
            }
        }
    }

    /// The `media` object: (`timestamp`, `track`, `payload`).
    fn media(&mut self) -> Option<(&'a str, Option<&'a str>, &'a str)> {
        let (mut timestamp, mut track, mut payload, mut chunk) = (None, None, None, None);
        self.object(|s, key| match key {
            "timestamp" => once(&mut timestamp, s.string()?),
            "payload" => once(&mut payload, s.payload()?),
            "track" => once(&mut track, s.string()?),
            "chunk" => once(&mut chunk, s.string()?),
            _ => None,
        })?;
        Some((timestamp?, track, payload?))
    }
}

/// A message's `sequenceNumber`, when it is a whole number.
fn number(text: Option<&str>) -> Option<u64> {
    text.and_then(|t| t.parse().ok())
}

/// The messages we send on one stream, with the parts that repeat made once: a `media` message
/// is one allocation of its exact size, the audio base64-encoded straight into it.
#[derive(Debug, Clone)]
pub struct Encoder {
    stream_sid: String,
    /// `"},"streamSid":"<sid>"}`: what follows the payload.
    media_tail: String,
}

/// What precedes the payload of a `media` message (keys in the order `json!` writes them).
const MEDIA_HEAD: &str = r#"{"event":"media","media":{"payload":""#;

impl Encoder {
    pub fn new(stream_sid: &str) -> Self {
        let sid = serde_json::Value::from(stream_sid).to_string();
        Self { stream_sid: stream_sid.to_string(), media_tail: format!(r#""}},"streamSid":{sid}}}"#) }
    }

    /// `media`: one frame of μ-law audio.
    pub fn media(&self, audio: &[u8]) -> String {
        let mut out = String::with_capacity(MEDIA_HEAD.len() + audio.len().div_ceil(3) * 4 + self.media_tail.len());
        out.push_str(MEDIA_HEAD);
        base64_simd::STANDARD.encode_append(audio, &mut out);
        out.push_str(&self.media_tail);
        out
    }

    /// `mark`: see [`mark`].
    pub fn mark(&self, name: &str) -> String {
        mark(&self.stream_sid, name)
    }

    /// `clear`: see [`clear`].
    pub fn clear(&self) -> String {
        clear(&self.stream_sid)
    }
}

/// `media` out: one frame of μ-law audio.
pub fn media(stream_sid: &str, audio: &[u8]) -> String {
    json!({"event": "media", "streamSid": stream_sid, "media": {"payload": STANDARD.encode(audio)}}).to_string()
}

/// `mark` out: the carrier echoes it once everything sent before it has been played.
pub fn mark(stream_sid: &str, name: &str) -> String {
    json!({"event": "mark", "streamSid": stream_sid, "mark": {"name": name}}).to_string()
}

/// `clear` out: the carrier drops the audio it has buffered (barge-in).
pub fn clear(stream_sid: &str) -> String {
    json!({"event": "clear", "streamSid": stream_sid}).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const START: &str = r#"{"event":"start","sequenceNumber":"1","streamSid":"MZ123","start":{"accountSid":"AC1","streamSid":"MZ123","callSid":"CA1","tracks":["inbound"],"customParameters":{"token":"t0k"},"mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1}}}"#;

    #[test]
    fn twilio_messages_parse() {
        assert!(matches!(
            parse(r#"{"event":"connected","protocol":"Call","version":"1.0.0"}"#),
            Ok(Inbound::Connected)
        ));
        match parse(START).unwrap() {
            Inbound::Start { stream_sid, call_sid, custom_parameters } => {
                assert_eq!(stream_sid, "MZ123");
                assert_eq!(call_sid.as_deref(), Some("CA1"));
                assert_eq!(custom_parameters["token"], "t0k");
            }
            other => panic!("{other:?}"),
        }
        let media = r#"{"event":"media","sequenceNumber":"3","media":{"track":"inbound","chunk":"1","timestamp":"20","payload":"//8A"},"streamSid":"MZ123"}"#;
        match parse(media).unwrap() {
            Inbound::Media { sequence_number, timestamp_ms, payload } => {
                assert_eq!((sequence_number, timestamp_ms, payload), (3, 20, vec![0xff, 0xff, 0]));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse(r#"{"event":"mark","mark":{"name":"t1"},"streamSid":"MZ"}"#),
            Ok(Inbound::Mark { sequence_number: None, .. })
        ));
        assert!(matches!(
            parse(r#"{"event":"mark","sequenceNumber":"12","mark":{"name":"t1"},"streamSid":"MZ"}"#),
            Ok(Inbound::Mark { sequence_number: Some(12), .. })
        ));
        // A number that is no number changes nothing on the wire: the mark is still taken.
        assert!(matches!(
            parse(r#"{"event":"mark","sequenceNumber":"x","mark":{"name":"t1"},"streamSid":"MZ"}"#),
            Ok(Inbound::Mark { sequence_number: None, .. })
        ));
        assert!(matches!(
            parse(r#"{"event":"dtmf","dtmf":{"track":"inbound_track","digit":"5"}}"#),
            Ok(Inbound::Dtmf { digit: '5', sequence_number: None })
        ));
        assert!(matches!(parse(r#"{"event":"stop","stop":{"callSid":"CA1"},"streamSid":"MZ"}"#), Ok(Inbound::Stop)));
    }

    #[test]
    fn bad_messages_are_errors_not_panics() {
        for bad in [
            "",
            "not json",
            "{}",
            r#"{"event":"hello"}"#,
            r#"{"event":"media","sequenceNumber":"x","media":{"timestamp":"0","payload":"AA=="}}"#,
            r#"{"event":"media","sequenceNumber":"1","media":{"timestamp":"-1","payload":"AA=="}}"#,
            r#"{"event":"media","sequenceNumber":"1","media":{"timestamp":"0","payload":"***"}}"#,
            r#"{"event":"media","sequenceNumber":"1","media":{"timestamp":"0","payload":""}}"#,
            r#"{"event":"media","sequenceNumber":"1","media":{"track":"outbound","timestamp":"0","payload":"AA=="}}"#,
            r#"{"event":"dtmf","dtmf":{"digit":"55"}}"#,
            r#"{"event":"start","streamSid":"MZ","start":{"mediaFormat":{"encoding":"audio/l16","sampleRate":16000,"channels":1}}}"#,
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        let huge = format!(
            r#"{{"event":"media","sequenceNumber":"1","media":{{"timestamp":"0","payload":"{}"}}}}"#,
            "A".repeat(20_000)
        );
        assert!(parse(&huge).unwrap_err().contains("larger than"));
    }

    #[test]
    fn the_encoder_writes_what_json_writes() {
        for sid in ["MZ1", "MZ0123456789abcdef0123456789abcdef", "quote\"and\\slash", "ünïcode"] {
            let encoder = Encoder::new(sid);
            for audio in [&[][..], &[0xff], &[1, 2], &[0x7f; 160], &(0..=255).collect::<Vec<u8>>()] {
                let made = encoder.media(audio);
                assert_eq!(made, media(sid, audio), "{sid} {audio:?}");
                assert_eq!(made.len(), made.capacity(), "one allocation of the exact size");
            }
            assert_eq!(encoder.mark("turn-1"), mark(sid, "turn-1"));
            assert_eq!(encoder.clear(), clear(sid));
        }
    }

    #[test]
    fn missing_parts_and_unknown_events_are_named() {
        assert_eq!(
            parse(r#"{"event":"media","sequenceNumber":"1"}"#).unwrap_err(),
            "invalid message: media without `media`"
        );
        assert!(parse(r#"{"event":"hello"}"#).unwrap_err().contains("unknown event `hello`"));
        let no_sid =
            r#"{"event":"start","start":{"mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1}}}"#;
        assert_eq!(parse(no_sid).unwrap_err(), "invalid message: start without `streamSid`");
        // Escapes in the borrowed parts are still read.
        let escaped = r#"{"event":"media","sequenceNumber":"\u0033","media":{"timestamp":"20","payload":"\/\/8A"}}"#;
        assert!(matches!(parse(escaped), Ok(Inbound::Media { sequence_number: 3, .. })), "{escaped}");
    }

    proptest::proptest! {
        /// Whatever the carrier sends, parsing answers (never panics).
        #[test]
        fn any_text_is_an_answer_not_a_panic(text in ".{0,400}") {
            let _ = parse(&text);
        }

        /// Any audio a carrier sends in a `media` message comes out as sent, with its numbers.
        #[test]
        fn media_messages_round_trip(
            audio in proptest::collection::vec(proptest::num::u8::ANY, 1..=MAX_MEDIA_PAYLOAD),
            seq in 0u64..u64::MAX,
            ts in 0u64..u64::MAX,
        ) {
            let text = json!({"event": "media", "sequenceNumber": seq.to_string(), "streamSid": "MZ1",
                "media": {"track": "inbound", "chunk": "1", "timestamp": ts.to_string(), "payload": STANDARD.encode(&audio)}})
                .to_string();
            match parse(&text) {
                Ok(Inbound::Media { sequence_number, timestamp_ms, payload }) => {
                    proptest::prop_assert_eq!((sequence_number, timestamp_ms), (seq, ts));
                    proptest::prop_assert_eq!(payload, audio);
                }
                other => proptest::prop_assert!(false, "{other:?}"),
            }
        }
    }

    /// The carriers' `media` messages take the one-scan path: Twilio's (its documented
    /// example's shape), the load generator's, and the same with white space between tokens.
    #[test]
    fn carrier_media_messages_take_the_scan() {
        let twilio = r#"{"event":"media","sequenceNumber":"3","media":{"track":"inbound","chunk":"1","timestamp":"5","payload":"//8A"},"streamSid":"MZ18ad3ab5a668481ce02b83e7395059f0"}"#;
        let loadgen = r#"{"event":"media","sequenceNumber":"7","streamSid":"MZ","media":{"track":"inbound","chunk":"7","timestamp":"140","payload":"//8A"}}"#;
        let spaced = "{ \"event\" : \"media\",\n\t\"sequenceNumber\":\"3\", \"media\": {\"payload\": \"//8A\", \"timestamp\":\"5\"} }\r\n";
        for (text, seq, ts, track) in
            [(twilio, "3", "5", Some("inbound")), (loadgen, "7", "140", Some("inbound")), (spaced, "3", "5", None)]
        {
            assert_eq!(
                fast_media(text),
                Some(FastMedia { sequence_number: seq, timestamp: ts, track, payload: "//8A" }),
                "{text}"
            );
            assert!(matches!(parse(text), Ok(Inbound::Media { ref payload, .. }) if payload == &[0xff, 0xff, 0]));
        }
        // The payload's text is taken up to the next quote and checked by its decode: an
        // escape there (`\/` is a `/` to JSON; an escaped quote ends the scan's payload, not
        // JSON's) or a control character fails the decode, and the full parser answers.
        for text in [
            r#"{"event":"media","sequenceNumber":"1","media":{"timestamp":"0","payload":"\/\/8A"}}"#,
            r#"{"event":"media","sequenceNumber":"1","media":{"timestamp":"0","payload":"//8\u0041"}}"#,
            r#"{"event":"media","sequenceNumber":"1","media":{"timestamp":"0","payload":"AA\"}}"#,
            "{\"event\":\"media\",\"sequenceNumber\":\"1\",\"media\":{\"timestamp\":\"0\",\"payload\":\"//8\u{1}A\"}}",
        ] {
            assert!(fast_media(text).is_some_and(|m| m.payload.contains(['\\', '\u{1}'])), "{text}");
            assert_eq!(format!("{:?}", parse(text)), format!("{:?}", parse_json(text)), "{text}");
        }
        assert!(matches!(
            parse(r#"{"event":"media","sequenceNumber":"1","media":{"timestamp":"0","payload":"\/\/8A"}}"#),
            Ok(Inbound::Media { ref payload, .. }) if payload == &[0xff, 0xff, 0]
        ));
        // What it does not take goes to the full parser, which names what is wrong.
        for (text, error) in [
            (r#"{"event":"media","sequenceNumber":"1","media":{"payload":"AA=="}}"#, "missing field `timestamp`"),
            (
                r#"{"event":"media","event":"media","sequenceNumber":"1","media":{"timestamp":"0","payload":"AA=="}}"#,
                "duplicate field `event`",
            ),
            (
                r#"{"event":"media","sequenceNumber":1,"media":{"timestamp":"0","payload":"AA=="}}"#,
                "invalid type: integer",
            ),
            (
                r#"{"event":"media","sequenceNumber":"1","media":{"timestamp":"0","payload":"AA=="}} x"#,
                "trailing characters",
            ),
        ] {
            assert_eq!(fast_media(text), None, "{text}");
            assert!(parse(text).unwrap_err().contains(error), "{text}: {:?}", parse(text));
        }
    }

    proptest::proptest! {
        /// The block scan finds what a byte-by-byte search finds, wherever it is.
        #[test]
        fn string_end_is_the_first_stop(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..100), fill in 32u8..127) {
            let plain: Vec<u8> = bytes.iter().map(|&b| if b % 4 == 0 { b } else { fill.max(b'#') }).collect();
            for text in [&bytes[..], &plain[..]] {
                let want = text.iter().position(|&b| b == b'"' || b == b'\\' || b < 0x20);
                proptest::prop_assert_eq!(string_end(text), want);
            }
        }

        /// The payload decoder takes and refuses what `base64`'s `STANDARD` engine does, with
        /// the same bytes: valid payloads of every length, each with one character changed
        /// (into padding, the URL-safe alphabet, white space, a non-ASCII letter, or another
        /// letter, which can leave bits set that must be zero), cut short or lengthened.
        #[test]
        fn the_payload_decoder_answers_as_base64_does(
            audio in proptest::collection::vec(proptest::num::u8::ANY, 0..300),
            at in proptest::num::usize::ANY,
            with in proptest::sample::select(vec!['=', '-', '_', ' ', '\n', 'é', 'A', 'B', 'Q', 'g', '/', '+', '0']),
            edit in 0u8..5,
        ) {
            let good = STANDARD.encode(&audio);
            let mut text: Vec<char> = good.chars().collect();
            let i = if text.is_empty() { 0 } else { at % text.len() };
            match edit {
                0 => {}
                1 if !text.is_empty() => text[i] = with,
                2 => text.truncate(i),
                3 => text.insert(i, with),
                _ => text.push(with),
            }
            let text: String = text.into_iter().collect();
            proptest::prop_assert_eq!(decode_payload(&text), STANDARD.decode(text.as_bytes()).ok(), "{:?}", text);
        }

        /// Any text at all, too (mostly not base64).
        #[test]
        fn the_payload_decoder_answers_as_base64_does_on_any_text(text in "[A-Za-z0-9+/=_\\- é]{0,40}|.{0,40}") {
            proptest::prop_assert_eq!(decode_payload(&text), STANDARD.decode(text.as_bytes()).ok(), "{:?}", text);
        }

        /// The encoder writes what `base64` writes, at every length.
        #[test]
        fn the_encoder_writes_base64_as_base64_does(audio in proptest::collection::vec(proptest::num::u8::ANY, 0..400)) {
            let made = Encoder::new("MZ1").media(&audio);
            proptest::prop_assert_eq!(made, media("MZ1", &audio));
        }
    }

    /// Numbers to build a message from, taken in turn.
    struct Pick<'a>(std::iter::Cycle<std::iter::Copied<std::slice::Iter<'a, u32>>>);

    impl Pick<'_> {
        fn n(&mut self, n: usize) -> usize {
            self.0.next().unwrap_or(0) as usize % n
        }

        fn of<'b>(&mut self, items: &[&'b str]) -> &'b str {
            items[self.n(items.len())]
        }

        fn white(&mut self) -> &'static str {
            self.of(&["", "", "", " ", "\n", "\t ", "\r\n"])
        }

        /// A JSON value for `plain`: mostly the plain string, sometimes `null`, a number, an
        /// escape, a control character.
        fn value(&mut self, plain: &str) -> String {
            match self.n(64) {
                0 => "null".into(),
                1 => "12".into(),
                2 => format!("\"\\u003{}{plain}\"", self.n(10)),
                3 => format!("\"{plain}\\/\""),
                4 => "\"\u{1}\"".into(),
                5 => format!("\"{plain}\\\"\""),
                6 => format!("\"\\/{plain}\""),
                _ => format!("\"{plain}\""),
            }
        }

        fn object(&mut self, fields: &[(&str, String)]) -> String {
            let mut out = format!("{}{{", self.white());
            for (i, (k, v)) in fields.iter().enumerate() {
                if i > 0 {
                    out.push_str(self.white());
                    out.push(',');
                }
                let (a, b, c) = (self.white(), self.white(), self.white());
                out.push_str(&format!("{a}\"{k}\"{b}:{c}{v}"));
            }
            out.push_str(self.white());
            out.push('}');
            out
        }
    }

    /// A `media` message (or something near one) built from `choices`: keys in any order,
    /// sometimes left out, repeated, unknown, `null`, a number, escaped, with white space
    /// between tokens, trailing text, or cut short.
    fn near_media(choices: &[u32], audio: &[u8]) -> String {
        let mut p = Pick(choices.iter().copied().cycle());
        let payload = match p.n(16) {
            0 => "***".to_string(),
            1 => String::new(),
            _ => STANDARD.encode(audio),
        };
        let timestamp = p.of(&["0", "20", "140", "-1", "x", "18446744073709551616"]);
        let track = p.of(&["inbound", "inbound_track", "outbound"]);
        let mut media = vec![
            ("timestamp", p.value(timestamp)),
            ("payload", p.value(&payload)),
            ("track", p.value(track)),
            ("chunk", p.value("1")),
            ("extra", "{}".to_string()),
        ];
        // A known key is left out now and then, the unknown one mostly.
        media.retain(|(k, _)| if *k == "extra" { p.n(6) == 0 } else { p.n(12) != 0 });
        let inner = if p.n(10) == 0 { "null".to_string() } else { p.object(&media) };
        let event = p.of(&["media", "media", "media", "media", "media", "mark", "stop"]);
        let seq = p.of(&["3", "0", "7", "+4", "x", "99999999999999999999"]);
        let mut top = vec![
            ("event", p.value(event)),
            ("sequenceNumber", p.value(seq)),
            ("streamSid", p.value("MZ1")),
            ("media", inner),
            ("protocol", "\"Call\"".into()),
        ];
        top.retain(|(k, _)| if *k == "protocol" { p.n(6) == 0 } else { p.n(12) != 0 });
        if p.n(12) == 0 && !top.is_empty() {
            let again = top[p.n(top.len())].clone();
            top.push(again);
        }
        for i in 0..top.len() {
            let j = p.n(top.len());
            top.swap(i, j);
        }
        let mut text = p.object(&top);
        text.push_str(p.of(&["", "", "", "", "", "", " \n", "x", "}"]));
        if p.n(10) == 0 {
            let cut = p.n(text.len() + 1);
            let cut = (0..=cut).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
            text.truncate(cut);
        }
        text
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        /// The one-scan path and `serde_json` give the same answer, `Ok` or the same error, for
        /// every message near a `media` message (and the scan takes the plain ones).
        #[test]
        fn the_scan_and_serde_json_agree(
            choices in proptest::collection::vec(proptest::num::u32::ANY, 128),
            audio in proptest::collection::vec(proptest::num::u8::ANY, 0..300),
        ) {
            let text = near_media(&choices, &audio);
            proptest::prop_assert_eq!(format!("{:?}", parse(&text)), format!("{:?}", parse_json(&text)), "{}", text);
        }

        /// The same for any text at all.
        #[test]
        fn the_scan_and_serde_json_agree_on_any_text(text in ".{0,300}") {
            proptest::prop_assert_eq!(format!("{:?}", parse(&text)), format!("{:?}", parse_json(&text)));
        }
    }

    /// The generator above reaches both paths: plain messages the scan takes, and ones it
    /// leaves to `serde_json`, of which some are still media and some errors.
    #[test]
    fn the_generator_reaches_both_paths() {
        let (mut scanned, mut media_by_json, mut errors) = (0, 0, 0);
        for seed in 0..3000u32 {
            // splitmix64 of (seed, i): numbers without the patterns a plain multiple leaves.
            let choices: Vec<u32> = (0..128u64)
                .map(|i| {
                    let mut x = u64::from(seed) * 128 + i + 0x9e37_79b9_7f4a_7c15;
                    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                    (x ^ (x >> 31)) as u32
                })
                .collect();
            let text = near_media(&choices, &[1, 2, 3]);
            match (fast_media(&text), parse(&text)) {
                (Some(_), _) => scanned += 1,
                (None, Ok(Inbound::Media { .. })) => media_by_json += 1,
                (None, Err(_)) => errors += 1,
                (None, Ok(_)) => {}
            }
        }
        // Of 3,000: at least 5 % scanned, 1 % media read by `serde_json`, 10 % errors.
        assert!(scanned > 150 && media_by_json > 30 && errors > 300, "{scanned} {media_by_json} {errors}");
    }

    #[test]
    fn outbound_messages() {
        let m: serde_json::Value = serde_json::from_str(&media("MZ1", &[0xff; 160])).unwrap();
        assert_eq!(m["event"], "media");
        assert_eq!(STANDARD.decode(m["media"]["payload"].as_str().unwrap()).unwrap().len(), 160);
        let c: serde_json::Value = serde_json::from_str(&clear("MZ1")).unwrap();
        assert_eq!(c, json!({"event": "clear", "streamSid": "MZ1"}));
        let k: serde_json::Value = serde_json::from_str(&mark("MZ1", "turn-1")).unwrap();
        assert_eq!(k["mark"]["name"], "turn-1");
    }
}
