//! A lean HTTP/1.1 keep-alive client for the saturating write scenarios: one connection per
//! writer, one request in flight on it, requests of the same shape built into one reused buffer,
//! and of each answer only the status and the length of the body. A write then costs the load
//! generator a `write` and a `read` or two, so on a machine it shares with the node and Redis it
//! takes little of the CPU it measures (a general client parses headers into maps, the body into
//! JSON, and allocates per request).

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One keep-alive connection to the node.
pub struct Connection {
    addr: String,
    stream: Option<TcpStream>,
    request: Vec<u8>,
    answer: Vec<u8>,
}

impl Connection {
    /// A connection to the node at `target` (`http://host:port`), opened on first use.
    pub fn new(target: &str) -> anyhow::Result<Connection> {
        let Some(addr) = target.strip_prefix("http://") else {
            bail!("{target}: only http:// targets are supported by the raw client");
        };
        Ok(Connection {
            addr: addr.trim_end_matches('/').to_owned(),
            stream: None,
            request: Vec::with_capacity(1024),
            answer: Vec::with_capacity(1024),
        })
    }

    /// POSTs `body` (JSON) to `path` with `token` as the bearer; returns the answer's status.
    /// A connection the node closed is opened again once.
    pub async fn post_json(&mut self, path: &str, token: &str, body: &str) -> anyhow::Result<u16> {
        self.request.clear();
        for part in [
            "POST ",
            path,
            " HTTP/1.1\r\nHost: ",
            &self.addr,
            "\r\nAuthorization: Bearer ",
            token,
            "\r\nContent-Type: application/json\r\nContent-Length: ",
            &body.len().to_string(),
            "\r\n\r\n",
            body,
        ] {
            self.request.extend_from_slice(part.as_bytes());
        }
        match self.exchange().await {
            Ok(status) => Ok(status),
            // A kept-alive connection may have been closed by the node meanwhile.
            Err(_) if self.stream.take().is_some() => self.exchange().await,
            Err(e) => Err(e),
        }
    }

    async fn exchange(&mut self) -> anyhow::Result<u16> {
        if self.stream.is_none() {
            let stream = TcpStream::connect(&self.addr)
                .await
                .with_context(|| format!("connect {}", self.addr))?;
            stream.set_nodelay(true)?;
            self.stream = Some(stream);
        }
        let stream = self.stream.as_mut().context("no connection")?;
        stream.write_all(&self.request).await?;
        self.answer.clear();
        // The head, then as much of the body as its Content-Length says.
        let (head_end, status, length, close) = loop {
            if let Some(at) = find(&self.answer, b"\r\n\r\n") {
                let (status, length, close) = parse_head(&self.answer[..at])?;
                break (at + 4, status, length, close);
            }
            read_more(stream, &mut self.answer).await?;
        };
        while self.answer.len() < head_end + length {
            read_more(stream, &mut self.answer).await?;
        }
        if self.answer.len() > head_end + length {
            bail!("the node answered more than one response");
        }
        if close {
            self.stream = None;
        }
        Ok(status)
    }
}

