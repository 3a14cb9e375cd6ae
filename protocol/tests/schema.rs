//! Checks the committed JSON Schema in `protocol/schema/` against the one generated from
//! the wire types (feature `schema`, enabled for this crate's tests through its
//! dev-dependency on itself). The fixtures are validated against the committed schema by
//! the Python client's suite (`clients/python/tests/test_schema.py`), which has a
//! well-kept validator at no cost to this workspace's build.

use sluice_protocol::schema;
use std::fs;
use std::path::{Path, PathBuf};

const REGENERATE: &str = "cargo run -p sluice-protocol --features schema --example write-schema";

fn protocol_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
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
