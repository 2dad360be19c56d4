//! Which client a request came from, when reverse proxies stand in front of the coordinator.
//!
//! The TCP peer is the client, unless the peer is one of `TRUSTED_PROXIES`. Then the client
//! is read from the one header the proxies are configured to write (`FORWARDED_HEADER`):
//!
//! - `x-forwarded-for` (default): `X-Forwarded-For: <client>, <proxy 1>, …`, each entry an
//!   IP address (IPv6 optionally in brackets, either optionally with a port);
//! - `forwarded`: RFC 7239, `Forwarded: for=<client>;proto=https, for="[2001:db8::1]:4711"`;
//! - `x-real-ip`: a single address the proxy overwrites.
//!
//! Each proxy appends the address it received the request from, so the list is read from
//! the right: entries naming trusted proxies are skipped, and the first other address is the
//! client. Everything to its left came from the client and is ignored, garbage included.
//! Parsing is strict: an entry that is not an address (garbage, `unknown`, an obfuscated
//! identifier) where the walk needs one ends it, and the request is accounted to the nearest
//! trusted hop, the last address the walk could believe. A header the client could have
//! written is never a fallback: the other headers are not read at all, and `X-Real-IP` only
//! in `x-real-ip` mode from a trusted peer.
//!
//! What this module must never do: let a client that is not a trusted proxy choose the
//! address it is accounted to.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use axum::http::HeaderMap;
use ipnet::IpNet;

use crate::connections::canonical;

/// The header trusted proxies write the client's address to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ForwardedHeader {
    /// `X-Forwarded-For`, appended to by each proxy.
    #[value(name = "x-forwarded-for")]
    XForwardedFor,
    /// `Forwarded` (RFC 7239), appended to by each proxy.
    Forwarded,
    /// `X-Real-IP`, set (overwritten) by the one proxy in front.
    #[value(name = "x-real-ip")]
    XRealIp,
}

/// One hop of a forwarding chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hop {
    Address(IpAddr),
    /// Not an address: garbage, `unknown`, an obfuscated node, a `Forwarded` element
    /// without `for=`.
    Unusable,
}

/// Who is trusted to say where a request came from, and in which header.
#[derive(Clone, Debug)]
pub struct ClientAddress {
    trusted: Vec<IpNet>,
    header: ForwardedHeader,
}

impl ClientAddress {
    pub fn new(trusted: Vec<IpNet>, header: ForwardedHeader) -> Self {
        Self { trusted, header }
    }

    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.trusted.iter().any(|net| net.contains(&ip))
    }

    /// The address to account a request from `peer` to (see the module doc).
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = canonical(peer);
        if !self.is_trusted(peer) {
            return peer;
        }
        let hops = match self.header {
            ForwardedHeader::XForwardedFor => header_hops(headers, "x-forwarded-for", |line| {
                line.split(',').map(parse_xff_entry).collect()
            }),
            ForwardedHeader::Forwarded => header_hops(headers, "forwarded", parse_forwarded),
            ForwardedHeader::XRealIp => {
                let mut values = headers.get_all("x-real-ip").iter();
                match (values.next(), values.next()) {
                    (Some(value), None) => vec![
                        value
                            .to_str()
                            .ok()
                            .and_then(|text| parse_node(text.trim()))
                            .map_or(Hop::Unusable, Hop::Address),
                    ],
                    // Absent, or set twice: nothing a proxy that overwrites it would send.
                    (None, _) => Vec::new(),
                    (Some(_), Some(_)) => vec![Hop::Unusable],
                }
            }
        };
        let mut nearest = peer;
        for hop in hops.iter().rev() {
            match *hop {
                Hop::Address(ip) if self.is_trusted(ip) => nearest = ip,
                Hop::Address(ip) => return ip,
                Hop::Unusable => return nearest,
            }
        }
        nearest
    }
}

/// Every line of header `name`, in order, as one list of hops. A line that is not visible
/// ASCII is one unusable hop.
fn header_hops(headers: &HeaderMap, name: &str, parse: impl Fn(&str) -> Vec<Hop>) -> Vec<Hop> {
    headers
        .get_all(name)
        .iter()
        .flat_map(|value| match value.to_str() {
            Ok(line) => parse(line),
            Err(_) => vec![Hop::Unusable],
        })
        .collect()
}

