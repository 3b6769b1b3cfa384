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
pub fn parse(text: &str) -> Result<Inbound, String> {
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
            let media = raw.media.ok_or_else(|| missing("media", "media"))?;
            let sequence_number =
                sequence_number.parse().map_err(|_| "media: sequenceNumber must be a whole number".to_string())?;
            let timestamp_ms =
                media.timestamp.parse().map_err(|_| "media: timestamp must be a whole number of ms".to_string())?;
            if let Some(track) = &media.track
                && track != "inbound"
                && track != "inbound_track"
            {
                return Err(format!("media: only the inbound track is accepted (got {track})"));
            }
            if media.payload.len() > MAX_MEDIA_PAYLOAD * 4 / 3 + 4 {
                return Err(format!("media: payload larger than {MAX_MEDIA_PAYLOAD} bytes"));
            }
            let payload = STANDARD.decode(media.payload.as_bytes()).map_err(|_| "media: payload is not base64")?;
            if payload.is_empty() || payload.len() > MAX_MEDIA_PAYLOAD {
                return Err(format!("media: payload must be 1 to {MAX_MEDIA_PAYLOAD} bytes"));
            }
            let _ = &media.chunk;
            Inbound::Media { sequence_number, timestamp_ms, payload }
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
        STANDARD.encode_string(audio, &mut out);
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
