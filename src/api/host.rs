//! The Host check, which defeats DNS rebinding: a request must name this server by an
//! IP address, `localhost`, or a name it was given (`--public-url`), or it gets a 421.
//!
//! A web page on another site can make its own name resolve to 127.0.0.1 and then call
//! a loopback instance as if it were its own origin; the browser still sends the page's
//! name in `Host`, and that is what is refused here.

use super::error::ApiError;
use axum::body::Body;
use axum::http::Request;
use axum::http::header::HOST;
use axum::response::{IntoResponse, Response};
use std::net::IpAddr;
use std::sync::Arc;
use tower_http::validate_request::ValidateRequest;

/// The names, besides IP addresses and `localhost`, that requests may call this server
/// by: the hosts of `--public-url`, lowercase.
#[derive(Clone, Debug, Default)]
pub struct AllowedHosts(Arc<[String]>);

impl AllowedHosts {
    /// Requests may also name this server by `hosts` (as [`public_host`] gives them).
    pub fn new(hosts: &[String]) -> Self {
        Self(hosts.into())
    }

    /// Whether `host` (a `Host` header: a name or address, and maybe a port) names
    /// this server.
    fn allow(&self, host: &str) -> bool {
        let name = match host.strip_prefix('[') {
            // An IPv6 literal, `[::1]:8080`.
            Some(rest) => {
                return rest
                    .split(']')
                    .next()
                    .is_some_and(|ip| ip.parse::<IpAddr>().is_ok());
            }
            None => host.rsplit_once(':').map_or(host, |(name, _port)| name),
        };
        let name = name.trim_end_matches('.');
        name.parse::<IpAddr>().is_ok()
            || name.eq_ignore_ascii_case("localhost")
            || self
                .0
                .iter()
                .any(|allowed| allowed.eq_ignore_ascii_case(name))
    }
}

/// The host of a `--public-url`: a URL (`https://catalog.example.com`) or a bare name
/// (`catalog`, a compose service), lowercase.
pub fn public_host(url: &str) -> Result<String, String> {
    let host = match url::Url::parse(url) {
        Ok(parsed) => parsed.host_str().map(str::to_owned),
        Err(_) => Some(url.trim().to_owned()),
    };
    host.filter(|host| !host.is_empty() && !host.contains(['/', ':', '@']))
        .map(|host| host.trim_end_matches('.').to_ascii_lowercase())
        .ok_or_else(|| {
            format!("{url:?} names no host: give a URL such as https://catalog.example.com, or a name such as catalog")
        })
}

/// Answers 421 to a request whose `Host` does not name this server (a tower-http
/// request validator: checked in line, before any handler).
impl<B> ValidateRequest<B> for AllowedHosts {
    type ResponseBody = Body;

    fn validate(&mut self, request: &mut Request<B>) -> Result<(), Response> {
        let host = request
            .headers()
            .get(HOST)
            .and_then(|value| value.to_str().ok())
            .or_else(|| request.uri().host());
        match host {
            Some(host) if self.allow(host) => Ok(()),
            _ => Err(ApiError::MisdirectedRequest(format!(
                "this server does not answer to the name {:?}: call it by an IP address \
                 or localhost, or start it with --public-url naming the host clients use",
                host.unwrap_or("")
            ))
            .into_response()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_localhost_and_the_public_names_are_allowed_and_nothing_else() {
        let hosts =
            ["https://Catalog.Example.com/", "backend"].map(|url| public_host(url).unwrap());
        let allowed = AllowedHosts::new(&hosts);
        for host in [
            "127.0.0.1",
            "127.0.0.1:8080",
            "10.1.2.3:3000",
            "[::1]:8080",
            "[::1]",
            "localhost",
            "LOCALHOST:3000",
            "catalog.example.com",
            "catalog.example.com.:443",
            "backend:3000",
        ] {
            assert!(allowed.allow(host), "{host}");
        }
        for host in [
            "rebind.attacker.example",
            "rebind.attacker.example:8080",
            "localhost.attacker.example",
            "127.0.0.1.nip.io",
            "[evil]",
            "",
            "example.com",
        ] {
            assert!(!allowed.allow(host), "{host}");
        }
    }

    #[test]
    fn a_public_url_without_a_host_is_refused_with_what_to_give() {
        for url in ["https://", "", "catalog:3000", "http://user@"] {
            let error = public_host(url).unwrap_err();
            assert!(error.contains("give a URL"), "{url}: {error}");
        }
    }
}
