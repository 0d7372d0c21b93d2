//! Endpoint safety: `https` only unless allowed, and public addresses only unless allowed — checked
//! on the addresses actually connected to (a resolver in the HTTP client), so DNS rebinding cannot
//! slip a private address in after validation.

use std::error::Error as StdError;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

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
        return Err("points to an address that is not globally routable".into());
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

/// Whether `ip` is globally routable: the only addresses a webhook may be delivered to when private
/// networks are not allowed. Every range of IANA's IPv4 and IPv6 special-purpose registries that is
/// not globally reachable is refused, and so are the forms that carry an IPv4 address inside IPv6
/// (mapped, compatible, NAT64, 6to4, Teredo), so a private IPv4 cannot be reached through them.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

/// IPv4 ranges that are not globally routable (IANA IPv4 special-purpose registry, multicast,
/// reserved), as (network, prefix length).
const NOT_GLOBAL_V4: &[([u8; 4], u8)] = &[
    ([0, 0, 0, 0], 8),       // "this network"
    ([10, 0, 0, 0], 8),      // private
    ([100, 64, 0, 0], 10),   // shared address space (CGNAT)
    ([127, 0, 0, 0], 8),     // loopback
    ([169, 254, 0, 0], 16),  // link-local (cloud metadata services)
    ([172, 16, 0, 0], 12),   // private
    ([192, 0, 0, 0], 24),    // IETF protocol assignments
    ([192, 0, 2, 0], 24),    // documentation (TEST-NET-1)
    ([192, 88, 99, 0], 24),  // 6to4 relay anycast (deprecated)
    ([192, 168, 0, 0], 16),  // private
    ([198, 18, 0, 0], 15),   // benchmarking
    ([198, 51, 100, 0], 24), // documentation (TEST-NET-2)
    ([203, 0, 113, 0], 24),  // documentation (TEST-NET-3)
    ([224, 0, 0, 0], 4),     // multicast
    ([240, 0, 0, 0], 4),     // reserved, and the limited broadcast 255.255.255.255
];

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let addr = u32::from(ip);
    !NOT_GLOBAL_V4.iter().any(|(net, len)| {
        let mask = u32::MAX << (32 - u32::from(*len));
        addr & mask == u32::from_be_bytes(*net)
    })
}

/// IPv6 ranges inside global unicast (2000::/3) that are not globally routable, as (network,
/// prefix length). Everything outside 2000::/3 is refused as a whole: loopback, unspecified,
/// IPv4-compatible (::/96), NAT64 (64:ff9b::/96, 64:ff9b:1::/48), discard (100::/64), SRv6
/// (5f00::/16), unique local, site-local (fec0::/10), link-local and multicast. IPv4-mapped
/// addresses (::ffff:0:0/96) are judged by their IPv4 address.
const NOT_GLOBAL_V6: &[(u128, u8)] = &[
    (0x2001_0000 << 96, 23), // IETF protocol assignments (Teredo, benchmarking, ORCHID)
    (0x2001_0db8 << 96, 32), // documentation
    (0x2002 << 112, 16),     // 6to4: carries an IPv4 address
    (0x3fff << 112, 20),     // documentation
];

fn is_public_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    let addr = u128::from(ip);
    let global_unicast = addr >> 125 == 0b001;
    global_unicast
        && !NOT_GLOBAL_V6.iter().any(|(net, len)| {
            let mask = u128::MAX << (128 - u32::from(*len));
            addr & mask == *net
        })
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
            // Ranges a first version missed: reserved, IETF assignments, site-local, IPv4
            // embedded in IPv6 (compatible, NAT64 reaching the metadata service, 6to4).
            "240.0.0.1",
            "255.255.255.255",
            "192.0.0.8",
            "192.0.2.1",
            "192.88.99.1",
            "198.51.100.7",
            "203.0.113.9",
            "198.18.0.1",
            "fec0::1",
            "::a00:1",
            "::127.0.0.1",
            "::8.8.8.8",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b::808:808",
            "64:ff9b:1::1",
            "2002:a9fe:a9fe::1",
            "2002:808:808::1",
            "2001::1",
            "2001:db8::1",
            "3fff::1",
            "100::1",
            "5f00::1",
            "ff02::1",
            "::",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
        ] {
            assert!(!is_public(ip.parse().expect("ip")), "{ip}");
        }
        for ip in [
            "8.8.8.8",
            "2001:4860:4860::8888",
            "151.101.1.1",
            "1.1.1.1",
            "192.0.3.1",
            "223.255.255.255",
            "2a00:1450:4001::1",
            "::ffff:8.8.8.8",
        ] {
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
        for refused in [
            "https://240.0.0.1/hook",
            "https://192.0.0.170/hook",
            "https://[fec0::1]/hook",
            "https://[::a9fe:a9fe]/hook",
            "https://[64:ff9b::a9fe:a9fe]/hook",
            "https://[2002:a9fe:a9fe::1]/hook",
        ] {
            assert_eq!(
                check_url(refused, false, false),
                Err("points to an address that is not globally routable".into()),
                "{refused}"
            );
        }
        assert!(check_url("ftp://example.org", true, true).is_err());
        assert!(check_url("not a url", true, true).is_err());
    }
}
