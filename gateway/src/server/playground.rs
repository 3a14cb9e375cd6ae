//! The playground page (issue 14): `GET /`, its script and its style sheet, served from
//! bytes built into the binary. The page's sources are in `playground/` at the top of
//! the repository; `npm run build` there (or `scripts/build-playground.sh`) writes the
//! three files into `gateway/assets/playground/`, where they are committed, so `cargo
//! build` needs no Node, and `playground/test.sh` checks that they match a fresh build.
//!
//! Every answer is `cache-control: no-cache` with an `ETag` (the asset's SHA-256), so
//! a browser revalidates and a new gateway's page is never mixed with an old script. The
//! page gets a content security policy that allows scripts from the gateway alone and
//! connections only to the gateway (its WebSocket and `GET /v1/runtimes`); inline
//! styles are allowed because xterm.js writes its theme and cell metrics into `<style>`
//! elements it makes at run time.
//!
//! [`is_own_origin`] is the other half: the page's socket carries the page's origin,
//! which is the gateway's own, and the origin check admits it without `--allow-origin`
//! when it names an IP address or `localhost`. A DNS name is left to `--allow-origin`:
//! a page on an attacker's name that resolves to the gateway (DNS rebinding) would
//! otherwise count as the gateway's own.

use crate::state::GatewayState;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use sha2::{Digest as _, Sha256};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, OnceLock};

/// Where the page loads its script from.
pub(super) const SCRIPT_PATH: &str = "/playground.js";
/// Where the page loads its style sheet from.
pub(super) const STYLE_PATH: &str = "/playground.css";

/// What the page may load and connect to: its own script and style sheet, and the
/// gateway (`'self'` covers `ws:` and `wss:` to the same host and port).
const CONTENT_SECURITY_POLICY: &str = concat!(
    "default-src 'none'; script-src 'self'; connect-src 'self'; ",
    "style-src 'self' 'unsafe-inline'; img-src 'self' data:; font-src 'self'; ",
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
);

/// One embedded file and its entity tag (computed once, on first use).
struct Asset {
    bytes: &'static [u8],
    content_type: &'static str,
    etag: OnceLock<HeaderValue>,
}

static INDEX: Asset = Asset {
    bytes: include_bytes!("../../assets/playground/index.html"),
    content_type: "text/html; charset=utf-8",
    etag: OnceLock::new(),
};
static SCRIPT: Asset = Asset {
    bytes: include_bytes!("../../assets/playground/playground.js"),
    content_type: "text/javascript; charset=utf-8",
    etag: OnceLock::new(),
};
static STYLE: Asset = Asset {
    bytes: include_bytes!("../../assets/playground/playground.css"),
    content_type: "text/css; charset=utf-8",
    etag: OnceLock::new(),
};

/// The playground's routes, merged into the main listener's router when the
/// configuration serves the page.
pub(super) fn routes() -> Router<Arc<GatewayState>> {
    Router::new()
        .route(
            "/",
            get(|headers: HeaderMap| async move { serve(&INDEX, &headers) }),
        )
        .route(
            SCRIPT_PATH,
            get(|headers: HeaderMap| async move { serve(&SCRIPT, &headers) }),
        )
        .route(
            STYLE_PATH,
            get(|headers: HeaderMap| async move { serve(&STYLE, &headers) }),
        )
}

fn serve(asset: &'static Asset, request: &HeaderMap) -> Response {
    let etag = asset.etag.get_or_init(|| {
        let digest = Sha256::digest(asset.bytes);
        let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        // Hex digits and quotes are always a valid header value.
        HeaderValue::from_str(&format!("\"{hex}\"")).unwrap_or(HeaderValue::from_static("\"\""))
    });
    let fresh = request
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|tag| {
            let tag = tag.trim();
            tag == "*" || tag.strip_prefix("W/").unwrap_or(tag).as_bytes() == etag.as_bytes()
        });
    let headers = [
        (
            header::CONTENT_TYPE,
            HeaderValue::from_static(asset.content_type),
        ),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (header::ETAG, etag.clone()),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
    ];
    if fresh {
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    (headers, asset.bytes).into_response()
}

/// True when `origin` (an `Origin` header) is the origin of the request's own `host`
/// (its `Host` header: same host, same port, a missing port being the scheme's) and
/// names an IP address or `localhost`: the origin of a page this gateway served.
pub(super) fn is_own_origin(origin: &str, host: Option<&str>) -> bool {
    let Some(host) = host else { return false };
    let Some((scheme, authority)) = origin.split_once("://") else {
        return false;
    };
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "http" => 80,
        "https" => 443,
        _ => return false,
    };
    let (Some(theirs), Some(ours)) = (split_authority(authority), split_authority(host)) else {
        return false;
    };
    let (origin_host, origin_port) = theirs;
    let (host_name, host_port) = ours;
    origin_host.eq_ignore_ascii_case(host_name)
        && origin_port.unwrap_or(default_port) == host_port.unwrap_or(default_port)
        && is_address_or_localhost(host_name)
}

/// `host[:port]` or `[v6][:port]`, split; `None` when it is neither.
fn split_authority(authority: &str) -> Option<(&str, Option<u16>)> {
    let (name, port) = if authority.starts_with('[') {
        let end = authority.find(']')?;
        let (name, rest) = authority.split_at(end + 1);
        match rest {
            "" => (name, None),
            _ => (name, Some(rest.strip_prefix(':')?)),
        }
    } else {
        match authority.split_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (authority, None),
        }
    };
    if name.is_empty() {
        return None;
    }
    let port = match port {
        Some(text) => Some(text.parse::<u16>().ok()?),
        None => None,
    };
    Some((name, port))
}

fn is_address_or_localhost(name: &str) -> bool {
    if name.eq_ignore_ascii_case("localhost") {
        return true;
    }
    if let Some(inner) = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
        return inner.parse::<Ipv6Addr>().is_ok();
    }
    name.parse::<Ipv4Addr>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::is_own_origin;

    #[test]
    fn the_gateways_own_address_is_its_own_origin() {
        for (origin, host) in [
            ("http://127.0.0.1:7878", "127.0.0.1:7878"),
            ("http://LOCALHOST:7878", "localhost:7878"),
            ("http://[::1]:9000", "[::1]:9000"),
            ("http://10.1.2.3", "10.1.2.3:80"),
            ("https://10.1.2.3", "10.1.2.3"),
        ] {
            assert!(is_own_origin(origin, Some(host)), "{origin} on {host}");
        }
    }

    #[test]
    fn another_origin_a_dns_name_or_nonsense_is_not() {
        for (origin, host) in [
            // Another page on the same machine.
            ("http://127.0.0.1:3000", "127.0.0.1:7878"),
            ("http://localhost:7878", "127.0.0.1:7878"),
            ("https://127.0.0.1:7878", "127.0.0.1:443"),
            // A name could be rebound to the gateway's address by its owner.
            ("http://evil.example:7878", "evil.example:7878"),
            ("null", "127.0.0.1:7878"),
            ("file://", "127.0.0.1:7878"),
            ("http://127.0.0.1:7878", "127.0.0.1:notaport"),
            ("http://[::1", "[::1"),
            ("http://:7878", ":7878"),
        ] {
            assert!(!is_own_origin(origin, Some(host)), "{origin} on {host}");
        }
        assert!(!is_own_origin("http://127.0.0.1:7878", None));
    }
}
