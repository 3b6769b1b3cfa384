//! A loopback OTLP/HTTP trace receiver (`POST /v1/traces`, protobuf) that counts the spans it
//! gets and when, so a drill can tell how many spans a service flushed after its SIGTERM.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Instant,
};

use axum::{Router, body::Bytes, extract::State, http::StatusCode, routing::post};

/// Received batches: when, and how many spans each held.
type Batches = Arc<Mutex<Vec<(Instant, usize)>>>;

pub struct Receiver {
    pub addr: SocketAddr,
    batches: Batches,
    _task: tokio::task::JoinHandle<()>,
}

async fn traces(State(batches): State<Batches>, body: Bytes) -> (StatusCode, [(&'static str, &'static str); 1]) {
    match count_spans(&body) {
        Some(n) => {
            batches.lock().expect("batches").push((Instant::now(), n));
            // An empty ExportTraceServiceResponse.
            (StatusCode::OK, [("content-type", "application/x-protobuf")])
        }
        None => (StatusCode::BAD_REQUEST, [("content-type", "text/plain")]),
    }
}

impl Receiver {
    pub async fn start() -> std::io::Result<Self> {
        let batches: Batches = Arc::default();
        let app = Router::new().route("/v1/traces", post(traces)).with_state(batches.clone());
        let (addr, task) = super::serve_loopback(app).await?;
        Ok(Self { addr, batches, _task: task })
    }

    /// For `OTEL_EXPORTER_OTLP_ENDPOINT` (with `OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf`).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn total(&self) -> usize {
        self.batches.lock().expect("batches").iter().map(|(_, n)| n).sum()
    }

    /// Spans received at or after `t`.
    pub fn since(&self, t: Instant) -> usize {
        self.batches.lock().expect("batches").iter().filter(|(at, _)| *at >= t).map(|(_, n)| n).sum()
    }
}

fn varint(buf: &[u8], i: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *buf.get(*i)?;
        *i += 1;
        value |= u64::from(byte & 0x7F) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// The length-delimited fields numbered `field` of one protobuf message (None if malformed).
fn len_fields(buf: &[u8], field: u64) -> Option<Vec<&[u8]>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < buf.len() {
        let key = varint(buf, &mut i)?;
        match key & 7 {
            0 => {
                varint(buf, &mut i)?;
            }
            1 => i = i.checked_add(8).filter(|e| *e <= buf.len())?,
            5 => i = i.checked_add(4).filter(|e| *e <= buf.len())?,
            2 => {
                let len = usize::try_from(varint(buf, &mut i)?).ok()?;
                let end = i.checked_add(len).filter(|e| *e <= buf.len())?;
                if key >> 3 == field {
                    out.push(&buf[i..end]);
                }
                i = end;
            }
            _ => return None,
        }
    }
    Some(out)
}

/// Spans in an `ExportTraceServiceRequest`: resource_spans (1) → scope_spans (2) → spans (2).
pub fn count_spans(request: &[u8]) -> Option<usize> {
    let mut n = 0;
    for resource_spans in len_fields(request, 1)? {
        for scope_spans in len_fields(resource_spans, 2)? {
            n += len_fields(scope_spans, 2)?.len();
        }
    }
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(no: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![(no << 3) | 2, payload.len() as u8];
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn counts_spans_across_resources_and_scopes() {
        // A span with a name (field 5) and a fixed64 start time (field 7).
        let mut span = field(5, b"GET /v1/calls");
        span.extend_from_slice(&[(7 << 3) | 1, 1, 2, 3, 4, 5, 6, 7, 8]);
        let scope = field(1, &field(1, b"call-api")); // InstrumentationScope
        let mut scope_spans = scope.clone();
        scope_spans.extend(field(2, &span));
        scope_spans.extend(field(2, &span));
        let mut rs1 = field(1, &field(1, b"resource")); // Resource
        rs1.extend(field(2, &scope_spans));
        rs1.extend(field(2, &field(2, &span)));
        let mut request = field(1, &rs1);
        request.extend(field(1, &field(2, &field(2, &span))));
        assert_eq!(count_spans(&request), Some(4));
        assert_eq!(count_spans(&[]), Some(0));
        // Truncated: a length beyond the buffer.
        assert_eq!(count_spans(&[(1 << 3) | 2, 10, 1, 2]), None);
        // A varint field at the top level is skipped.
        let mut with_varint = vec![(3 << 3), 0x96, 0x01];
        with_varint.extend(field(1, &field(2, &field(2, &span))));
        assert_eq!(count_spans(&with_varint), Some(1));
    }
}
