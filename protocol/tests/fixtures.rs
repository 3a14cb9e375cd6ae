//! Checks the shared JSON fixtures in `protocol/fixtures/` against this crate.
//!
//! The fixtures are the contract the Python and TypeScript clients are tested against too,
//! so every file must behave here exactly as its directory and name say.
//! See `protocol/fixtures/README.md` for the layout and the naming rule.

use sluice_protocol::{ClientFrame, Encoding, ErrorCode, Event};
use std::fs;
use std::path::{Path, PathBuf};

/// A fixture's file name and its raw text, exactly as stored.
struct Fixture {
    name: String,
    text: String,
}

fn fixture_dir(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(rel)
}

/// Every fixture file in `rel` (sorted by name), after checking that the directory is not
/// empty and that each file has a known extension and matches it: `.json` files parse as
/// JSON, `.txt` files do not.
fn load(rel: &str) -> Vec<Fixture> {
    let dir = fixture_dir(rel);
    let entries = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read fixture directory {}: {e}", dir.display()));
    let mut fixtures = Vec::new();
    for entry in entries {
        let path = entry
            .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
            .path();
        assert!(
            path.is_file(),
            "{}: fixture directories hold only files",
            path.display()
        );
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_else(|| panic!("{}: file name is not UTF-8", path.display()))
            .to_owned();
        let text = fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let parses = serde_json::from_str::<serde_json::Value>(&text).is_ok();
        if name.ends_with(".json") {
            assert!(
                parses,
                "{rel}/{name}: a .json fixture must be valid JSON (use .txt otherwise)"
            );
        } else if name.ends_with(".txt") {
            assert!(
                !parses,
                "{rel}/{name}: a .txt fixture must not be valid JSON (use .json)"
            );
        } else {
            panic!("{rel}/{name}: fixture files end in .json or .txt");
        }
        fixtures.push(Fixture { name, text });
    }
    assert!(
        !fixtures.is_empty(),
        "fixture directory {} is empty",
        dir.display()
    );
    fixtures.sort_by(|a, b| a.name.cmp(&b.name));
    fixtures
}

/// The fixture called `name` in `rel`.
fn find<'a>(fixtures: &'a [Fixture], rel: &str, name: &str) -> &'a Fixture {
    fixtures
        .iter()
        .find(|f| f.name == name)
        .unwrap_or_else(|| panic!("fixture {rel}/{name} is missing"))
}

fn decode_frame(rel: &str, fixture: &Fixture) -> ClientFrame {
    ClientFrame::decode(&fixture.text)
        .unwrap_or_else(|e| panic!("{rel}/{}: should decode, got {e}", fixture.name))
}

