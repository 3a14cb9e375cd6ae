//! The JSON Schema of the wire types (feature `schema`): what a client frame and an event
//! may look like, generated from the serde types with `schemars`.
//!
//! The committed copies live in `protocol/schema/` and are rewritten by
//! `cargo run -p sluice-protocol --features schema --example write-schema`;
//! `protocol/tests/schema.rs` fails when they differ from what this module generates,
//! and validates every fixture against them.
//!
//! The derives give the shape (fields, types, which are required). The transforms here
//! add the rules of `ClientFrame::decode` and `Event::validate` that JSON Schema can
//! express: an id of 1 to 128 characters, an `env` name without `=` or NUL, `stdin`
//! with `data` or `eof`, the fields each event type needs. What it cannot express is
//! left to the decoders: a length in bytes (the schema counts characters, so it is
//! looser, never stricter), and a relation between two numbers (a `gap`'s `sequence`
//! is `resume_from - 1`, an `attached`'s `resume_from` is `sequence + 1`).
//!
//! The enums a newer gateway may extend (`EventKind`, `ErrorCode`, `LimitKind`) list
//! their known values and accept any other string, as a forward-compatible client must.

use crate::{ClientFrame, Event};
use schemars::{generate::SchemaSettings, Schema};
use serde_json::{json, Value};

/// A string without a NUL character (`args` and `env` values).
pub(crate) const NO_NUL: &str = "^[^\\u0000]*$";

/// A terminal type name (`term`): letters, digits and `.+-_`.
pub(crate) const TERM_NAME: &str = "^[A-Za-z0-9.+_-]+$";

/// The schema of a frame a client sends (`execute`, `stdin`, `cancel`, `attach`,
/// `detach`, `ack`), as a JSON value (draft 2020-12).
pub fn client_frame() -> Value {
    root::<ClientFrame>("Sluice protocol v1: a client frame")
}

/// The schema of an event the gateway sends, as a JSON value (draft 2020-12).
pub fn event() -> Value {
    root::<Event>("Sluice protocol v1: an event")
}

/// The committed schema files, by name under `protocol/schema/`, with their contents as
/// pretty-printed JSON ending in a newline.
pub fn files() -> Vec<(&'static str, String)> {
    [
        ("client-frame.schema.json", client_frame()),
        ("event.schema.json", event()),
    ]
    .into_iter()
    .map(|(name, schema)| {
        // Pretty-printing a `Value` cannot fail: every map key is a string.
        let text = serde_json::to_string_pretty(&schema).unwrap_or_default();
        (name, text + "\n")
    })
    .collect()
}

fn root<T: schemars::JsonSchema>(title: &str) -> Value {
    let generator = SchemaSettings::draft2020_12()
        .for_deserialize()
        .into_generator();
    let mut schema = generator.into_root_schema_for::<T>();
    schema.insert("title".to_owned(), json!(title));
    schema.to_value()
}

/// An enum a newer gateway may extend: its catch-all variant (`#[serde(other)]`)
/// becomes "any other string", so the schema accepts values it does not know.
pub(crate) fn open_enum(schema: &mut Schema) {
    const CATCH_ALL: [&str; 2] = ["other", "unknown"];
    let is_catch_all = |v: &Value| v.as_str().is_some_and(|s| CATCH_ALL.contains(&s));
    if let Some(Value::Array(values)) = schema.get_mut("enum") {
        // No variant carries a doc comment of its own: a plain list of strings.
        values.retain(|v| !is_catch_all(v));
        let known = schema.remove("enum").unwrap_or(Value::Null);
        schema.remove("type");
        schema.insert(
            "anyOf".to_owned(),
            json!([{"type": "string", "enum": known}, any_other_string()]),
        );
        return;
    }
    if let Some(Value::Array(variants)) = schema.remove("oneOf") {
        // One `{"const": ..., "description": ...}` per variant.
        let mut variants: Vec<Value> = variants
            .into_iter()
            .filter(|v| !v.get("const").is_some_and(is_catch_all))
            .collect();
        variants.push(any_other_string());
        // A known value matches its own entry and "any other string": anyOf, not oneOf.
        schema.insert("anyOf".to_owned(), Value::Array(variants));
    }
}

fn any_other_string() -> Value {
    json!({
        "type": "string",
        "description": "A value this version of the protocol does not know yet (a newer gateway may send it): accept it."
    })
}

/// `persistent: true` and `workspace: true` need a `session` (as
/// `ClientFrame::decode` checks).
pub(crate) fn persistent_needs_session(schema: &mut Schema) {
    let needs_session = |field: &str| {
        json!({
            "if": {"properties": {field: {"const": true}}, "required": [field]},
            "then": {"properties": {"session": {"type": "string"}}, "required": ["session"]}
        })
    };
    push_all_of(
        schema,
        [needs_session("persistent"), needs_session("workspace")],
    );
}

