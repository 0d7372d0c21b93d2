//! A real HTTP webhook receiver on 127.0.0.1 port 0: records every request and answers with a
//! scripted status (changeable mid-test), optionally per `webhook-id`.
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};

#[derive(Clone, Debug)]
pub struct Received {
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
    pub at: Instant,
}

impl Received {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("json body")
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map(String::as_str).unwrap_or("")
    }
}

/// What to answer: a status and optional extra headers.
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub delay: Option<Duration>,
}

impl Answer {
    pub fn status(status: u16) -> Answer {
        Answer {
            status,
            headers: Vec::new(),
            delay: None,
        }
    }

    /// This answer with one more response header.
    pub fn with_header(mut self, name: &str, value: &str) -> Answer {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// This answer, sent only after `delay`.
    pub fn delayed(mut self, delay: Duration) -> Answer {
        self.delay = Some(delay);
        self
    }
}

#[derive(Default)]
struct Script {
    /// Answers consumed in order before `default` applies.
    queue: VecDeque<Answer>,
    default: Option<Answer>,
    /// Per-dialog answers (by the event's `resourceinstance`), taking precedence.
    by_dialog: HashMap<String, Answer>,
    /// Requests being answered right now (counted until the response is built).
    in_flight: usize,
    /// The most requests answered at once since the start or the last reset.
    max_in_flight: usize,
}

#[derive(Clone)]
pub struct Receiver {
    pub url: String,
    pub port: u16,
    requests: Arc<Mutex<Vec<Received>>>,
    script: Arc<Mutex<Script>>,
    handle: actix_web::dev::ServerHandle,
}

impl Receiver {
    /// Starts a receiver answering 200 until told otherwise.
    pub async fn start() -> Receiver {
        let requests: Arc<Mutex<Vec<Received>>> = Arc::default();
        let script: Arc<Mutex<Script>> = Arc::default();
        let (r, s) = (requests.clone(), script.clone());
        let server = HttpServer::new(move || {
            let (r, s) = (r.clone(), s.clone());
            App::new().default_service(web::to(move |req: HttpRequest, body: web::Bytes| {
                let (r, s) = (r.clone(), s.clone());
                async move { answer(req, body, r, s).await }
            }))
        })
        .workers(1)
        .disable_signals()
        .bind(("127.0.0.1", 0))
        .expect("bind receiver");
        let port = server.addrs()[0].port();
        let server = server.run();
        let handle = server.handle();
        actix_web::rt::spawn(server);
        Receiver {
            url: format!("http://127.0.0.1:{port}/hook"),
            port,
            requests,
            script,
            handle,
        }
    }

    pub fn requests(&self) -> Vec<Received> {
        self.requests.lock().expect("lock").clone()
    }

    /// Requests that carried events (not the validation handshake).
    pub fn events(&self) -> Vec<Received> {
        self.requests()
            .into_iter()
            .filter(|r| r.json()["type"] != "platform.events.validatesubscription")
            .collect()
    }

    pub fn validations(&self) -> Vec<Received> {
        self.requests()
            .into_iter()
            .filter(|r| r.json()["type"] == "platform.events.validatesubscription")
            .collect()
    }

    /// Answer `status` from now on.
    pub fn answer(&self, status: u16) {
        self.script.lock().expect("lock").default = Some(Answer::status(status));
    }

    /// Answer these first, in order, then the default.
    pub fn then(&self, answers: Vec<Answer>) {
        self.script.lock().expect("lock").queue.extend(answers);
    }

    /// Answer `status` for events of one dialog.
    pub fn answer_for_dialog(&self, dialog: &str, status: Option<u16>) {
        let mut s = self.script.lock().expect("lock");
        match status {
            Some(st) => s.by_dialog.insert(dialog.to_owned(), Answer::status(st)),
            None => s.by_dialog.remove(dialog),
        };
    }

    /// Answer `answer` (status, headers, delay) for events of one dialog.
    pub fn answer_for_dialog_with(&self, dialog: &str, answer: Answer) {
        self.script
            .lock()
            .expect("lock")
            .by_dialog
            .insert(dialog.to_owned(), answer);
    }

    /// Answer `answer` (status, headers, delay) from now on.
    pub fn answer_with(&self, answer: Answer) {
        self.script.lock().expect("lock").default = Some(answer);
    }

    /// The most requests that were being answered at the same time (since the last reset).
    pub fn max_in_flight(&self) -> usize {
        self.script.lock().expect("lock").max_in_flight
    }

    /// Restarts the `max_in_flight` count from the requests in flight now.
    pub fn reset_max_in_flight(&self) {
        let mut s = self.script.lock().expect("lock");
        s.max_in_flight = s.in_flight;
    }

    pub async fn wait_for(
        &self,
        what: &str,
        deadline: Duration,
        cond: impl Fn(&[Received]) -> bool,
    ) {
        let end = Instant::now() + deadline;
        loop {
            if cond(&self.requests()) {
                return;
            }
            assert!(
                Instant::now() < end,
                "receiver timed out waiting for {what}: {} requests",
                self.requests().len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub async fn stop(&self) {
        self.handle.stop(false).await;
    }
}

async fn answer(
    req: HttpRequest,
    body: web::Bytes,
    r: Arc<Mutex<Vec<Received>>>,
    s: Arc<Mutex<Script>>,
) -> HttpResponse {
    let headers = req
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    let dialog = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["resourceinstance"].as_str().map(str::to_owned));
    r.lock().expect("lock").push(Received {
        headers,
        body: body.to_vec(),
        at: Instant::now(),
    });
    let chosen = {
        let mut s = s.lock().expect("lock");
        let chosen = dialog
            .and_then(|d| s.by_dialog.get(&d).cloned())
            .or_else(|| s.queue.pop_front())
            .or_else(|| s.default.clone())
            .unwrap_or_else(|| Answer::status(200));
        s.in_flight += 1;
        s.max_in_flight = s.max_in_flight.max(s.in_flight);
        chosen
    };
    if let Some(d) = chosen.delay {
        tokio::time::sleep(d).await;
    }
    s.lock().expect("lock").in_flight -= 1;
    let mut resp =
        HttpResponse::build(actix_web::http::StatusCode::from_u16(chosen.status).expect("status"));
    for (k, v) in &chosen.headers {
        resp.insert_header((k.as_str(), v.as_str()));
    }
    resp.finish()
}
