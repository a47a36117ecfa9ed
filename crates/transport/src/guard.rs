//! Host and Origin validation against DNS rebinding and cross-site requests, for every MCP route.

use std::sync::Arc;

use axum::{
    extract::{Request, State},
    http::{HeaderMap, StatusCode, Uri, header, uri::Authority},
    middleware::Next,
    response::Response,
};

use super::error::{body_too_large, json_error};

/// Which `Host` and `Origin` values the server accepts. Built from
/// [`HttpConfig`](super::HttpConfig)'s lists; entries that do not parse are ignored.
#[derive(Debug, Clone)]
pub struct HostPolicy {
    hosts: Vec<(String, Option<u16>)>,
    origins: Vec<AllowedOrigin>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum AllowedOrigin {
    Null,
    Tuple {
        scheme: String,
        host: String,
        /// `None` matches any port (`:*` or no port given).
        port: Option<u16>,
    },
}

impl HostPolicy {
    /// Loopback host names: the default `Host` allow-list.
    pub const LOOPBACK_HOSTS: [&'static str; 3] = ["localhost", "127.0.0.1", "::1"];
    /// Loopback origins on any port: the default `Origin` allow-list.
    pub const LOOPBACK_ORIGINS: [&'static str; 6] = [
        "http://localhost:*",
        "http://127.0.0.1:*",
        "http://[::1]:*",
        "https://localhost:*",
        "https://127.0.0.1:*",
        "https://[::1]:*",
    ];

    /// Parses the allow-lists. An empty host list accepts any host; an empty origin list accepts
    /// any origin.
    pub fn new(hosts: &[String], origins: &[String]) -> Self {
        Self {
            hosts: hosts
                .iter()
                .filter_map(|h| parse_authority(h.trim()))
                .collect(),
            origins: origins
                .iter()
                .filter_map(|o| parse_allowed_origin(o.trim()))
                .collect(),
        }
    }

    /// Whether a request with this `Host` authority may be served.
    pub fn host_allowed(&self, authority: &str) -> bool {
        if self.hosts.is_empty() {
            return true;
        }
        let Some((host, port)) = parse_authority(authority) else {
            return false;
        };
        self.hosts
            .iter()
            .any(|(h, p)| *h == host && p.is_none_or(|p| Some(p) == port))
    }

    /// Whether a request carrying this `Origin` value may be served.
    pub fn origin_allowed(&self, origin: &str) -> bool {
        if self.origins.is_empty() {
            return true;
        }
        let origin = origin.trim();
        if origin.eq_ignore_ascii_case("null") {
            return self.origins.contains(&AllowedOrigin::Null);
        }
        let Some((scheme, host, port)) = parse_origin(origin) else {
            return false;
        };
        let port = port.or(match scheme.as_str() {
            "http" => Some(80),
            "https" => Some(443),
            _ => None,
        });
        self.origins.iter().any(|allowed| match allowed {
            AllowedOrigin::Null => false,
            AllowedOrigin::Tuple {
                scheme: s,
                host: h,
                port: p,
            } => *s == scheme && *h == host && p.is_none_or(|p| Some(p) == port),
        })
    }
}

fn normalize_host(host: &str) -> String {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase()
}

fn parse_authority(value: &str) -> Option<(String, Option<u16>)> {
    if value.is_empty() {
        return None;
    }
    match Authority::try_from(value) {
        Ok(a) => Some((normalize_host(a.host()), a.port_u16())),
        // A bare IPv6 address such as `::1` is not an authority; accept it as a host name.
        Err(_) if value.contains(':') && !value.contains('/') => {
            Some((normalize_host(value), None))
        }
        Err(_) => None,
    }
}

fn parse_origin(value: &str) -> Option<(String, String, Option<u16>)> {
    let uri = Uri::try_from(value).ok()?;
    let scheme = uri.scheme_str()?.to_ascii_lowercase();
    let authority = uri.authority()?;
    Some((
        scheme,
        normalize_host(authority.host()),
        authority.port_u16(),
    ))
}

fn parse_allowed_origin(value: &str) -> Option<AllowedOrigin> {
    if value.eq_ignore_ascii_case("null") {
        return Some(AllowedOrigin::Null);
    }
    if let Some(base) = value.strip_suffix(":*") {
        let (scheme, host, port) = parse_origin(base)?;
        return port.is_none().then_some(AllowedOrigin::Tuple {
            scheme,
            host,
            port: None,
        });
    }
    let (scheme, host, port) = parse_origin(value)?;
    Some(AllowedOrigin::Tuple { scheme, host, port })
}

fn request_authority(uri: &Uri, headers: &HeaderMap) -> Option<String> {
    match headers.get(header::HOST) {
        Some(value) => value.to_str().ok().map(str::to_owned),
        None => uri.authority().map(|a| a.as_str().to_owned()),
    }
}

/// Refuses a request whose `Host` or `Origin` is not allowed with 403 and a JSON error.
pub(crate) async fn check_host_origin(
    State(policy): State<Arc<HostPolicy>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(authority) = request_authority(request.uri(), request.headers()) else {
        return json_error(
            StatusCode::BAD_REQUEST,
            "missing_host",
            "the request has no usable Host header",
        );
    };
    if !policy.host_allowed(&authority) {
        tracing::warn!(host = %authority, "refused a request with a disallowed Host");
        return json_error(
            StatusCode::FORBIDDEN,
            "host_not_allowed",
            format!("Host {authority:?} is not in this server's allow-list"),
        );
    }
    if let Some(origin) = request.headers().get(header::ORIGIN) {
        let allowed = origin.to_str().is_ok_and(|o| policy.origin_allowed(o));
        if !allowed {
            tracing::warn!(origin = ?origin, "refused a request with a disallowed Origin");
            return json_error(
                StatusCode::FORBIDDEN,
                "origin_not_allowed",
                format!("Origin {origin:?} is not in this server's allow-list"),
            );
        }
    }
    next.run(request).await
}

/// Refuses a request whose declared `Content-Length` exceeds the body limit with 413 and a JSON
/// error, before a byte of the body is read (bodies without the header are still capped while
/// they stream in).
pub(crate) async fn check_declared_length(
    State(max_body_bytes): State<usize>,
    request: Request,
    next: Next,
) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > max_body_bytes as u64) {
        return body_too_large(max_body_bytes);
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(hosts: &[&str], origins: &[&str]) -> HostPolicy {
        let hosts: Vec<String> = hosts.iter().map(|s| s.to_string()).collect();
        let origins: Vec<String> = origins.iter().map(|s| s.to_string()).collect();
        HostPolicy::new(&hosts, &origins)
    }

    #[test]
    fn loopback_default_hosts() {
        let p = policy(&HostPolicy::LOOPBACK_HOSTS, &[]);
        assert!(p.host_allowed("127.0.0.1:8080"));
        assert!(p.host_allowed("localhost"));
        assert!(p.host_allowed("LOCALHOST:1"));
        assert!(p.host_allowed("[::1]:9000"));
        assert!(!p.host_allowed("evil.example"));
        assert!(!p.host_allowed("127.0.0.1.evil.example:80"));
        assert!(!p.host_allowed(""));
        assert!(!p.host_allowed("a b"));
    }

    #[test]
    fn host_with_port_entry_matches_only_that_port() {
        let p = policy(&["infer.example:8443"], &[]);
        assert!(p.host_allowed("infer.example:8443"));
        assert!(!p.host_allowed("infer.example:80"));
        assert!(!p.host_allowed("infer.example"));
    }

    #[test]
    fn empty_lists_accept_everything() {
        let p = policy(&[], &[]);
        assert!(p.host_allowed("anything:1"));
        assert!(p.origin_allowed("https://evil.example"));
    }

    #[test]
    fn origins() {
        let p = policy(&[], &HostPolicy::LOOPBACK_ORIGINS);
        assert!(p.origin_allowed("http://localhost:3000"));
        assert!(p.origin_allowed("http://[::1]:3000"));
        assert!(p.origin_allowed("https://127.0.0.1"));
        assert!(!p.origin_allowed("https://evil.example"));
        assert!(!p.origin_allowed("null"));
        assert!(!p.origin_allowed("not a uri"));
        let p = policy(
            &[],
            &["https://app.example", "https://x.example:8443", "null"],
        );
        assert!(p.origin_allowed("https://app.example"));
        assert!(p.origin_allowed("https://app.example:9"));
        assert!(p.origin_allowed("https://x.example:8443"));
        assert!(!p.origin_allowed("https://x.example"));
        assert!(!p.origin_allowed("http://app.example"));
        assert!(p.origin_allowed("null"));
    }
}
