//! A real headless Chromium for browser tests, driven over the DevTools protocol: open a page,
//! evaluate JavaScript in it, wait for a condition, type into a form, take screenshots and
//! collect every error the page logged or threw.
//!
//! Tests that need it call [`chromium`] first: without the browser installed they skip with one
//! loud line, unless `REQUIRE_TOOLS=1` makes that a failure.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use base64::{Engine as _, engine::general_purpose::STANDARD};
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio_tungstenite::tungstenite::Message;

/// How long [`Browser::wait_for`] waits.
pub const WAIT: Duration = Duration::from_secs(30);

/// `chromium`, or `None` (after one loud line) when it is not installed and not required; with
/// `REQUIRE_TOOLS=1` a missing browser panics instead.
pub fn chromium() -> Option<&'static str> {
    let found =
        std::process::Command::new("chromium").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status();
    match found {
        Ok(s) if s.success() => Some("chromium"),
        _ if std::env::var("REQUIRE_TOOLS").is_ok_and(|v| v == "1") => {
            panic!("chromium is not installed and REQUIRE_TOOLS=1 (apt-get install chromium)")
        }
        _ => {
            eprintln!(
                "SKIPPED: chromium is not installed (apt-get install chromium); set REQUIRE_TOOLS=1 to fail instead"
            );
            None
        }
    }
}

/// The DevTools connection to one page.
pub type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A headless Chromium (1280×900, a throwaway profile) with one page, driven over the DevTools
/// protocol. Killed when dropped.
pub struct Browser {
    child: tokio::process::Child,
    _profile: tempfile::TempDir,
    ws: Ws,
    next_id: u64,
    /// Where [`Browser::screenshot`] writes.
    screenshots: PathBuf,
    /// Every event received so far (method, params).
    events: Vec<(String, Value)>,
}

