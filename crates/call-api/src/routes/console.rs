//! The call console at `/console`: static files embedded in the binary (no CDN, no build step),
//! served without an API key with a strict Content-Security-Policy. The page asks for a key once,
//! keeps it in `sessionStorage` and calls the JSON API with it. `GET /console/config.json` tells
//! the page what it cannot learn from the API (the trace link template).

use std::sync::Arc;

use axum::{
    Router,
    extract::{Path, State},
    http::{HeaderName, HeaderValue, header},
    response::{IntoResponse, Response},
    routing::get,
};
use telemetry::Reader;

use crate::error::ApiError;

/// The console's policy: its own scripts, styles and API only; no inline script or style, no
/// framing, no forms posting elsewhere.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; base-uri 'none'; frame-ancestors 'none'; form-action 'none'";

/// `{trace_id}` in `TRACE_URL_TEMPLATE` is replaced by a trace id.
pub const TRACE_ID_PLACEHOLDER: &str = "{trace_id}";

/// What the console needs from the configuration.
#[derive(Debug, Clone, Default)]
pub struct ConsoleConfig {
    /// `TRACE_URL_TEMPLATE`: an http(s) URL containing `{trace_id}` (e.g.
    /// `http://jaeger:16686/trace/{trace_id}`) the console links traces to; unset shows no link.
    pub trace_url_template: Option<String>,
}

impl ConsoleConfig {
    pub fn read(r: &mut Reader<'_>) -> Self {
        let trace_url_template = match r.string("TRACE_URL_TEMPLATE") {
            None => None,
            Some(raw) if raw.is_empty() => None,
            Some(raw) => match check_template(&raw) {
                Ok(()) => Some(raw),
                Err(message) => {
                    r.error("TRACE_URL_TEMPLATE", message);
                    None
                }
            },
        };
        Self { trace_url_template }
    }
}

fn check_template(raw: &str) -> Result<(), String> {
    if !raw.contains(TRACE_ID_PLACEHOLDER) {
        return Err(format!("{raw:?} must contain {TRACE_ID_PLACEHOLDER}"));
    }
    // Checked as a URL with the placeholder filled in (braces are not valid in every part).
    telemetry::config::check_url(&raw.replace(TRACE_ID_PLACEHOLDER, "0"), &["http", "https"])
        .map_err(|message| format!("{raw:?} {message}"))
}

struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const INDEX: Asset = Asset {
    name: "index.html",
    content_type: "text/html; charset=utf-8",
    body: include_str!("../../console/index.html"),
};

const ASSETS: &[Asset] = &[
    INDEX,
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../../console/app.js"),
    },
    Asset {
        name: "views.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../../console/views.js"),
    },
    Asset { name: "style.css", content_type: "text/css; charset=utf-8", body: include_str!("../../console/style.css") },
    Asset { name: "favicon.svg", content_type: "image/svg+xml", body: include_str!("../../console/favicon.svg") },
];

/// `/console`, `/console/`, `/console/config.json` and `/console/{*path}` (one route label for
/// every asset, so the HTTP metrics stay bounded).
pub fn router(config: ConsoleConfig) -> Router {
    let config = Arc::new(config_json(&config));
    Router::new()
        .route("/console", get(index))
        .route("/console/", get(index))
        .route("/console/config.json", get(serve_config).with_state(config))
        .route("/console/{*path}", get(asset))
}

fn config_json(config: &ConsoleConfig) -> String {
    serde_json::json!({ "trace_url_template": config.trace_url_template }).to_string()
}

fn secured(content_type: &'static str, body: impl IntoResponse) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    secure_headers(headers);
    response
}

/// The security headers of every console answer, errors included.
fn secure_headers(headers: &mut axum::http::HeaderMap) {
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // Embedded in the binary: a new release is a new page, so revalidate rather than cache.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(HeaderName::from_static("cross-origin-opener-policy"), HeaderValue::from_static("same-origin"));
}

async fn index() -> Response {
    secured(INDEX.content_type, INDEX.body)
}

async fn serve_config(State(config): State<Arc<String>>) -> Response {
    secured("application/json", config.as_str().to_string())
}

async fn asset(Path(path): Path<String>) -> Response {
    match ASSETS.iter().find(|a| a.name == path) {
        Some(a) => secured(a.content_type, a.body),
        None => {
            let mut response = ApiError::NotFound("console file").into_response();
            secure_headers(response.headers_mut());
            response
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use telemetry::Env;

    fn read(value: &str) -> Result<ConsoleConfig, Vec<String>> {
        let env = Env::from_pairs([("TRACE_URL_TEMPLATE", value)]);
        let mut r = Reader::new(&env);
        let c = ConsoleConfig::read(&mut r);
        r.errors.into_result(c).map_err(|e| e.0.into_iter().map(|e| e.message).collect())
    }

    #[test]
    fn trace_url_template() {
        let ok = read("http://jaeger:16686/trace/{trace_id}").unwrap();
        assert_eq!(ok.trace_url_template.as_deref(), Some("http://jaeger:16686/trace/{trace_id}"));
        assert!(read("https://sentry.example/performance/trace/{trace_id}/?x=1").is_ok());
        assert_eq!(read("").unwrap().trace_url_template, None);
        for bad in ["http://jaeger:16686/trace/", "javascript:alert({trace_id})", "ftp://x/{trace_id}", "{trace_id}"] {
            let errors = read(bad).expect_err(bad);
            assert_eq!(errors.len(), 1, "{bad}: {errors:?}");
        }
    }

    #[test]
    fn every_asset_is_served_with_its_type() {
        for a in ASSETS {
            assert!(!a.body.is_empty(), "{}", a.name);
        }
        assert!(INDEX.body.contains("/console/app.js"));
        // No inline script or style: the policy would block it.
        assert!(!INDEX.body.contains("<style"));
        assert!(!INDEX.body.contains("style="));
        assert!(!INDEX.body.contains("<script>"));
    }
}
