//! Headless Debian Chromium driven over the DevTools protocol (a small client on the test's own
//! WebSocket stack): open pages, evaluate JavaScript in them, wait for a condition, screenshot.
//!
//! The browser resolves no name but `localhost` and `127.0.0.1` and fetches nothing in the
//! background, so a test page cannot reach past the loopback interface.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use awc::ws;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};

type Framed = actix_codec::Framed<awc::BoxedSocket, ws::Codec>;

pub struct Browser {
    child: Child,
    ws: Framed,
    next_id: u64,
    _profile: tempfile::TempDir,
}

/// One page (tab), by its DevTools session.
pub struct Page {
    session: String,
}

/// The Chromium binary, or a failure that says how to install it.
fn chromium() -> String {
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        let found = Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {name}"))
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
        if let Some(path) = found.filter(|p| !p.is_empty()) {
            return path;
        }
    }
    panic!(
        "Chromium is required by the browser tests: install it (scripts/test does, with \
         `apt-get install chromium` on Debian/Ubuntu)"
    );
}

impl Browser {
    pub async fn launch() -> Browser {
        let profile = tempfile::tempdir().expect("profile dir");
        let mut child = Command::new(chromium())
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-default-apps",
                "--disable-sync",
                "--disable-domain-reliability",
                "--disable-features=Translate,OptimizationHints,MediaRouter,DialMediaRouteProvider",
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
                "--window-size=1280,900",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("chromium starts");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(at) = line.find("ws://") {
                    let _ = tx.send(line[at..].trim().to_owned());
                }
            }
        });
        let url = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("chromium prints its DevTools address");
        let (_, ws) = awc::Client::builder()
            .max_http_version(awc::http::Version::HTTP_11)
            .finish()
            .ws(url)
            .max_frame_size(64 << 20)
            .connect()
            .await
            .expect("DevTools connection");
        Browser {
            child,
            ws,
            next_id: 0,
            _profile: profile,
        }
    }

    /// Calls `method` (in `page`'s session, or on the browser) and returns its result; events that
    /// arrive meanwhile are skipped.
    pub async fn call(&mut self, page: Option<&Page>, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(p) = page {
            msg["sessionId"] = json!(p.session);
        }
        self.ws
            .send(ws::Message::Text(msg.to_string().into()))
            .await
            .expect("DevTools send");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let frame = tokio::time::timeout(left, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("DevTools answer to {method} in time"))
                .expect("DevTools open")
                .expect("DevTools frame");
            // DevTools sends each message as one text frame.
            let v: Value = match frame {
                ws::Frame::Text(b) => serde_json::from_slice(&b).expect("json"),
                _ => continue,
            };
            if v["id"] == id {
                if let Some(e) = v.get("error") {
                    panic!("DevTools {method} failed: {e}");
                }
                return v["result"].clone();
            }
        }
    }

    /// Opens `url` in a new tab.
    pub async fn open(&mut self, url: &str) -> Page {
        let target = self
            .call(None, "Target.createTarget", json!({"url": "about:blank"}))
            .await;
        let attached = self
            .call(
                None,
                "Target.attachToTarget",
                json!({"targetId": target["targetId"], "flatten": true}),
            )
            .await;
        let page = Page {
            session: attached["sessionId"]
                .as_str()
                .expect("session id")
                .to_owned(),
        };
        self.call(Some(&page), "Page.enable", json!({})).await;
        self.call(Some(&page), "Page.navigate", json!({"url": url}))
            .await;
        page
    }

    /// The value of a JavaScript expression in `page` (promises awaited).
    pub async fn eval(&mut self, page: &Page, expression: &str) -> Value {
        let r = self
            .call(
                Some(page),
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        if let Some(e) = r.get("exceptionDetails") {
            panic!("{expression} threw: {e}");
        }
        r["result"]["value"].clone()
    }

    /// Evaluates `expression` every 10 ms until it is truthy; returns its value and how long
    /// that took. Fails with `what` after `deadline`.
    pub async fn wait_for(
        &mut self,
        page: &Page,
        expression: &str,
        deadline: Duration,
        what: &str,
    ) -> (Value, Duration) {
        let started = Instant::now();
        // A page still loading has no value yet: a missing global reads as undefined.
        let guarded = format!(
            "(() => {{ try {{ return ({expression}); }} catch (e) {{ return null; }} }})()"
        );
        loop {
            let v = self.eval(page, &guarded).await;
            let truthy = !(v.is_null()
                || v == json!(false)
                || v == json!(0)
                || v == json!("")
                || v.as_array().is_some_and(|a| a.is_empty()));
            if truthy {
                return (v, started.elapsed());
            }
            if started.elapsed() >= deadline {
                let seen = self
                    .eval(
                        page,
                        "JSON.stringify({href: location.href, ready: document.readyState, \
                         text: document.body && document.body.innerText.slice(0, 600)})",
                    )
                    .await;
                panic!("{what} within {deadline:?}; the page: {seen}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A PNG of the page as it looks now.
    pub async fn screenshot(&mut self, page: &Page) -> Vec<u8> {
        use base64::Engine;
        let r = self
            .call(
                Some(page),
                "Page.captureScreenshot",
                json!({"format": "png"}),
            )
            .await;
        base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().expect("png data"))
            .expect("base64")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
