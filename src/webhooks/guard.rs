//! Endpoint safety: `https` only unless allowed, and public addresses only unless allowed — checked
//! on the addresses actually connected to (a resolver in the HTTP client), so DNS rebinding cannot
//! slip a private address in after validation.

use std::error::Error as StdError;
use std::net::{IpAddr, SocketAddr};

use futures::future::LocalBoxFuture;

/// Checks an endpoint URL when a subscription is created.
pub fn check_url(url: &str, allow_http: bool, allow_private: bool) -> Result<(), String> {
    let uri: awc::http::Uri = url
        .parse()
        .map_err(|_| "is not an absolute URL".to_owned())?;
    match uri.scheme_str() {
        Some("https") => {}
        Some("http") if allow_http => {}
        Some("http") => return Err("must use https".into()),
        _ => return Err("must be an http(s) URL".into()),
    }
    let host = uri
        .host()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| "has no host".to_owned())?;
    if !allow_private
        && let Some(ip) = literal_ip(host)
        && !is_public(ip)
    {
        return Err("points to a loopback, private, link-local or multicast address".into());
    }
    Ok(())
}

fn literal_ip(host: &str) -> Option<IpAddr> {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

/// Whether the URL's host is an IP literal that is not allowed (the resolver never sees literals).
pub fn forbidden_literal(url: &str, allow_private: bool) -> bool {
    if allow_private {
        return false;
    }
    let Ok(uri) = url.parse::<awc::http::Uri>() else {
        return true;
    };
    uri.host()
        .and_then(literal_ip)
        .is_some_and(|ip| !is_public(ip))
}

/// Addresses a webhook may be delivered to when private networks are not allowed.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_unspecified()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (64..128).contains(&o[1])) // shared address space (CGNAT)
                || (o[0] == 198 && (18..20).contains(&o[1]))) // benchmarking
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let s = v6.segments();
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local
                || (s[0] & 0xffc0) == 0xfe80) // link-local
        }
    }
}

/// The HTTP client's resolver: resolves as usual, then keeps only allowed addresses.
pub struct GuardedResolver {
    pub allow_private: bool,
}

impl actix_tls::connect::Resolve for GuardedResolver {
    fn lookup<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> LocalBoxFuture<'a, Result<Vec<SocketAddr>, Box<dyn StdError>>> {
        Box::pin(async move {
            let resolved: Vec<SocketAddr> = tokio::net::lookup_host((host, port)).await?.collect();
            let allowed: Vec<SocketAddr> = resolved
                .into_iter()
                .filter(|a| self.allow_private || is_public(a.ip()))
                .collect();
            if allowed.is_empty() {
                return Err(format!("{host} resolves to no public address").into());
            }
            Ok(allowed)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_and_special_addresses_are_not_public() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "224.0.0.1",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(!is_public(ip.parse().expect("ip")), "{ip}");
        }
        for ip in ["8.8.8.8", "2001:4860:4860::8888", "151.101.1.1"] {
            assert!(is_public(ip.parse().expect("ip")), "{ip}");
        }
    }

    #[test]
    fn urls_need_https_unless_allowed_and_public_literals_unless_allowed() {
        assert!(check_url("https://example.org/hook", false, false).is_ok());
        assert_eq!(
            check_url("http://example.org/hook", false, false),
            Err("must use https".into())
        );
        assert!(check_url("http://example.org/hook", true, false).is_ok());
        assert!(check_url("https://127.0.0.1/hook", false, false).is_err());
        assert!(check_url("https://[::1]/hook", false, false).is_err());
        assert!(check_url("https://127.0.0.1/hook", false, true).is_ok());
        assert!(check_url("ftp://example.org", true, true).is_err());
        assert!(check_url("not a url", true, true).is_err());
    }
}
