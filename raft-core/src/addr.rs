//! Member addresses as endpoints: when two spellings name the same one.

/// Whether two member addresses name the same endpoint as far as can be told without asking
/// a resolver: the same port, as a number, and the same host: IP addresses by value (`[::1]`
/// is `[0:0::1]`, `[::ffff:10.0.0.1]` is `10.0.0.1`), host names ignoring case and one final
/// dot, as DNS does. Anything else (an IPv6 zone, say) matches only as the same text.
/// `localhost:7000` and `127.0.0.1:7000` are different addresses here.
///
/// [`Node::add_learner`](crate::Node::add_learner) refuses an address that is the same as
/// another member's by this rule; tools that check a list of member addresses before a
/// cluster starts can use it to apply the same rule.
pub fn same_address(a: &str, b: &str) -> bool {
    a == b || matches!((endpoint(a), endpoint(b)), (Some(x), Some(y)) if x == y)
}

/// A member address's host, for [`same_address`].
#[derive(PartialEq)]
enum Host {
    Ip(std::net::IpAddr),
    /// A DNS name, in lower case, without a final dot.
    Name(String),
}

/// `addr` ("host:port", "[v6]:port", or a host alone) as a host and a port; `None` for
/// anything [`same_address`] compares only as text.
fn endpoint(addr: &str) -> Option<(Host, Option<u16>)> {
    let (host, port) = match addr.strip_prefix('[') {
        Some(rest) => {
            let (host, after) = rest.split_once(']')?;
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':')?.parse().ok()?),
            };
            (host, port)
        }
        None => match addr.rsplit_once(':') {
            Some((host, p)) if !host.contains(':') => (host, Some(p.parse().ok()?)),
            // No port, or an IPv6 address without brackets.
            _ => (addr, None),
        },
    };
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Some((Host::Ip(ip.to_canonical()), port));
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    let is_name = !name.is_empty()
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'.' || c == b'_');
    is_name.then(|| (Host::Name(name.to_ascii_lowercase()), port))
}

#[cfg(test)]
mod tests {
    use super::same_address;

    #[test]
    fn member_addresses_compare_as_endpoints() {
        let same = [
            ("10.0.0.1:7000", "10.0.0.1:7000"),
            ("10.0.0.1:7000", "10.0.0.1:07000"),
            ("[::1]:7000", "[0:0::1]:7000"),
            ("[::ffff:10.0.0.1]:7000", "10.0.0.1:7000"),
            ("Node-1.example:7000", "node-1.EXAMPLE.:7000"),
            ("node-1", "NODE-1"),
            ("::1", "[::1]"),
            ("[fe80::1%eth0]:7000", "[fe80::1%eth0]:7000"),
        ];
        for (a, b) in same {
            assert!(same_address(a, b), "{a} and {b} are one endpoint");
            assert!(same_address(b, a), "{b} and {a} are one endpoint");
        }
        let different = [
            ("10.0.0.1:7000", "10.0.0.1:7001"),
            ("10.0.0.1:7000", "10.0.0.2:7000"),
            ("node-1:7000", "node-2:7000"),
            ("node-1:7000", "node-1"),
            ("[::1]:7000", "[::2]:7000"),
            // Interface names are case-sensitive.
            ("[fe80::1%eth0]:7000", "[fe80::1%ETH0]:7000"),
            ("node-1:x", "NODE-1:x"),
            // Telling these apart would need a resolver.
            ("localhost:7000", "127.0.0.1:7000"),
        ];
        for (a, b) in different {
            assert!(!same_address(a, b), "{a} and {b} differ");
            assert!(!same_address(b, a), "{b} and {a} differ");
        }
    }
}
