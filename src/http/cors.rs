//! Cross-origin access (`http.cors_origins`): which web pages on other origins may call the node,
//! with the preflight answered for the REST, poll and GraphQL routes, and the same rule for the
//! `Origin` of a WebSocket upgrade. A page the node serves itself (the console, GraphiQL) is on
//! the node's own origin and always allowed.

use actix_cors::Cors;
use actix_web::http::header::{self, HeaderName};
use actix_web::http::{Method, header::HeaderValue};

/// The configured origins, checked once.
#[derive(Clone, Debug, Default)]
pub struct Origins {
    any: bool,
    list: Vec<String>,
}

impl Origins {
    pub fn new(configured: &[String]) -> Self {
        Origins {
            any: configured.iter().any(|o| o == "*"),
            list: configured
                .iter()
                .filter(|o| *o != "*")
                .map(|o| o.to_ascii_lowercase())
                .collect(),
        }
    }

    /// Whether cross-origin access is configured at all.
    pub fn enabled(&self) -> bool {
        self.any || !self.list.is_empty()
    }

    /// Whether a request from `origin` to a node reached as `host` may proceed.
    pub fn allows(&self, origin: &[u8], host: Option<&[u8]>) -> bool {
        if self.any || same_origin(origin, host) {
            return true;
        }
        let Ok(origin) = std::str::from_utf8(origin) else {
            return false;
        };
        self.list.iter().any(|o| o.eq_ignore_ascii_case(origin))
    }

    /// The `Origin` check of a WebSocket upgrade: none when no origins are configured (any page
    /// may open a socket, which carries its own dialog token); else a browser's `Origin` must be
    /// allowed. Clients that send no `Origin` (not browsers) are not concerned.
    pub fn allows_upgrade(&self, origin: Option<&HeaderValue>, host: Option<&HeaderValue>) -> bool {
        match origin {
            None => true,
            Some(_) if !self.enabled() => true,
            Some(o) => self.allows(o.as_bytes(), host.map(|h| h.as_bytes())),
        }
    }

    /// The CORS middleware for these origins (without effect on same-origin requests).
    pub fn middleware(&self) -> Cors {
        let cors = if self.any {
            Cors::default().allow_any_origin().send_wildcard()
        } else {
            let origins = self.clone();
            Cors::default().allowed_origin_fn(move |origin, head| {
                origins.allows(
                    origin.as_bytes(),
                    head.headers.get(header::HOST).map(|h| h.as_bytes()),
                )
            })
        };
        cors.allowed_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
        ])
        .allowed_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::IF_MATCH,
            header::ACCEPT,
            HeaderName::from_static("last-event-id"),
        ])
        .expose_headers([
            header::ETAG,
            header::LOCATION,
            header::RETRY_AFTER,
            HeaderName::from_static("next"),
        ])
        .max_age(3600)
    }
}

/// An `Origin` naming the host the request was sent to (a page served by this node).
fn same_origin(origin: &[u8], host: Option<&[u8]>) -> bool {
    let Some(host) = host else { return false };
    let rest = origin
        .strip_prefix(b"http://")
        .or_else(|| origin.strip_prefix(b"https://"));
    rest.is_some_and(|r| r.eq_ignore_ascii_case(host))
}

/// Checks one configured origin: `*`, or `scheme://host[:port]` with an http(s) scheme and nothing
/// after the authority.
pub fn valid_origin(o: &str) -> bool {
    if o == "*" {
        return true;
    }
    let Some(rest) = o
        .strip_prefix("http://")
        .or_else(|| o.strip_prefix("https://"))
    else {
        return false;
    };
    !rest.is_empty()
        && !rest.contains(['/', '?', '#', ' ', '*', '@'])
        && rest.chars().all(|c| c.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listed_origins_and_the_nodes_own_origin_are_allowed() {
        let o = Origins::new(&["https://app.example.no".into()]);
        assert!(o.enabled());
        assert!(o.allows(b"https://app.example.no", Some(b"127.0.0.1:8080")));
        assert!(o.allows(b"HTTPS://APP.example.no", None));
        assert!(!o.allows(b"https://evil.example", Some(b"127.0.0.1:8080")));
        assert!(!o.allows(b"https://app.example.no.evil.example", None));
        // The console on the node's own origin.
        assert!(o.allows(b"http://127.0.0.1:8080", Some(b"127.0.0.1:8080")));
        assert!(Origins::new(&["*".into()]).allows(b"https://any.example", None));
        assert!(!Origins::new(&[]).enabled());
    }

    #[test]
    fn websocket_origins_are_checked_only_when_origins_are_configured() {
        let any_page = HeaderValue::from_static("https://evil.example");
        let host = HeaderValue::from_static("127.0.0.1:8080");
        assert!(Origins::new(&[]).allows_upgrade(Some(&any_page), Some(&host)));
        let o = Origins::new(&["https://app.example.no".into()]);
        assert!(!o.allows_upgrade(Some(&any_page), Some(&host)));
        assert!(o.allows_upgrade(None, Some(&host)));
        let own = HeaderValue::from_static("http://127.0.0.1:8080");
        assert!(o.allows_upgrade(Some(&own), Some(&host)));
    }

    #[test]
    fn configured_origins_must_be_scheme_and_authority() {
        assert!(valid_origin("*"));
        assert!(valid_origin("https://app.example.no"));
        assert!(valid_origin("http://127.0.0.1:3000"));
        assert!(!valid_origin("app.example.no"));
        assert!(!valid_origin("https://app.example.no/"));
        assert!(!valid_origin("https://*.example.no"));
        assert!(!valid_origin("ftp://x"));
        assert!(!valid_origin("https://"));
    }
}
