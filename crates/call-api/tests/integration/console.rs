//! The call console (`/console`): its security headers and route labels over plain HTTP, and the
//! page itself in a real headless Chromium driven over the DevTools protocol: a wrong key is
//! told, the list shows calls a carrier client made, a call's waterfall has one bar group per
//! agent turn, a live call is followed through its event stream and gains a turn on screen, and
//! the browser logs no error. (The whole stack's version, with a call the load generator made on
//! PostgreSQL, is in `voice-kraliki`'s tests.)

use std::{path::PathBuf, time::Duration};

use serde_json::{Value, json};
use telemetry::testing::browser::{Browser, chromium};

use crate::{
    common::{
        Backend, KEY, TestDb,
        carrier::{Carrier, silence},
        spawn_app_with, stack,
    },
    live::{caller_audio, live_stack_env, providers},
};

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; \
                   base-uri 'none'; frame-ancestors 'none'; form-action 'none'";
const TRACE_TEMPLATE: &str = "http://jaeger.example.test:16686/trace/{trace_id}";

#[tokio::test(flavor = "multi_thread")]
async fn console_files_carry_the_security_headers_and_bounded_route_labels() {
    let db = TestDb::new(Backend::Sqlite).await.unwrap();
    let url = db.url().to_string();
    let app = spawn_app_with(db, &url, &[("TRACE_URL_TEMPLATE", TRACE_TEMPLATE)]).await;
    let cases = [
        ("/console", 200, "text/html; charset=utf-8"),
        ("/console/", 200, "text/html; charset=utf-8"),
        ("/console/index.html", 200, "text/html; charset=utf-8"),
        ("/console/app.js", 200, "text/javascript; charset=utf-8"),
        ("/console/views.js", 200, "text/javascript; charset=utf-8"),
        ("/console/style.css", 200, "text/css; charset=utf-8"),
        ("/console/favicon.svg", 200, "image/svg+xml"),
        ("/console/config.json", 200, "application/json"),
        ("/console/nothing-here.js", 404, "application/json"),
        ("/console/%2e%2e%2fopenapi.json", 404, "application/json"),
    ];
    for (path, status, content_type) in cases {
        // No key: the files are public, the data behind them is not.
        let r = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(r.status().as_u16(), status, "{path}");
        let h = r.headers().clone();
        let header = |name: &str| h.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
        if status == 200 {
            assert_eq!(header("content-type"), content_type, "{path}");
        }
        assert_eq!(header("content-security-policy"), CSP, "{path}");
        assert_eq!(header("x-content-type-options"), "nosniff", "{path}");
        assert_eq!(header("referrer-policy"), "no-referrer", "{path}");
        assert_eq!(header("x-frame-options"), "DENY", "{path}");
        assert!(h.get("set-cookie").is_none(), "{path}");
        let body = r.text().await.unwrap();
        if path == "/console" {
            assert!(body.contains(r#"<script type="module" src="/console/app.js">"#), "{body}");
            assert!(!body.contains("<script>") && !body.contains("style="), "no inline script or style");
            assert!(!body.contains("http://") && !body.contains("https://"), "nothing from another origin");
        }
        if path == "/console/config.json" {
            let config: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(config, json!({"trace_url_template": TRACE_TEMPLATE}));
        }
    }
    // The API behind the page still wants the key.
    let (status, _) = crate::common::decode(app.client.get(app.url("/v1/calls")).send().await.unwrap()).await;
    assert_eq!(status, 401);

    // One route label per console route, whatever file was asked for.
    let m = app.metrics().await;
    let asset = m.sum("http_requests_total", &[("endpoint", "/console/{*path}")]);
    assert_eq!(asset, 7.0, "index.html, app.js, views.js, style.css, favicon.svg, nothing-here.js, ../openapi.json");
    assert_eq!(m.sum("http_requests_total", &[("endpoint", "/console")]), 1.0);
    assert_eq!(m.sum("http_requests_total", &[("endpoint", "/console/config.json")]), 1.0);
    let text = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    for file in ["app.js", "style.css", "nothing-here"] {
        assert!(!text.contains(file), "{file} in a label");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_trace_url_template_stops_the_start() {
    for bad in ["http://jaeger:16686/trace/", "javascript:alert({trace_id})"] {
        let env = telemetry::Env::from_pairs([("TRACE_URL_TEMPLATE", bad)]);
        let errors = call_api::Config::from_env(&env).expect_err(bad);
        assert_eq!(errors.0.iter().map(|e| e.variable.as_str()).collect::<Vec<_>>(), ["TRACE_URL_TEMPLATE"]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_console_in_chromium_shows_calls_their_turns_and_a_live_call() {
    let Some(bin) = chromium() else { return };
    let fake = telemetry::testing::FakeHttp::start(providers(0.5)).await;
    let db = TestDb::new(Backend::Sqlite).await.unwrap();
    // Traces exported (to a receiver that keeps them), so the analysis has a trace id to link.
    let otlp = telemetry::testing::OtlpReceiver::start().await;
    let endpoint = otlp.endpoint();
    let env = [
        ("TRACE_URL_TEMPLATE", TRACE_TEMPLATE),
        ("APM_ENABLED", "true"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        // Spans are recorded from `info` on.
        ("LOG_LEVEL", "info"),
    ];
    let s = live_stack_env(db, fake, stack::start_audio(None).await, &env).await;
    let app = &s.app;
    let caller = caller_audio();
    let utterance = &caller[(4.0 * 8000.0) as usize..(9.0 * 8000.0) as usize];

    // A finished call from a carrier client: two caller turns, each answered.
    let mut done = Carrier::connect(app).await;
    done.speak(utterance).await;
    done.speak(&silence(1.0)).await;
    done.wait_for_mark("turn-2-2", Duration::from_secs(20)).await;
    done.speak(utterance).await;
    done.speak(&silence(1.0)).await;
    done.wait_for_mark("turn-4-2", Duration::from_secs(20)).await;
    done.hang_up().await;
    let turns = app.get(&format!("/v1/calls/{}/turns", done.id), KEY).await.1;
    let agent_turns = turns["turns"].as_array().unwrap().iter().filter(|t| t["role"] == "agent").count() as u64;
    assert_eq!(agent_turns, 2, "{turns}");
    // Its two-channel recording, analysed.
    let r = app
        .client
        .post(app.url(&format!("/v1/calls/{}/recording?channel_labels=agent,caller", done.id)))
        .bearer_auth(KEY)
        .header("content-type", "audio/wav")
        .body(stack::call_stereo())
        .send()
        .await
        .unwrap();
    let (status, analysis) = crate::common::decode(r).await;
    assert_eq!(status, 200, "{analysis}");
    let segments: usize = analysis["audio"]["channels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["speech_segments"].as_array().unwrap().len())
        .sum();
    assert!(segments >= 2, "{analysis}");

    // A live call, one turn answered so far.
    let mut live = Carrier::connect(app).await;
    live.speak(utterance).await;
    live.speak(&silence(1.0)).await;
    live.wait_for_mark("turn-2-2", Duration::from_secs(20)).await;

    let mut b = Browser::start(bin, PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots")).await;
    let console = app.url("/console");

    // A wrong key: a clear message, and the form again.
    b.navigate(&console).await;
    b.wait_for("document.getElementById('key-input')", "the key form").await;
    b.type_and_submit("key-input", "not-a-key", "key-submit").await;
    b.wait_for("!document.getElementById('key-message')?.hidden", "the wrong-key message").await;
    let message = b.eval("document.getElementById('key-message').textContent").await;
    assert!(message.as_str().unwrap().contains("This API key was refused"), "{message}");
    assert_eq!(b.eval("sessionStorage.length").await, json!(0), "a refused key is not kept");
    assert_eq!(b.eval("document.cookie").await, json!(""));
    b.screenshot("wrong-key").await;
    // The refused request itself is logged by the browser as a failed resource (401); nothing else.
    let errors = b.take_errors();
    assert!(errors.iter().all(|e| e.contains("401")), "{errors:?}");

    // The right key: the list, with both calls.
    b.type_and_submit("key-input", KEY, "key-submit").await;
    let row = |id: &str| format!("document.querySelector('#calls tr[data-call-id=\"{id}\"]')");
    b.wait_for(&row(&done.id), "the finished call in the list").await;
    b.wait_for(&row(&live.id), "the live call in the list").await;
    assert_eq!(b.eval("sessionStorage.getItem('voice-kraliki.api-key')").await, json!(KEY));
    assert!(!b.eval("location.href").await.as_str().unwrap().contains(KEY), "the key is never in the URL");
    b.screenshot("list").await;

    // The list refreshes itself: a call created now appears without a reload; filtering by
    // carrier or by text finds it alone.
    let queued = app.create("twilio").await["id"].as_str().unwrap().to_string();
    b.wait_for(&row(&queued), "a new call in the list").await;
    b.eval("(s => { s.value = 'twilio'; s.dispatchEvent(new Event('change')); })(document.getElementById('filter-provider'))")
        .await;
    b.wait_for(&format!("{} && !{} && !{}", row(&queued), row(&done.id), row(&live.id)), "only the twilio call").await;
    b.eval(
        "(s => { s.value = ''; s.dispatchEvent(new Event('change')); })(document.getElementById('filter-provider'))",
    )
    .await;
    b.wait_for(&row(&done.id), "every carrier again").await;
    b.type_and_submit("filter-text", &live.id[24..], "filter-text").await;
    b.wait_for(&format!("{} && !{} && !{}", row(&live.id), row(&done.id), row(&queued)), "the text filter").await;
    b.eval("(i => { i.value = ''; i.dispatchEvent(new Event('input')); })(document.getElementById('filter-text'))")
        .await;
    b.wait_for(&row(&done.id), "no text filter").await;

    // Filtering by status leaves only the live call.
    b.eval("(s => { s.value = 'in_progress'; s.dispatchEvent(new Event('change')); })(document.getElementById('filter-status'))")
        .await;
    b.wait_for(&format!("!{} && {}", row(&done.id), row(&live.id)), "only the live call when filtered").await;
    b.eval("(s => { s.value = ''; s.dispatchEvent(new Event('change')); })(document.getElementById('filter-status'))")
        .await;
    b.wait_for(&row(&done.id), "the finished call back").await;

    // The finished call: one bar group per agent turn, each with its stages.
    b.eval(&format!("{}.click()", row(&done.id))).await;
    b.wait_for("document.querySelector('#waterfall .turn-group')", "the waterfall").await;
    assert_eq!(b.count("#waterfall .turn-group").await, agent_turns);
    assert!(b.count("#waterfall .turn-group .stage").await >= agent_turns * 4, "stacked stages");
    assert_eq!(b.count("#transcript .line").await, 4, "two caller and two agent lines");
    let transcript = b.eval("document.getElementById('transcript').innerText").await;
    assert!(transcript.as_str().unwrap().contains("Your order ships today."), "{transcript}");
    assert_eq!(b.count("#live-badge").await, 0, "an ended call is not live");
    // Its recording: one strip per channel with a mark per speech segment, and the figures.
    b.wait_for("document.getElementById('analysis-card')", "the recording's analysis").await;
    assert_eq!(b.count("#analysis-card .strip-row").await, 2);
    assert_eq!(b.count("#analysis-card .strip span").await, segments as u64);
    let recording = b.eval("document.getElementById('analysis-card').innerText").await;
    for figure in ["talk ratio", "agent", "caller", "interruptions", "longest dead air"] {
        assert!(recording.as_str().unwrap().contains(figure), "{figure} in {recording}");
    }
    let trace_id = analysis["trace_id"].as_str().unwrap_or_else(|| panic!("a trace id: {analysis}"));
    let href = b.eval("document.getElementById('trace-link').href").await;
    assert_eq!(href.as_str(), Some(TRACE_TEMPLATE.replace("{trace_id}", trace_id).as_str()));
    // A barge-in is marked on its bar group (the second reply marked interrupted in the store,
    // as the media session does when the caller talks over it).
    let id = uuid::Uuid::parse_str(&done.id).unwrap();
    app.repository().await.mark_turn_interrupted(id, 4).await.unwrap();
    b.eval("location.reload()").await;
    b.wait_for("document.querySelector('#waterfall .turn-group.interrupted .barge-in')", "the barge-in mark").await;
    assert_eq!(b.count("#waterfall .turn-group.interrupted").await, 1);
    assert_eq!(b.eval("document.querySelector('.turn-group.interrupted').dataset.seq").await, json!("4"));
    b.screenshot("waterfall").await;

    // The live call gains a turn on screen as the caller speaks again.
    b.eval(&format!("location.hash = '#/calls/{}'", live.id)).await;
    b.wait_for("document.getElementById('live-badge')", "the live call's page").await;
    // Followed through its event stream, not by polling.
    b.wait_for(
        "document.getElementById('status-line').textContent.includes('following its events')",
        "the live call's event stream followed",
    )
    .await;
    b.wait_for("document.querySelectorAll('#waterfall .turn-group').length === 1", "one agent turn").await;
    live.speak(utterance).await;
    live.speak(&silence(1.0)).await;
    live.wait_for_mark("turn-4-2", Duration::from_secs(20)).await;
    b.wait_for("document.querySelectorAll('#waterfall .turn-group').length === 2", "the new agent turn").await;
    assert_eq!(b.count("#transcript .line").await, 4);
    b.screenshot("live-call").await;
    live.hang_up().await;
    b.wait_for("!document.getElementById('live-badge')", "the call shown as ended").await;

    let errors = b.take_errors();
    assert!(errors.is_empty(), "the browser logged errors: {errors:#?}");

    // An unknown call: a message, not a blank page.
    b.eval(&format!("location.hash = '#/calls/{}'", uuid::Uuid::new_v4())).await;
    b.wait_for("!document.getElementById('banner').hidden", "the not-found message").await;
    let banner = b.eval("document.getElementById('banner').textContent").await;
    assert!(banner.as_str().unwrap().contains("not_found"), "{banner}");
    let errors = b.take_errors();
    assert!(errors.iter().all(|e| e.contains("404")), "only the refused request itself: {errors:?}");
}
