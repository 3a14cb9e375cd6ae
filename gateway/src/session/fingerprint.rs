//! [`Fingerprint`]: what an `execute` asked for, minus its id and session, so that a
//! repeated `execute` in a named session is answered from the session only when it is
//! the same request (a resend after a reconnect), never when another client reuses the
//! id with other code.

use sluice_protocol::ExecuteRequest;
use std::hash::{BuildHasher as _, Hasher};
use std::sync::LazyLock;

/// A keyed 64-bit hash of a request's language, code, stdin, env, args, limits,
/// encoding, `persistent`, `files`, `tty` and `term` (not the terminal's size). The key is random per gateway process, so a client cannot
/// search offline for another request with the same fingerprint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fingerprint(u64);

/// The per-process key.
static KEY: LazyLock<std::collections::hash_map::RandomState> =
    LazyLock::new(std::collections::hash_map::RandomState::new);

impl Fingerprint {
    pub(crate) fn of(request: &ExecuteRequest) -> Self {
        let ExecuteRequest {
            id: _,
            session: _,
            language,
            code,
            stdin,
            env,
            args,
            limits,
            encoding,
            persistent,
            files,
            tty,
            term,
            workspace,
            // A terminal's size changes with its window; the same program resent after a
            // reconnect may carry the new one.
            cols: _,
            rows: _,
            // How the client reads the events, not what runs.
            ack: _,
        } = request;
        let mut hasher = KEY.build_hasher();
        // Serialized as JSON so that every field is framed (lengths and quotes): two
        // different requests never feed the hasher the same bytes.
        let fields = (
            language, code, stdin, env, args, limits, encoding, persistent, files, tty, term,
            workspace,
        );
        let mut writer = HashWriter(&mut hasher);
        if serde_json::to_writer(&mut writer, &fields).is_err() {
            // Serializing plain strings and maps into a hasher cannot fail; if it ever
            // did, make the fingerprint match nothing else.
            hasher.write_u64(getrandom::u64().unwrap_or(u64::MAX));
        }
        Self(hasher.finish())
    }
}

/// Feeds what serde_json writes into a hasher, without building the JSON text.
struct HashWriter<'a, H: Hasher>(&'a mut H);

impl<H: Hasher> std::io::Write for HashWriter<'_, H> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(code: &str) -> ExecuteRequest {
        ExecuteRequest {
            id: "cell-1".into(),
            language: "python".into(),
            code: code.into(),
            ..ExecuteRequest::default()
        }
    }

    #[test]
    fn the_same_request_under_another_session_or_id_matches() {
        let mut again = request("print(1)");
        again.id = "other".into();
        again.session = Some("s".into());
        assert_eq!(
            Fingerprint::of(&request("print(1)")),
            Fingerprint::of(&again)
        );
    }

    #[test]
    fn any_other_field_differs() {
        let base = Fingerprint::of(&request("print(1)"));
        let mut variants = vec![request("print(2)")];
        let mut r = request("print(1)");
        r.language = "bash".into();
        variants.push(r);
        let mut r = request("print(1)");
        r.stdin = Some(String::new());
        variants.push(r);
        let mut r = request("print(1)");
        r.env.insert("A".into(), "1".into());
        variants.push(r);
        let mut r = request("print(1)");
        r.args.push("x".into());
        variants.push(r);
        let mut r = request("print(1)");
        r.limits.timeout_ms = Some(5);
        variants.push(r);
        let mut r = request("print(1)");
        r.encoding = sluice_protocol::Encoding::Base64;
        variants.push(r);
        let mut r = request("print(1)");
        r.persistent = true;
        variants.push(r);
        for variant in variants {
            assert_ne!(Fingerprint::of(&variant), base, "{variant:?}");
        }
    }
}
