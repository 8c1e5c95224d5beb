//! Which environment variables the code reads, found by scanning its sources: the README's
//! configuration table (tests/readme.rs) and docker-compose.yml (tests/compose.rs) are
//! checked against it.

use std::{collections::BTreeSet, fs, path::Path};

/// The text of every `.rs` file under `path` (or of `path` itself).
pub fn rust_sources(path: &Path) -> Vec<String> {
    let mut out = Vec::new();
    collect(path, &mut out);
    out
}

fn collect(path: &Path, out: &mut Vec<String>) {
    if path.is_dir() {
        for entry in fs::read_dir(path).unwrap() {
            collect(&entry.unwrap().path(), out);
        }
    } else if path.extension().is_some_and(|e| e == "rs") {
        out.push(fs::read_to_string(path).unwrap());
    }
}

/// Names passed as the first argument to the config readers, across line breaks.
pub fn variables_read(source: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for reader in [
        "env_or(",
        "env_string(",
        "env_millis(",
        "env_secs(",
        "env::var(",
    ] {
        for (at, _) in source.match_indices(reader) {
            let rest = source[at + reader.len()..].trim_start();
            if let Some(rest) = rest.strip_prefix('"') {
                let name: String = rest.chars().take_while(|c| *c != '"').collect();
                if !name.is_empty() && name.chars().all(|c| c.is_ascii_uppercase() || c == '_') {
                    names.insert(name);
                }
            }
        }
    }
    names
}
