//! Writes the JSON Schema of the wire types to `protocol/schema/`:
//! `cargo run -p sluice-protocol --features schema --example write-schema`.
//! `tests/schema.rs` fails until the committed files match what this writes.

use std::path::Path;
use std::process::ExitCode;

fn main() -> ExitCode {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("schema");
    if let Err(e) = std::fs::create_dir_all(&dir) {
        #[allow(clippy::print_stderr)]
        {
            eprintln!("write-schema: cannot create {}: {e}", dir.display());
        }
        return ExitCode::FAILURE;
    }
    for (name, text) in sluice_protocol::schema::files() {
        let path = dir.join(name);
        if let Err(e) = std::fs::write(&path, text) {
            #[allow(clippy::print_stderr)]
            {
                eprintln!("write-schema: cannot write {}: {e}", path.display());
            }
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