async fn read_more(stream: &mut TcpStream, into: &mut Vec<u8>) -> anyhow::Result<()> {
    into.reserve(4096);
    if stream.read_buf(into).await? == 0 {
        bail!("the node closed the connection");
    }
    Ok(())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Status, body length and whether the node closes the connection after this response.
fn parse_head(head: &[u8]) -> anyhow::Result<(u16, usize, bool)> {
    let head = std::str::from_utf8(head).context("response head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|s| s.get(..3))
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let (mut length, mut close) = (None, false);
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.parse().context("bad Content-Length")?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            bail!("chunked responses are not supported by the raw client");
        } else if name.eq_ignore_ascii_case("connection") {
            close = value.eq_ignore_ascii_case("close");
        }
    }
    // Without a length only an answer with no body can be told apart from the next one.
    let length = match (length, status) {
        (Some(n), _) => n,
        (None, 204 | 304) => 0,
        (None, _) => bail!("a response without Content-Length"),
    };
    Ok((status, length, close))
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};

    /// A node stand-in on a free loopback port: `/keep` answers 201 with the request's body and
    /// names the client's port and bearer in headers; `/close` answers 503 and closes.
    async fn server() -> (String, actix_web::dev::ServerHandle) {
        let http = HttpServer::new(|| {
            App::new()
                .route(
                    "/keep",
                    web::post().to(|req: HttpRequest, body: String| async move {
                        let auth = req.headers().get("authorization").cloned();
                        let peer = req.peer_addr().map(|a| a.port()).unwrap_or(0);
                        HttpResponse::Created()
                            .insert_header(("x-peer", peer.to_string()))
                            .insert_header((
                                "x-auth",
                                auth.map_or(String::new(), |a| {
                                    a.to_str().unwrap_or_default().to_owned()
                                }),
                            ))
                            .body(body)
                    }),
                )
                .route(
                    "/close",
                    web::post().to(|| async {
                        HttpResponse::ServiceUnavailable()
                            .force_close()
                            .body("down")
                    }),
                )
        })
        .workers(1)
        .bind(("127.0.0.1", 0))
        .expect("bind a free port");
        let addr = http.addrs()[0];
        let running = http.run();
        let handle = running.handle();
        actix_web::rt::spawn(running);
        (format!("http://{addr}"), handle)
    }

    #[actix_web::test]
    async fn requests_share_one_connection_and_a_closed_one_is_opened_again() {
        let (target, handle) = server().await;
        let mut conn = Connection::new(&target).expect("an http target");
        for _ in 0..3 {
            let status = conn
                .post_json("/keep", "t0k3n", r#"{"type":"Information"}"#)
                .await
                .expect("an answer");
            assert_eq!(status, 201);
        }
        let body_start = find(&conn.answer, b"\r\n\r\n").expect("a head") + 4;
        assert_eq!(&conn.answer[body_start..], br#"{"type":"Information"}"#);
        let head = std::str::from_utf8(&conn.answer[..body_start]).expect("utf-8");
        assert!(head.contains("x-auth: Bearer t0k3n"), "{head}");
        let port = |head: &str| {
            head.lines()
                .find_map(|l| l.strip_prefix("x-peer: "))
                .map(str::to_owned)
                .expect("x-peer")
        };
        let first = port(head);
        // Kept alive: the next request comes from the same local port.
        conn.post_json("/keep", "t0k3n", "{}")
            .await
            .expect("an answer");
        let head = std::str::from_utf8(&conn.answer).expect("utf-8").to_owned();
        assert_eq!(port(&head), first, "one connection for every request");
        // A response that closes the connection: the next request opens a new one.
        let status = conn
            .post_json("/close", "t0k3n", "{}")
            .await
            .expect("an answer");
        assert_eq!(status, 503);
        assert!(conn.stream.is_none(), "the closed connection is dropped");
        conn.post_json("/keep", "t0k3n", "{}")
            .await
            .expect("an answer");
        let head = std::str::from_utf8(&conn.answer).expect("utf-8").to_owned();
        assert_ne!(port(&head), first, "a new connection after the close");
        handle.stop(true).await;
    }

    #[test]
    fn only_http_targets_are_taken() {
        assert!(Connection::new("https://127.0.0.1:1").is_err());
        assert!(Connection::new("http://127.0.0.1:1/").is_ok());
    }

    #[test]
    fn a_head_gives_its_status_length_and_whether_the_connection_closes() {
        let head = b"HTTP/1.1 201 Created\r\ncontent-length: 38\r\nlocation: /x";
        assert_eq!(parse_head(head).expect("parsed"), (201, 38, false));
        let head = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close";
        assert_eq!(parse_head(head).expect("parsed"), (503, 0, true));
        assert_eq!(
            parse_head(b"HTTP/1.1 204 No Content").expect("parsed"),
            (204, 0, false)
        );
        assert!(parse_head(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked").is_err());
        assert!(parse_head(b"HTTP/1.1 200 OK").is_err());
        assert!(parse_head(b"garbage").is_err());
    }
}