impl Browser {
    /// Starts `bin` (from [`chromium`]) on `about:blank`; screenshots go to the folder
    /// `screenshots` (created when the first one is taken).
    pub async fn start(bin: &str, screenshots: impl Into<PathBuf>) -> Self {
        crate::install_crypto_provider();
        let profile = tempfile::tempdir().expect("a profile folder");
        let mut child = tokio::process::Command::new(bin)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-component-update",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "--window-size=1280,900",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start chromium");
        // "DevTools listening on ws://127.0.0.1:PORT/devtools/browser/…"
        let mut lines = BufReader::new(child.stderr.take().expect("chromium's stderr")).lines();
        let port = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = lines.next_line().await.expect("chromium's stderr") {
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    let port = url.trim().trim_start_matches("ws://127.0.0.1:").split('/').next();
                    return port.expect("a port").to_string();
                }
            }
            panic!("chromium exited before listening")
        })
        .await
        .expect("chromium listens within 60 s");
        // Keep draining its stderr so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let list = format!("http://127.0.0.1:{port}/json/list");
        let targets: Value = reqwest::get(&list).await.expect(&list).json().await.expect("the target list");
        let page = targets
            .as_array()
            .expect("a target list")
            .iter()
            .find(|t| t["type"] == "page")
            .unwrap_or_else(|| panic!("no page target: {targets}"));
        let url = page["webSocketDebuggerUrl"].as_str().expect("the page's DevTools address");
        let (ws, _) = tokio_tungstenite::connect_async(url).await.expect("connect to the page");
        let mut browser =
            Self { child, _profile: profile, ws, next_id: 0, screenshots: screenshots.into(), events: vec![] };
        for domain in ["Runtime.enable", "Log.enable", "Page.enable"] {
            browser.call(domain, json!({})).await;
        }
        browser
            .call(
                "Emulation.setDeviceMetricsOverride",
                json!({"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": false}),
            )
            .await;
        browser
    }

    /// Sends a DevTools command and waits (up to 30 s) for its answer, keeping the events that
    /// arrive meanwhile; panics on an error answer. Returns the answer's `result`.
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let command = json!({"id": id, "method": method, "params": params}).to_string();
        self.ws.send(Message::text(command)).await.expect("send to chromium");
        let answer = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                let message = self.ws.next().await.expect("devtools connection open").expect("a devtools message");
                let Message::Text(text) = message else { continue };
                let v: Value = serde_json::from_str(&text).expect("devtools JSON");
                if v["id"] == id {
                    return v;
                }
                if let Some(m) = v["method"].as_str() {
                    self.events.push((m.to_string(), v["params"].clone()));
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no answer to {method}"));
        assert!(answer.get("error").is_none(), "{method}: {answer}");
        answer["result"].clone()
    }

    /// Evaluates `expression` in the page and returns its value; panics if it throws.
    pub async fn eval(&mut self, expression: &str) -> Value {
        let r = self.call("Runtime.evaluate", json!({"expression": expression, "returnByValue": true})).await;
        assert!(r.get("exceptionDetails").is_none(), "{expression}: {r}");
        r["result"]["value"].clone()
    }

    /// Waits until `expression` is true in the page, up to [`WAIT`]; `what` names it in the
    /// panic, which also shows the page's text.
    pub async fn wait_for(&mut self, expression: &str, what: &str) {
        self.wait_for_within(expression, what, WAIT).await;
    }

    /// [`Browser::wait_for`] with its own deadline.
    pub async fn wait_for_within(&mut self, expression: &str, what: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.eval(&format!("Boolean({expression})")).await == json!(true) {
                return;
            }
            if Instant::now() > deadline {
                let text = self.eval("document.body.innerText").await;
                panic!("{what}: not within {timeout:?}; the page shows: {text}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The number of elements matching the CSS `selector`.
    pub async fn count(&mut self, selector: &str) -> u64 {
        let n = self.eval(&format!("document.querySelectorAll({selector:?}).length")).await;
        n.as_u64().unwrap_or_else(|| panic!("a count for {selector}: {n}"))
    }

    /// Types `text` into the element `id` as a person would, then clicks the element `submit`.
    pub async fn type_and_submit(&mut self, id: &str, text: &str, submit: &str) {
        self.eval(&format!("(e => {{ e.value = ''; e.focus(); }})(document.getElementById({id:?}))")).await;
        self.call("Input.insertText", json!({"text": text})).await;
        self.eval(&format!("document.getElementById({submit:?}).click()")).await;
    }

    /// Opens `url` in the page (without waiting for it to load: wait for what it should show).
    pub async fn navigate(&mut self, url: &str) {
        self.call("Page.navigate", json!({"url": url})).await;
    }

    /// Saves the whole page as `<name>.png` in the screenshot folder and returns its path.
    pub async fn screenshot(&mut self, name: &str) -> PathBuf {
        let shot = self.call("Page.captureScreenshot", json!({"format": "png", "captureBeyondViewport": true})).await;
        let png = STANDARD.decode(shot["data"].as_str().expect("screenshot data")).expect("base64 screenshot");
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        let path = save(&self.screenshots, name, &png);
        eprintln!("screenshot: {}", path.display());
        path
    }

    /// Errors the page logged or threw since the last call (and forgets them): uncaught
    /// exceptions, `console.error`/`console.assert`, and the browser's own error log entries
    /// (such as a failed request).
    pub fn take_errors(&mut self) -> Vec<String> {
        let errors = self
            .events
            .iter()
            .filter_map(|(method, p)| match method.as_str() {
                "Runtime.exceptionThrown" => Some(format!("exception: {}", p["exceptionDetails"])),
                "Runtime.consoleAPICalled" if matches!(p["type"].as_str(), Some("error" | "assert")) => {
                    Some(format!("console.{}: {}", p["type"], p["args"]))
                }
                "Log.entryAdded" if p["entry"]["level"] == "error" => Some(format!("log: {}", p["entry"])),
                _ => None,
            })
            .collect();
        self.events.clear();
        errors
    }
}

fn save(dir: &Path, name: &str, png: &[u8]) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    let path = dir.join(format!("{name}.png"));
    std::fs::write(&path, png).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}
