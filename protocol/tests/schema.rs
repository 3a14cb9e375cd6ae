//! Checks the committed JSON Schema in `protocol/schema/` against the one generated from
//! the wire types (feature `schema`, enabled for this crate's tests through its
//! dev-dependency on itself), and the fixtures in `protocol/fixtures/` against it:
//! every valid fixture must validate, every invalid one must fail, except the few
//! whose rule a JSON Schema cannot state (listed below with the reason).

use serde_json::Value;
use sluice_protocol::schema;
use std::fs;
use std::path::{Path, PathBuf};

const REGENERATE: &str = "cargo run -p sluice-protocol --features schema --example write-schema";

/// Invalid fixtures the schema accepts, because the rule they break is not one a JSON
/// Schema can state; the decoders still refuse them (`tests/fixtures.rs`).
const BEYOND_THE_SCHEMA: &[(&str, &str)] = &[
    (
        "client/invalid/bad_request--id-too-long-multibyte.json",
        "130 bytes in 65 characters: maxLength counts characters, the protocol bytes",
    ),
    (
        "events/invalid/gap-sequence-not-before-resume.json",
        "sequence must be resume_from - 1: a relation between two fields",
    ),
];

fn protocol_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The `.json` fixtures of `rel`, by path relative to `fixtures/`, parsed. (`.txt`
/// fixtures are not JSON, so no schema applies to them; `tests/fixtures.rs` checks them.)
fn json_fixtures(rel: &str) -> Vec<(String, Value)> {
    let dir = protocol_dir().join("fixtures").join(rel);
    let mut out = Vec::new();
    let entries =
        fs::read_dir(&dir).unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()));
    for entry in entries {
        let path = entry
            .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
            .path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            panic!("{}: file name is not UTF-8", path.display());
        };
        if !name.ends_with(".json") {
            continue;
        }
        let text = fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{}: not JSON: {e}", path.display()));
        out.push((format!("{rel}/{name}"), value));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(!out.is_empty(), "{rel}: no .json fixtures");
    out
}

fn validator(schema: &Value) -> jsonschema::Validator {
    jsonschema::validator_for(schema)
        .unwrap_or_else(|e| panic!("the generated schema is not a valid JSON Schema: {e}"))
}

fn errors(validator: &jsonschema::Validator, value: &Value) -> Vec<String> {
    validator
        .iter_errors(value)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

fn check_valid(schema: &Value, rel: &str) {
    let validator = validator(schema);
    for (name, value) in json_fixtures(rel) {
        let errors = errors(&validator, &value);
        assert!(
            errors.is_empty(),
            "{name} is a valid fixture but the schema refuses it: {errors:#?}"
        );
    }
}

fn check_invalid(schema: &Value, rel: &str) {
    let validator = validator(schema);
    for (name, value) in json_fixtures(rel) {
        let beyond = BEYOND_THE_SCHEMA.iter().any(|(n, _)| *n == name);
        let valid = validator.is_valid(&value);
        if beyond {
            assert!(
                valid,
                "{name} is listed as beyond the schema, but the schema refuses it: \
                 take it off BEYOND_THE_SCHEMA"
            );
        } else {
            assert!(
                !valid,
                "{name} is an invalid fixture but the schema accepts it; state its rule in \
                 protocol/src/schema.rs, or list it in BEYOND_THE_SCHEMA with the reason"
            );
        }
    }
}

#[test]
fn committed_schema_is_the_generated_one() {
    let dir = protocol_dir().join("schema");
    for (name, generated) in schema::files() {
        let path = dir.join(name);
        let committed = fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == generated,
            "{} differs from the schema generated from the wire types; regenerate it with\n\n    {REGENERATE}\n\nand commit the result",
            Path::new("protocol/schema").join(name).display()
        );
    }
}

#[test]
fn valid_client_frames_validate() {
    check_valid(&schema::client_frame(), "client/valid");
}

#[test]
fn invalid_client_frames_are_refused() {
    check_invalid(&schema::client_frame(), "client/invalid");
}

#[test]
fn valid_events_validate() {
    check_valid(&schema::event(), "events/valid");
}

#[test]
fn invalid_events_are_refused() {
    check_invalid(&schema::event(), "events/invalid");
}

#[test]
fn every_exception_names_a_fixture() {
    for (name, reason) in BEYOND_THE_SCHEMA {
        let path = protocol_dir().join("fixtures").join(name);
        assert!(
            path.is_file(),
            "BEYOND_THE_SCHEMA names {name} ({reason}), which is not a fixture"
        );
    }
}

#[test]
fn the_schema_refuses_what_a_client_must_not_send() {
    // Rules stated by the transforms in src/schema.rs, one frame each, so a transform that
    // stops applying is noticed even if no fixture covers it.
    let validator = validator(&schema::client_frame());
    let refused = [
        r#"{"type":"execute","id":"a","language":"sh","code":"","env":{"":"x"}}"#,
        r#"{"type":"execute","id":"a","language":"sh","code":"","env":{"A":"x\u0000"}}"#,
        r#"{"type":"execute","id":"a","language":"sh","code":"","args":["\u0000"]}"#,
        r#"{"type":"execute","id":"a","language":"sh","code":"","persistent":true,"session":null}"#,
        r#"{"type":"stdin","id":"a","data":null}"#,
        r#"{"type":"stdin","id":"a","eof":false}"#,
        r#"{"type":"attach","session":""}"#,
    ];
    for text in refused {
        let value: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert!(!validator.is_valid(&value), "the schema accepts {text}");
        assert!(
            sluice_protocol::ClientFrame::decode(text).is_err(),
            "the decoder accepts {text}"
        );
    }
}