/// Adds `rules` to the schema's `allOf` (two transforms of one type may each add some).
fn push_all_of(schema: &mut Schema, rules: impl IntoIterator<Item = Value>) {
    let mut all = match schema.remove("allOf") {
        Some(Value::Array(existing)) => existing,
        _ => Vec::new(),
    };
    all.extend(rules);
    schema.insert("allOf".to_owned(), Value::Array(all));
}

/// A `write_file`'s text (not base64) has no NUL (as `ClientFrame::decode` checks).
pub(crate) fn text_without_nul(schema: &mut Schema) {
    schema.insert(
        "if".to_owned(),
        json!({"not": {"properties": {"encoding": {"const": "base64"}}, "required": ["encoding"]}}),
    );
    schema.insert(
        "then".to_owned(),
        json!({"properties": {"data": {"pattern": NO_NUL}}}),
    );
}

/// `cols`, `rows` and `term` only with `"tty": true`; neither `tty` nor `files` with
/// `persistent`.
pub(crate) fn terminal_only_with_tty(schema: &mut Schema) {
    let tty = json!({"properties": {"tty": {"const": true}}, "required": ["tty"]});
    let rules = json!([
            {
                "if": {"not": tty},
                "then": {"not": {"anyOf": [
                    {"required": ["cols"]}, {"required": ["rows"]}, {"required": ["term"]}
                ]}}
            },
            {
                "if": tty,
                "then": {"not": {
                    "properties": {"persistent": {"const": true}}, "required": ["persistent"]
                }}
            },
            {
                "if": {"properties": {"persistent": {"const": true}}, "required": ["persistent"]},
                "then": {"not": {
                    "properties": {"files": {"minProperties": 1}}, "required": ["files"]
                }}
            }
    ]);
    if let Value::Array(rules) = rules {
        push_all_of(schema, rules);
    }
}

/// `files`: at most 256, each path relative with plain components (no empty, `.` or
/// `..` one, none of 256 characters or more), no NUL, at most 1024 bytes; each text
/// without NUL.
pub(crate) fn file_paths(schema: &mut Schema) {
    schema.insert("maxProperties".to_owned(), json!(256));
    schema.insert(
        "propertyNames".to_owned(),
        json!({
            "minLength": 1,
            "maxLength": 1024,
            "pattern": "^[^/\\u0000]+(/[^/\\u0000]+)*$",
            // A name of 256 characters is more than 255 bytes (the decoder counts bytes).
            "not": {"anyOf": [
                {"pattern": "(^|/)\\.\\.?(/|$)"},
                {"pattern": "[^/]{256}"},
                {"pattern": "^\\.sluice-"}
            ]}
        }),
    );
    schema.insert(
        "additionalProperties".to_owned(),
        json!({"type": "string", "pattern": NO_NUL}),
    );
}

/// One path of a session's workspace: as a key of `files`, and not a name the gateway
/// keeps for itself.
pub(crate) fn file_path(schema: &mut Schema) {
    schema.insert("minLength".to_owned(), json!(1));
    schema.insert("maxLength".to_owned(), json!(1024));
    schema.insert(
        "pattern".to_owned(),
        json!("^[^/\\u0000]+(/[^/\\u0000]+)*$"),
    );
    schema.insert(
        "not".to_owned(),
        json!({"anyOf": [
            {"pattern": "(^|/)\\.\\.?(/|$)"},
            {"pattern": "[^/]{256}"},
            {"pattern": "^\\.sluice-"}
        ]}),
    );
}

/// A `stdin` frame carries `data`, `"eof": true`, or both.
pub(crate) fn data_or_eof(schema: &mut Schema) {
    schema.insert(
        "anyOf".to_owned(),
        json!([
            {"properties": {"data": {"type": "string"}}, "required": ["data"]},
            {"properties": {"eof": {"const": true}}, "required": ["eof"]}
        ]),
    );
}

/// `env`: names not empty and without `=` or NUL, values without NUL.
pub(crate) fn env_names_and_values(schema: &mut Schema) {
    schema.insert(
        "propertyNames".to_owned(),
        json!({"minLength": 1, "pattern": "^[^=\\u0000]*$"}),
    );
    schema.insert(
        "additionalProperties".to_owned(),
        json!({"type": "string", "pattern": NO_NUL}),
    );
}

