//! Upstream endpoints: `http(s)://host[:port]` parsed, and resolved on the main thread or in
//! `shardgate-ctl`, or looked up in a config message's table (a shard never resolves a name).

use std::net::SocketAddr;

/// One upstream server address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub addr: SocketAddr,
    /// `host[:port]` as written, sent as `Host`.
    pub authority: String,
    /// `https://`: the name sent as SNI and verified against the certificate (the host part of
    /// `authority`). `None`: plain HTTP.
    pub tls_name: Option<String>,
}

impl Endpoint {
    /// The host part of its authority (`[::1]:443` → `::1`): `server.address` of a span.
    pub fn host(&self) -> &str {
        host_of(&self.authority)
    }

    /// `host:port` (the port added when the endpoint left it out): the name that was resolved,
    /// and the key of a config message's table of resolved addresses.
    pub fn resolve_key(&self) -> String {
        with_port(
            &self.authority,
            if self.tls_name.is_some() { 443 } else { 80 },
        )
    }
}

/// How endpoint names become addresses.
#[derive(Debug, Clone, Copy)]
pub(super) enum Resolver<'a> {
    /// The system resolver: at start-up (main thread) and in `shardgate-ctl`, never in a shard.
    System,
    /// The addresses ctl resolved, carried in the config message.
    Table(&'a std::collections::HashMap<String, SocketAddr>),
    /// No name looked up (an unspecified address with the endpoint's port): a config written
    /// elsewhere checked for everything but its names (`shardgate-ctl import`).
    Unresolved,
}

/// `host:port`, adding `:default_port` when `authority` names no port.
fn with_port(authority: &str, default_port: u16) -> String {
    if authority.rsplit_once(':').is_some_and(|(h, p)| {
        !h.is_empty() && !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && !h.ends_with(':')
    }) {
        authority.to_owned()
    } else {
        format!("{authority}:{default_port}")
    }
}

/// The host part of an authority (`[::1]:443` → `::1`, `api.example.com:8443` →
/// `api.example.com`), for SNI and certificate checks.
fn host_of(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match authority.rsplit_once(':') {
        Some((h, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => authority,
    }
}

/// `http://host[:port]` (an optional trailing `/`), resolved now (on the main thread or in ctl)
/// or looked up in a config message's table, so a shard never resolves a name.
pub(super) fn parse_endpoint(text: &str, resolver: Resolver<'_>) -> Result<Endpoint, String> {
    let (rest, tls) = match (text.strip_prefix("http://"), text.strip_prefix("https://")) {
        (Some(rest), _) => (rest, false),
        (_, Some(rest)) => (rest, true),
        _ => return Err(format!("{text:?}: must start with http:// or https://")),
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.is_empty() || authority.contains(['/', '?', '#', '@']) {
        return Err(format!(
            "{text:?}: must be http(s)://host[:port] with no path"
        ));
    }
    let tls_name = if tls {
        let host = host_of(authority);
        if rustls_pki_types::ServerName::try_from(host).is_err() {
            return Err(format!("{text:?}: {host:?} is not a valid TLS server name"));
        }
        Some(host.to_owned())
    } else {
        None
    };
    let with_port = with_port(authority, if tls { 443 } else { 80 });
    if let Resolver::Unresolved = resolver {
        let port = with_port
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .unwrap_or(0);
        return Ok(Endpoint {
            addr: SocketAddr::from(([0, 0, 0, 0], port)),
            authority: authority.to_owned(),
            tls_name,
        });
    }
    if let Resolver::Table(table) = resolver {
        let addr = table
            .get(&with_port)
            .copied()
            .ok_or_else(|| format!("{text:?}: not resolved by shardgate-ctl"))?;
        return Ok(Endpoint {
            addr,
            authority: authority.to_owned(),
            tls_name,
        });
    }
    #[allow(
        clippy::disallowed_methods,
        reason = "config loading runs before any shard starts"
    )]
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&with_port)
        .map_err(|e| format!("{text:?}: cannot resolve: {e}"))?
        .next()
        .ok_or_else(|| format!("{text:?}: resolves to no address"))?;
    Ok(Endpoint {
        addr,
        authority: authority.to_owned(),
        tls_name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoints_host_is_its_authority_without_the_port() {
        let host = |authority: &str| {
            Endpoint {
                addr: SocketAddr::from(([127, 0, 0, 1], 1)),
                authority: authority.to_owned(),
                tls_name: None,
            }
            .host()
            .to_owned()
        };
        assert_eq!(host("api.openai.com"), "api.openai.com");
        assert_eq!(host("127.0.0.1:8000"), "127.0.0.1");
        assert_eq!(host("[::1]:8000"), "::1");
    }
}
