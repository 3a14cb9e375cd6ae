"""The protocol's JSON Schema (protocol/schema/, generated from sluice-protocol and
kept current by protocol/tests/schema.rs) against the shared fixtures: every valid
fixture validates, every invalid one is refused, except the few whose rule a JSON
Schema cannot state (listed with the reason). The Python client's own decoder must
agree with the schema on what a client must not send."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from sluice import FrameError, decode_frame

PROTOCOL = Path(__file__).resolve().parents[3] / "protocol"

# Invalid fixtures the schema accepts, because the rule they break is not one a JSON
# Schema can state; the decoders still refuse them (test_fixtures.py).
BEYOND_THE_SCHEMA = {
    "client/invalid/bad_request--id-too-long-multibyte.json": (
        "130 bytes in 65 characters: maxLength counts characters, the protocol bytes"
    ),
    "client/invalid/bad_request--complete-cursor-past-end.json": (
        "cursor_pos must be at most the code's length in code points: a relation between two fields"
    ),
    "events/invalid/gap-sequence-not-before-resume.json": (
        "sequence must be resume_from - 1: a relation between two fields"
    ),
}


def validator(name: str) -> Draft202012Validator:
    schema = json.loads((PROTOCOL / "schema" / name).read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


FRAMES = validator("client-frame.schema.json")
EVENTS = validator("event.schema.json")


def fixtures(rel: str) -> list[tuple[str, Any]]:
    directory = PROTOCOL / "fixtures" / rel
    found = [(f"{rel}/{path.name}", json.loads(path.read_text())) for path in sorted(directory.glob("*.json"))]
    assert found, f"no .json fixtures in {directory}"
    return found


@pytest.mark.parametrize(
    ("schema", "rel"),
    [(FRAMES, "client/valid"), (EVENTS, "events/valid")],
    ids=["client", "events"],
)
def test_every_valid_fixture_validates(schema: Draft202012Validator, rel: str) -> None:
    for name, value in fixtures(rel):
        errors = [f"{e.message} at {list(e.absolute_path)}" for e in schema.iter_errors(value)]
        assert not errors, f"{name} is a valid fixture but the schema refuses it: {errors}"


@pytest.mark.parametrize(
    ("schema", "rel"),
    [(FRAMES, "client/invalid"), (EVENTS, "events/invalid")],
    ids=["client", "events"],
)
def test_every_invalid_fixture_is_refused(schema: Draft202012Validator, rel: str) -> None:
    for name, value in fixtures(rel):
        valid = schema.is_valid(value)
        if name in BEYOND_THE_SCHEMA:
            assert valid, f"{name} is listed as beyond the schema, but the schema refuses it"
        else:
            assert not valid, (
                f"{name} is an invalid fixture but the schema accepts it; state its rule in "
                "protocol/src/schema.rs, or list it in BEYOND_THE_SCHEMA with the reason"
            )


def test_every_exception_names_a_fixture() -> None:
    for name, reason in BEYOND_THE_SCHEMA.items():
        assert (PROTOCOL / "fixtures" / name).is_file(), f"{name} ({reason}) is not a fixture"


# Rules stated by the transforms in protocol/src/schema.rs, one frame each, so a
# transform that stops applying is noticed even if no fixture covers it.
REFUSED = [
    '{"type":"execute","id":"a","language":"sh","code":"","env":{"":"x"}}',
    '{"type":"execute","id":"a","language":"sh","code":"","env":{"A":"x\\u0000"}}',
    '{"type":"execute","id":"a","language":"sh","code":"","args":["\\u0000"]}',
    '{"type":"execute","id":"a","language":"sh","code":"","persistent":true,"session":null}',
    '{"type":"stdin","id":"a","data":null}',
    '{"type":"stdin","id":"a","eof":false}',
    '{"type":"attach","session":""}',
    '{"type":"execute","id":"a","language":"sh","code":"","rows":24}',
    '{"type":"execute","id":"a","language":"sh","code":"","tty":false,"term":"vt100"}',
    '{"type":"execute","id":"a","language":"python","code":"","tty":true,"persistent":true,"session":"s"}',
    '{"type":"resize","id":"a","cols":80,"rows":0}',
    '{"type":"read_file","request":"r","session":"s","path":"../x"}',
    '{"type":"read_file","request":"r","session":"s","path":"/x"}',
    '{"type":"read_file","request":"r","session":"s","path":"x","offset":-1}',
    '{"type":"list_files","request":"r","session":"s","path":".sluice-x"}',
    '{"type":"write_file","request":"r","session":"s","path":"x","data":"","mode":512}',
    '{"type":"write_file","request":"","session":"s","path":"x","data":""}',
    '{"type":"write_file","request":"r","session":"s","path":"x"}',
    '{"type":"delete_file","request":"r","session":"s"}',
    '{"type":"complete","request":"q","session":"s","code":"x"}',
    '{"type":"complete","request":"q","session":"s","code":"x","cursor_pos":-1}',
    '{"type":"complete","request":"q","session":"","code":"x","cursor_pos":0}',
    '{"type":"complete","request":"q","session":"s","cursor_pos":0}',
    '{"type":"inspect","request":"","session":"s","code":"x","cursor_pos":0}',
    '{"type":"inspect","request":"q","session":"s","code":"x","cursor_pos":1,"detail_level":2}',
]


@pytest.mark.parametrize("text", REFUSED)
def test_the_schema_and_the_decoder_refuse_what_a_client_must_not_send(text: str) -> None:
    assert not FRAMES.is_valid(json.loads(text)), f"the schema accepts {text}"
    with pytest.raises(FrameError):
        decode_frame(text)