/// The per-type rules of `Event::validate` that a schema can state.
pub(crate) fn event_rules(schema: &mut Schema) {
    let when = |kinds: &[&str], then: Value| {
        json!({
            "if": {"properties": {"type": {"enum": kinds}}, "required": ["type"]},
            "then": then
        })
    };
    let string =
        |field: &str| json!({"properties": {field: {"type": "string"}}, "required": [field]});
    let integer =
        |field: &str| json!({"properties": {field: {"type": "integer"}}, "required": [field]});
    let rules = json!([
        // Sequences start at 1; only an `attached` may say 0 (an attach without `since`).
        {
            "if": {"properties": {"type": {"const": "attached"}}, "required": ["type"]},
            "else": {"properties": {"sequence": {"minimum": 1}}}
        },
        // An event that names an execution names its session too, except an `error`
        // that refuses an `execute` on the socket stream.
        {
            "if": {
                "properties": {"id": {"type": "string"}, "type": {"not": {"const": "error"}}},
                "required": ["id"]
            },
            "then": string("session")
        },
        when(
            &["started", "stdout", "stderr", "completed", "cancelled", "resource_limit"],
            string("id"),
        ),
        when(&["started"], integer("pid")),
        when(
            &["completed"],
            json!({"oneOf": [integer("exit_code"), integer("signal")]}),
        ),
        when(&["resource_limit"], json!({"allOf": [string("limit"), integer("limit_value")]})),
        when(&["error"], string("code")),
        when(&["attached"], json!({"allOf": [string("session"), integer("resume_from")]})),
        when(
            &["gap"],
            json!({"allOf": [string("session"), integer("missed_from"), integer("resume_from")]}),
        ),
        when(
            &["runtimes"],
            json!({
                "properties": {
                    "runtimes": {"type": "array"},
                    "limits": {"type": "object"},
                    "session": {"type": "null"}
                },
                "required": ["runtimes", "limits"]
            }),
        ),
        when(
            &["file_written", "file_data", "file_list", "file_deleted"],
            json!({
                "allOf": [string("request"), string("path")],
                "properties": {"session": {"type": "null"}}
            }),
        ),
        when(&["file_written"], integer("size")),
        when(
            &["file_data"],
            json!({
                "allOf": [integer("offset"), integer("size")],
                "properties": {"last": {"type": "boolean"}},
                "required": ["last"]
            }),
        ),
        when(
            &["file_list"],
            json!({"properties": {"entries": {"type": "array"}}, "required": ["entries"]}),
        ),
        when(
            &["files_changed"],
            json!({
                "allOf": [string("session")],
                "properties": {"changes": {"type": "object"}},
                "required": ["changes"]
            }),
        ),
        when(
            &["display", "update_display", "result"],
            json!({
                "allOf": [string("id")],
                "properties": {"bundle": {"type": "object"}},
                "required": ["bundle"]
            }),
        ),
        when(&["update_display"], string("display_id")),
        when(&["network_blocked"], string("id")),
        when(
            &["complete_reply", "inspect_reply"],
            json!({
                "allOf": [string("request")],
                "properties": {"session": {"type": "null"}, "id": {"type": "null"}}
            }),
        ),
        when(
            &["complete_reply"],
            json!({
                "allOf": [integer("cursor_start"), integer("cursor_end")],
                "properties": {"matches": {"type": "array", "items": {"type": "string"}}},
                "required": ["matches"]
            }),
        ),
        when(
            &["inspect_reply"],
            json!({
                "properties": {"found": {"type": "boolean"}},
                "required": ["found"],
                "if": {"properties": {"found": {"const": true}}},
                "then": {"properties": {"bundle": {"type": "object"}}, "required": ["bundle"]}
            }),
        ),
        when(
            &["restarted"],
            json!({"allOf": [string("session")], "properties": {"id": {"type": "null"}}}),
        ),
        when(
            &["input_request"],
            json!({
                "allOf": [string("id")],
                "properties": {"password": {"type": "boolean"}},
                "required": ["password"]
            }),
        ),
    ]);
    schema.insert("allOf".to_owned(), rules);
}

#[cfg(test)]
mod tests {
    use super::*;
    use schemars::json_schema;

    #[test]
    fn open_enums_keep_known_values_and_drop_the_catch_all() {
        let text = serde_json::to_string(&event()).unwrap_or_default();
        assert!(text.contains("\"resource_limit\""), "{text}");
        assert!(text.contains("\"kernel_lost\""), "{text}");
        assert!(!text.contains("\"unknown\""), "{text}");
        assert!(!text.contains("\"other\""), "{text}");
    }

    #[test]
    fn open_enum_rewrites_a_plain_list() {
        let mut schema = json_schema!({"type": "string", "enum": ["a", "other"]});
        open_enum(&mut schema);
        assert_eq!(
            schema.to_value(),
            json!({"anyOf": [{"type": "string", "enum": ["a"]}, any_other_string()]})
        );
    }
}