/// One `X-Forwarded-For` entry: an address, `[v6]`, `v4:port` or `[v6]:port`.
fn parse_xff_entry(entry: &str) -> Hop {
    parse_node(entry.trim_matches([' ', '\t'])).map_or(Hop::Unusable, Hop::Address)
}

/// An address with an optional port: `192.0.2.1`, `192.0.2.1:80`, `2001:db8::1`,
/// `[2001:db8::1]`, `[2001:db8::1]:80`. Ports must be decimal (RFC 7239 obfuscated ports
/// `_abc` are accepted: the address is what matters).
fn parse_node(text: &str) -> Option<IpAddr> {
    let port_ok = |port: &str| {
        (port.bytes().all(|b| b.is_ascii_digit()) && port.parse::<u16>().is_ok())
            || (port.starts_with('_')
                && port.len() > 1
                && port[1..]
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-'))
    };
    if let Some(rest) = text.strip_prefix('[') {
        let (address, after) = rest.split_once(']')?;
        let ip: Ipv6Addr = address.parse().ok()?;
        return match after {
            "" => Some(IpAddr::V6(ip)),
            _ => after
                .strip_prefix(':')
                .filter(|port| port_ok(port))
                .map(|_| IpAddr::V6(ip)),
        };
    }
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(ip);
    }
    let (address, port) = text.rsplit_once(':')?;
    let ip: Ipv4Addr = address.parse().ok()?;
    port_ok(port).then_some(IpAddr::V4(ip))
}

/// A `Forwarded` line (RFC 7239 section 4): comma-separated elements of `;`-separated
/// `name=value` pairs, values tokens or quoted strings. Each element is one hop: its `for=`
/// node, or unusable when it has none, has two, or does not parse.
fn parse_forwarded(line: &str) -> Vec<Hop> {
    split_outside_quotes(line, ',')
        .into_iter()
        .map(|element| match element {
            Some(element) => forwarded_element(element),
            None => Hop::Unusable,
        })
        .collect()
}

fn forwarded_element(element: &str) -> Hop {
    let mut node = None;
    for pair in split_outside_quotes(element, ';') {
        let Some(pair) = pair else {
            return Hop::Unusable;
        };
        let pair = pair.trim_matches([' ', '\t']);
        if pair.is_empty() {
            continue;
        }
        let Some((name, value)) = pair.split_once('=') else {
            return Hop::Unusable;
        };
        if name.is_empty() || !name.bytes().all(is_token_byte) {
            return Hop::Unusable;
        }
        let Some(value) = forwarded_value(value) else {
            return Hop::Unusable;
        };
        if name.eq_ignore_ascii_case("for") {
            if node.is_some() {
                return Hop::Unusable;
            }
            node = Some(value);
        }
    }
    node.and_then(|node| parse_node(&node))
        .map_or(Hop::Unusable, Hop::Address)
}

/// A token, or a quoted string with its `\` escapes resolved.
fn forwarded_value(value: &str) -> Option<String> {
    if let Some(quoted) = value.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = quoted.chars();
        loop {
            match chars.next()? {
                '\\' => out.push(chars.next()?),
                '"' => return chars.next().is_none().then_some(out),
                c if c == '\t' || (' '..='~').contains(&c) => out.push(c),
                _ => return None,
            }
        }
    }
    (!value.is_empty() && value.bytes().all(is_token_byte)).then(|| value.to_owned())
}

