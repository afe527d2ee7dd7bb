//! [`check_addr`]: what a node address is, in one place, for the server, its connections and
//! the tools that hand it addresses.

use std::net::Ipv6Addr;

/// Why a string is not a node address (see [`check_addr`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AddrError {
    /// There is no `:port` at the end.
    #[error("{0:?} is not host:port: it has no port")]
    NoPort(String),
    /// The port is not a number from 1 to 65535.
    #[error("{0:?} is not host:port: the port is not a number from 1 to 65535")]
    BadPort(String),
    /// The host is empty.
    #[error("{0:?} is not host:port: the host is empty")]
    NoHost(String),
    /// The host is neither a name or IPv4 address (letters, digits, `-`, `.`, `_`) nor an IPv6
    /// address in brackets.
    #[error(
        "{0:?} is not host:port: the host must be a name, an IPv4 address, or an IPv6 address in brackets"
    )]
    BadHost(String),
}

/// Checks that `addr` is a node address, `host:port`, and returns its host (an IPv6 address
/// without its brackets) and port.
///
/// The host is a DNS name or IPv4 address (ASCII letters, digits, `-`, `.` and `_`), or an IPv6
/// address in brackets (`[::1]:7000`); the port is from 1 to 65535. An address this accepts is
/// one a node can be asked to connect to: servers refuse a member address it refuses, and
/// connections are only made to addresses it accepts. Names are not resolved.
pub fn check_addr(addr: &str) -> Result<(&str, u16), AddrError> {
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| AddrError::NoPort(addr.to_string()))?;
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| AddrError::BadPort(addr.to_string()))?;
    if host.is_empty() {
        return Err(AddrError::NoHost(addr.to_string()));
    }
    let bad = || AddrError::BadHost(addr.to_string());
    if let Some(v6) = host.strip_prefix('[') {
        let v6 = v6.strip_suffix(']').ok_or_else(bad)?;
        v6.parse::<Ipv6Addr>().map_err(|_| bad())?;
        return Ok((v6, port));
    }
    let name_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_');
    if !host.chars().all(name_char) {
        return Err(bad());
    }
    Ok((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_addresses_are_host_and_port() {
        assert_eq!(check_addr("127.0.0.1:7000"), Ok(("127.0.0.1", 7000)));
        assert_eq!(check_addr("[::1]:7000"), Ok(("::1", 7000)));
        assert_eq!(check_addr("node-1:80"), Ok(("node-1", 80)));
        assert_eq!(
            check_addr("kv-0.kv.default.svc:16379"),
            Ok(("kv-0.kv.default.svc", 16379))
        );
        assert_eq!(check_addr("a_b:65535"), Ok(("a_b", 65535)));
    }

    #[test]
    fn what_is_not_an_address_is_refused_saying_why() {
        type Why = fn(String) -> AddrError;
        let refused: [(&str, Why); 13] = [
            ("nope", AddrError::NoPort),
            ("", AddrError::NoPort),
            ("h:port", AddrError::BadPort),
            ("h:", AddrError::BadPort),
            ("h:0", AddrError::BadPort),
            ("h:70000", AddrError::BadPort),
            ("h:-1", AddrError::BadPort),
            (":80", AddrError::NoHost),
            ("a b:80", AddrError::BadHost),
            ("::1:80", AddrError::BadHost),
            ("[::1:80", AddrError::BadHost),
            ("[nope]:80", AddrError::BadHost),
            ("user@h:80", AddrError::BadHost),
        ];
        for (addr, why) in refused {
            assert_eq!(check_addr(addr), Err(why(addr.to_string())), "{addr:?}");
        }
        assert!(
            check_addr("h:0")
                .unwrap_err()
                .to_string()
                .contains("from 1 to 65535")
        );
    }
}
