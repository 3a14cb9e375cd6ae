//! Where a credential travels in an upgrade request: an `Authorization: Bearer` header
//! (programs), a `sluice.token.<credential>` entry in the WebSocket subprotocol list
//! (browsers, which cannot set headers on a WebSocket), or a `token` query parameter
//! (last resort: URLs end up in proxy and server logs). The same credential may be
//! presented more than once; two different ones are refused.

use axum::http::{header, HeaderMap, Uri};

/// The subprotocol prefix that carries a credential.
pub const TOKEN_SUBPROTOCOL_PREFIX: &str = "sluice.token.";

/// What the request presented.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Presented {
    None,
    One(String),
    /// Two different credentials, or a malformed `Authorization` header.
    Confusing,
}

/// The credential an upgrade request presents.
pub(crate) fn presented(headers: &HeaderMap, uri: &Uri) -> Presented {
    let mut found: Option<String> = None;
    let mut confusing = false;
    let mut offer = |credential: Option<&str>| match (credential, &found) {
        (None | Some(""), _) => confusing = true,
        (Some(credential), Some(earlier)) if earlier != credential => confusing = true,
        (Some(_), Some(_)) => {}
        (Some(credential), None) => found = Some(credential.to_owned()),
    };
    for value in headers.get_all(header::AUTHORIZATION) {
        // Anything but `Bearer <credential>` is malformed.
        offer(
            value
                .to_str()
                .ok()
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim),
        );
    }
    for value in headers.get_all(header::SEC_WEBSOCKET_PROTOCOL) {
        let Ok(list) = value.to_str() else { continue };
        for protocol in list.split(',').map(str::trim) {
            if let Some(credential) = protocol.strip_prefix(TOKEN_SUBPROTOCOL_PREFIX) {
                offer(Some(credential));
            }
        }
    }
    for pair in uri.query().unwrap_or("").split('&') {
        if let Some(credential) = pair.strip_prefix("token=") {
            offer(Some(credential));
        }
    }
    match (confusing, found) {
        (true, _) => Presented::Confusing,
        (false, Some(credential)) => Presented::One(credential),
        (false, None) => Presented::None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn request(pairs: &[(&header::HeaderName, &str)], uri: &str) -> Presented {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(*name, HeaderValue::from_str(value).unwrap());
        }
        presented(&headers, &uri.parse().unwrap())
    }

    #[test]
    fn each_carrier_works_and_agreeing_ones_count_once() {
        let one = |s: &str| Presented::One(s.into());
        assert_eq!(request(&[], "/v1/ws"), Presented::None);
        assert_eq!(
            request(&[(&header::AUTHORIZATION, "Bearer abc")], "/v1/ws"),
            one("abc")
        );
        assert_eq!(
            request(
                &[(
                    &header::SEC_WEBSOCKET_PROTOCOL,
                    "sluice.v1, sluice.token.a.b-c_d"
                )],
                "/v1/ws"
            ),
            one("a.b-c_d")
        );
        assert_eq!(request(&[], "/v1/ws?x=1&token=q"), one("q"));
        assert_eq!(
            request(&[(&header::AUTHORIZATION, "Bearer q")], "/v1/ws?token=q"),
            one("q")
        );
    }

    #[test]
    fn two_different_credentials_or_a_bad_header_confuse() {
        assert_eq!(
            request(&[(&header::AUTHORIZATION, "Bearer a")], "/v1/ws?token=b"),
            Presented::Confusing
        );
        assert_eq!(
            request(&[(&header::AUTHORIZATION, "Basic dXNlcjpwdw==")], "/v1/ws"),
            Presented::Confusing
        );
        assert_eq!(request(&[], "/v1/ws?token="), Presented::Confusing);
    }
}