/// RFC 7230 `tchar`.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Splits at `separator` outside quoted strings. An unterminated quote makes the last part
/// `None`.
fn split_outside_quotes(text: &str, separator: char) -> Vec<Option<&str>> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (index, c) in text.char_indices() {
        if escaped {
            escaped = false;
        } else if quoted && c == '\\' {
            escaped = true;
        } else if c == '"' {
            quoted = !quoted;
        } else if c == separator && !quoted {
            parts.push(Some(&text[start..index]));
            start = index + c.len_utf8();
        }
    }
    parts.push((!quoted).then_some(&text[start..]));
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, value.parse().unwrap());
        }
        map
    }

    fn behind(header: ForwardedHeader) -> ClientAddress {
        ClientAddress::new(
            vec![
                "127.0.0.0/8".parse().unwrap(),
                "10.0.0.0/8".parse().unwrap(),
            ],
            header,
        )
    }

    const PEER: &str = "127.0.0.1";

    fn xff(values: &[&str]) -> IpAddr {
        let pairs: Vec<(&'static str, &str)> =
            values.iter().map(|v| ("x-forwarded-for", *v)).collect();
        behind(ForwardedHeader::XForwardedFor).client_ip(ip(PEER), &headers(&pairs))
    }

    fn forwarded(values: &[&str]) -> IpAddr {
        let pairs: Vec<(&'static str, &str)> = values.iter().map(|v| ("forwarded", *v)).collect();
        behind(ForwardedHeader::Forwarded).client_ip(ip(PEER), &headers(&pairs))
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_sends() {
        let direct = ClientAddress::new(vec![], ForwardedHeader::XForwardedFor);
        let sent = headers(&[
            ("x-forwarded-for", "203.0.113.9"),
            ("forwarded", "for=203.0.113.9"),
            ("x-real-ip", "203.0.113.9"),
        ]);
        assert_eq!(direct.client_ip(ip("192.0.2.1"), &sent), ip("192.0.2.1"));
        // IPv4-mapped peers are the IPv4 address.
        assert_eq!(
            direct.client_ip(ip("::ffff:192.0.2.1"), &sent),
            ip("192.0.2.1")
        );
    }

    #[test]
    fn x_forwarded_for_is_read_from_the_right() {
        assert_eq!(xff(&["203.0.113.9"]), ip("203.0.113.9"));
        // What the client claimed before its real address is ignored.
        assert_eq!(xff(&["198.51.100.1, 203.0.113.9"]), ip("203.0.113.9"));
        // Trusted hops are skipped, across header lines too.
        assert_eq!(
            xff(&["198.51.100.1, 203.0.113.9, 10.1.1.1", "127.0.0.2"]),
            ip("203.0.113.9")
        );
        // Ports and brackets.
        assert_eq!(xff(&["203.0.113.9:5555"]), ip("203.0.113.9"));
        assert_eq!(xff(&["[2001:db8::7]:443"]), ip("2001:db8::7"));
        assert_eq!(xff(&["2001:db8::7"]), ip("2001:db8::7"));
        // No header: the proxy itself.
        assert_eq!(xff(&[]), ip(PEER));
    }

    #[test]
    fn garbage_left_of_the_client_is_ignored_and_right_of_it_stops_the_walk() {
        // The finding: one unparsable entry used to throw the whole header away.
        assert_eq!(xff(&["not-an-ip, 203.0.113.9"]), ip("203.0.113.9"));
        assert_eq!(xff(&["<script>, , 203.0.113.9"]), ip("203.0.113.9"));
        // Garbage where a trusted proxy should have written: the nearest trusted hop.
        assert_eq!(xff(&["203.0.113.9, garbage"]), ip(PEER));
        assert_eq!(xff(&["203.0.113.9, bogus, 10.9.9.9"]), ip("10.9.9.9"));
        assert_eq!(xff(&["203.0.113.9,"]), ip(PEER));
        assert_eq!(xff(&["1.2.3.4:99999"]), ip(PEER));
        assert_eq!(xff(&["[2001:db8::7"]), ip(PEER));
        // Only trusted hops: the left-most of them.
        assert_eq!(xff(&["10.0.0.5, 127.0.0.9"]), ip("10.0.0.5"));
    }

    #[test]
    fn other_headers_are_never_a_fallback() {
        let trusted = behind(ForwardedHeader::XForwardedFor);
        let spoofed = headers(&[
            ("x-forwarded-for", "garbage"),
            ("x-real-ip", "192.0.2.77"),
            ("forwarded", "for=192.0.2.78"),
        ]);
        assert_eq!(trusted.client_ip(ip(PEER), &spoofed), ip(PEER));
        let only_real_ip = headers(&[("x-real-ip", "192.0.2.77")]);
        assert_eq!(trusted.client_ip(ip(PEER), &only_real_ip), ip(PEER));
        // In x-forwarded-for mode a client's own Forwarded header means nothing.
        let mixed = headers(&[
            ("forwarded", "for=192.0.2.78"),
            ("x-forwarded-for", "203.0.113.9"),
        ]);
        assert_eq!(trusted.client_ip(ip(PEER), &mixed), ip("203.0.113.9"));
    }

    #[test]
    fn x_real_ip_only_in_its_mode_and_only_from_a_trusted_peer() {
        let mode = behind(ForwardedHeader::XRealIp);
        let sent = headers(&[("x-real-ip", " 192.0.2.77 ")]);
        assert_eq!(mode.client_ip(ip(PEER), &sent), ip("192.0.2.77"));
        assert_eq!(mode.client_ip(ip("192.0.2.1"), &sent), ip("192.0.2.1"));
        let garbage = headers(&[("x-real-ip", "nope")]);
        assert_eq!(mode.client_ip(ip(PEER), &garbage), ip(PEER));
        let twice = headers(&[("x-real-ip", "192.0.2.77"), ("x-real-ip", "192.0.2.78")]);
        assert_eq!(mode.client_ip(ip(PEER), &twice), ip(PEER));
        let xff_only = headers(&[("x-forwarded-for", "192.0.2.79")]);
        assert_eq!(mode.client_ip(ip(PEER), &xff_only), ip(PEER));
    }

    #[test]
    fn forwarded_follows_rfc_7239() {
        assert_eq!(forwarded(&["for=192.0.2.60"]), ip("192.0.2.60"));
        assert_eq!(
            forwarded(&["for=192.0.2.60;proto=http;by=203.0.113.43"]),
            ip("192.0.2.60")
        );
        assert_eq!(
            forwarded(&["For=\"[2001:db8:cafe::17]:4711\""]),
            ip("2001:db8:cafe::17")
        );
        assert_eq!(
            forwarded(&["for=198.51.100.1, for=192.0.2.43, for=10.0.0.1"]),
            ip("192.0.2.43")
        );
        assert_eq!(
            forwarded(&["for=198.51.100.1", "for=192.0.2.43;host=\"a,b;c\""]),
            ip("192.0.2.43")
        );
        assert_eq!(forwarded(&["for=\"192.0.2.43:_hidden\""]), ip("192.0.2.43"));
        // Spoofed elements left of the client are ignored, garbage included.
        assert_eq!(
            forwarded(&["for=\"unterminated, for=bad value, for=192.0.2.43"]),
            ip(PEER),
            "an unterminated quote swallows the rest of the line"
        );
        assert_eq!(
            forwarded(&["garbage;;==, for=192.0.2.43"]),
            ip("192.0.2.43")
        );
        // Unusable hops where a trusted proxy wrote: the nearest trusted hop.
        assert_eq!(forwarded(&["for=192.0.2.43, for=unknown"]), ip(PEER));
        assert_eq!(forwarded(&["for=192.0.2.43, for=_proxy7"]), ip(PEER));
        assert_eq!(forwarded(&["for=192.0.2.43, proto=https"]), ip(PEER));
        assert_eq!(
            forwarded(&["for=192.0.2.43, for=10.0.0.1;for=10.0.0.2"]),
            ip(PEER)
        );
        assert_eq!(
            forwarded(&["for=2001:db8::1"]),
            ip(PEER),
            "IPv6 must be quoted"
        );
        assert_eq!(forwarded(&["for=192.0.2.43, for=10.2.2.2, x"]), ip(PEER));
        assert_eq!(forwarded(&["for=nope, for=10.2.2.2"]), ip("10.2.2.2"));
    }

    #[test]
    fn a_non_ascii_header_line_is_one_unusable_hop() {
        let trusted = behind(ForwardedHeader::XForwardedFor);
        let mut sent = HeaderMap::new();
        sent.append(
            "x-forwarded-for",
            axum::http::HeaderValue::from_bytes(b"203.0.113.9, \xff").unwrap(),
        );
        assert_eq!(trusted.client_ip(ip(PEER), &sent), ip(PEER));
        sent.append("x-forwarded-for", "198.51.100.3".parse().unwrap());
        assert_eq!(trusted.client_ip(ip(PEER), &sent), ip("198.51.100.3"));
    }
}
