//! Incremental Server-Sent Events parser (the WHATWG event-stream rules), fed with whatever
//! byte chunks the network delivers: events, lines, `\r\n` pairs and UTF-8 sequences may all
//! be split across chunks.

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SseEvent {
    /// `event:` field, when present.
    pub event: Option<String>,
    /// `data:` lines joined by `\n`.
    pub data: String,
}

/// Why a stream cannot be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SseError {
    LineTooLong,
    InvalidUtf8,
}

impl std::fmt::Display for SseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::LineTooLong => f.write_str("event-stream line exceeds the size limit"),
            Self::InvalidUtf8 => f.write_str("event-stream line is not utf-8"),
        }
    }
}

const MAX_LINE: usize = 1 << 20;

#[derive(Debug, Default)]
pub(crate) struct SseParser {
    line: Vec<u8>,
    data: String,
    has_data: bool,
    event: Option<String>,
    /// The previous chunk ended in `\r`: a leading `\n` of the next one belongs to it.
    skip_lf: bool,
    started: bool,
}

impl SseParser {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Feed bytes; complete events are appended to `out`.
    pub(crate) fn feed(&mut self, mut chunk: &[u8], out: &mut Vec<SseEvent>) -> Result<(), SseError> {
        if self.skip_lf {
            if let Some(rest) = chunk.strip_prefix(b"\n") {
                chunk = rest;
                self.skip_lf = false;
            } else if !chunk.is_empty() {
                self.skip_lf = false;
            }
        }
        while !chunk.is_empty() {
            match chunk.iter().position(|b| *b == b'\n' || *b == b'\r') {
                None => {
                    self.push_line_bytes(chunk)?;
                    break;
                }
                Some(i) => {
                    self.push_line_bytes(&chunk[..i])?;
                    let was_cr = chunk[i] == b'\r';
                    chunk = &chunk[i + 1..];
                    if was_cr {
                        match chunk.first() {
                            Some(b'\n') => chunk = &chunk[1..],
                            None => self.skip_lf = true,
                            Some(_) => {}
                        }
                    }
                    self.end_line(out)?;
                }
            }
        }
        Ok(())
    }

    fn push_line_bytes(&mut self, bytes: &[u8]) -> Result<(), SseError> {
        if self.line.len() + bytes.len() > MAX_LINE {
            return Err(SseError::LineTooLong);
        }
        self.line.extend_from_slice(bytes);
        Ok(())
    }

    fn end_line(&mut self, out: &mut Vec<SseEvent>) -> Result<(), SseError> {
        let raw = std::mem::take(&mut self.line);
        let mut line = std::str::from_utf8(&raw).map_err(|_| SseError::InvalidUtf8)?;
        if !self.started {
            self.started = true;
            line = line.strip_prefix('\u{feff}').unwrap_or(line);
        }
        if line.is_empty() {
            if self.has_data {
                out.push(SseEvent { event: self.event.take(), data: std::mem::take(&mut self.data) });
            }
            self.has_data = false;
            self.data.clear();
            self.event = None;
            return Ok(());
        }
        if line.starts_with(':') {
            return Ok(());
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            "event" => self.event = Some(value.to_owned()),
            // `id` and `retry` only matter for reconnecting browsers.
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn parse_all(chunks: &[&[u8]]) -> Vec<SseEvent> {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        for c in chunks {
            p.feed(c, &mut out).unwrap();
        }
        out
    }

    fn data(events: &[SseEvent]) -> Vec<&str> {
        events.iter().map(|e| e.data.as_str()).collect()
    }

    #[test]
    fn parses_fields_comments_and_multiline_data() {
        let text = b": keep-alive\n\nevent: message\ndata: {\"a\":1}\n\ndata:x\ndata: y\nid: 7\n\ndata\n\n";
        let events = parse_all(&[text]);
        assert_eq!(data(&events), vec!["{\"a\":1}", "x\ny", ""]);
        assert_eq!(events[0].event.as_deref(), Some("message"));
        assert_eq!(events[1].event, None);
    }

    #[test]
    fn handles_crlf_split_between_chunks_and_lone_cr() {
        let events = parse_all(&[b"data: one\r", b"\n\r", b"\ndata: two\r\rdata: three\n\n"]);
        assert_eq!(data(&events), vec!["one", "two", "three"]);
    }

    #[test]
    fn incomplete_event_is_not_dispatched() {
        let events = parse_all(&[b"data: done\n\ndata: partial"]);
        assert_eq!(data(&events), vec!["done"]);
    }

    #[test]
    fn rejects_invalid_utf8() {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        assert_eq!(p.feed(b"data: \xff\xfe\n\n", &mut out), Err(SseError::InvalidUtf8));
    }

    proptest! {
        #[test]
        fn any_chunking_gives_the_same_events(cuts in proptest::collection::vec(0usize..400, 0..12), crlf in any::<bool>()) {
            let nl = if crlf { "\r\n" } else { "\n" };
            let body = format!(
                "data: {{\"delta\":\"héllo wörld ✓\"}}{nl}{nl}: ping{nl}event: x{nl}data: a{nl}data: b{nl}{nl}data: [DONE]{nl}{nl}"
            );
            let bytes = body.as_bytes();
            let mut points: Vec<usize> = cuts.into_iter().map(|c| c % (bytes.len() + 1)).collect();
            points.sort_unstable();
            let mut chunks = Vec::new();
            let mut last = 0;
            for p in points {
                chunks.push(&bytes[last..p]);
                last = p;
            }
            chunks.push(&bytes[last..]);
            let events = parse_all(&chunks);
            prop_assert_eq!(data(&events), vec!["{\"delta\":\"héllo wörld ✓\"}", "a\nb", "[DONE]"]);
        }
    }
}