#[test]
fn valid_client_frames_decode_and_round_trip() {
    let rel = "client/valid";
    let fixtures = load(rel);
    for fixture in &fixtures {
        let frame = decode_frame(rel, fixture);
        let again = ClientFrame::decode(&frame.to_json()).unwrap_or_else(|e| {
            panic!(
                "{rel}/{}: re-encoded frame should decode, got {e}",
                fixture.name
            )
        });
        assert_eq!(
            again, frame,
            "{rel}/{}: re-encoding changed the frame",
            fixture.name
        );
    }

    // The fixtures the README promises must exist and say what their names claim.
    let full = decode_frame(rel, find(&fixtures, rel, "execute-full.json"));
    let ClientFrame::Execute(full) = full else {
        panic!("execute-full.json is not an execute")
    };
    assert!(full.session.is_some(), "execute-full.json: no session");
    assert!(full.stdin.is_some(), "execute-full.json: no stdin");
    assert!(!full.env.is_empty(), "execute-full.json: no env");
    assert!(!full.args.is_empty(), "execute-full.json: no args");
    assert!(
        full.limits.timeout_ms.is_some(),
        "execute-full.json: no limits.timeout_ms"
    );
    assert!(
        full.limits.output_bytes.is_some(),
        "execute-full.json: no limits.output_bytes"
    );
    assert_eq!(
        full.encoding,
        Encoding::Base64,
        "execute-full.json: encoding"
    );

    let minimal = decode_frame(rel, find(&fixtures, rel, "execute-minimal.json"));
    let ClientFrame::Execute(minimal) = minimal else {
        panic!("execute-minimal.json")
    };
    assert_eq!(
        minimal.encoding,
        Encoding::Utf8,
        "execute-minimal.json: default encoding"
    );
    assert!(
        minimal.limits.is_empty(),
        "execute-minimal.json: default limits"
    );

    for (name, data, eof) in [
        ("stdin-data.json", true, false),
        ("stdin-eof.json", false, true),
        ("stdin-data-eof.json", true, true),
    ] {
        match decode_frame(rel, find(&fixtures, rel, name)) {
            ClientFrame::Stdin(s) => {
                assert_eq!(s.data.is_some(), data, "{name}: data");
                assert_eq!(s.eof, eof, "{name}: eof");
            }
            other => panic!("{name}: expected a stdin frame, got {other:?}"),
        }
    }
    assert!(
        matches!(
            decode_frame(rel, find(&fixtures, rel, "cancel.json")),
            ClientFrame::Cancel(_)
        ),
        "cancel.json: expected a cancel frame"
    );
    // The unknown-field fixtures must really carry fields this crate does not know.
    let unknown_key = |name: &str, pointer: &str, known: &[&str]| {
        let value: serde_json::Value = serde_json::from_str(&find(&fixtures, rel, name).text)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let object = value
            .pointer(pointer)
            .and_then(serde_json::Value::as_object)
            .unwrap_or_else(|| panic!("{name}: no object at {pointer:?}"));
        assert!(
            object.keys().any(|k| !known.contains(&k.as_str())),
            "{name}: no unknown field at {pointer:?}"
        );
    };
    let execute_fields = [
        "type", "id", "language", "code", "session", "stdin", "env", "args", "limits", "encoding",
    ];
    unknown_key("execute-unknown-fields.json", "", &execute_fields);
    unknown_key(
        "execute-limits-unknown-field.json",
        "/limits",
        &["timeout_ms", "output_bytes"],
    );
}

#[test]
fn invalid_client_frames_fail_with_the_named_code() {
    let rel = "client/invalid";
    for fixture in load(rel) {
        let (prefix, rest) = fixture.name.split_once("--").unwrap_or_else(|| {
            panic!(
                "{rel}/{}: name must be <error_code>--<name>.<ext>",
                fixture.name
            )
        });
        assert!(
            !rest.starts_with('.'),
            "{rel}/{}: the part after -- is empty",
            fixture.name
        );
        let expected: ErrorCode =
            serde_json::from_value(serde_json::Value::String(prefix.to_owned()))
                .unwrap_or_else(|e| panic!("{rel}/{}: bad code prefix: {e}", fixture.name));
        assert_eq!(
            expected.as_str(),
            prefix,
            "{rel}/{}: {prefix:?} is not an error code of this protocol version",
            fixture.name
        );
        match ClientFrame::decode(&fixture.text) {
            Ok(frame) => panic!("{rel}/{}: should fail, decoded as {frame:?}", fixture.name),
            Err(err) => {
                assert_eq!(
                    err.code, expected,
                    "{rel}/{}: wrong code ({err})",
                    fixture.name
                );
                assert!(
                    !err.message.is_empty(),
                    "{rel}/{}: empty message",
                    fixture.name
                );
            }
        }
    }
}

#[test]
fn valid_events_decode_and_round_trip() {
    let rel = "events/valid";
    for fixture in load(rel) {
        let event = Event::decode(&fixture.text)
            .unwrap_or_else(|e| panic!("{rel}/{}: should decode, got {e}", fixture.name));
        let json = event.to_json();
        let again = Event::decode(&json).unwrap_or_else(|e| {
            panic!(
                "{rel}/{}: re-encoded event {json} should decode, got {e}",
                fixture.name
            )
        });
        assert_eq!(
            again, event,
            "{rel}/{}: re-encoding changed the event: {json}",
            fixture.name
        );
    }
}

#[test]
fn invalid_events_fail() {
    let rel = "events/invalid";
    for fixture in load(rel) {
        if let Ok(event) = Event::decode(&fixture.text) {
            panic!("{rel}/{}: should fail, decoded as {event:?}", fixture.name);
        }
    }
}
