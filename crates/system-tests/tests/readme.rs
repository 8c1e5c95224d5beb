//! README's configuration table and the code agree: every variable the code reads is
//! documented, and every documented variable is read somewhere.

use std::{collections::BTreeSet, fs, path::Path};

use system_tests::config_scan::{rust_sources, variables_read};

#[test]
fn services_read_every_variable_the_readme_lists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut sources = Vec::new();
    for dir in [
        "crates/common/src",
        "crates/message-table/src",
        "crates/message-service/src",
        "crates/test-kit/src",
        "services",
    ] {
        sources.extend(rust_sources(&root.join(dir)));
    }
    let mut read: BTreeSet<String> = sources.iter().flat_map(|s| variables_read(s)).collect();
    // Read by tracing-subscriber's EnvFilter::try_from_default_env, not by our readers.
    read.insert("RUST_LOG".into());
    assert!(read.len() > 20, "scanner found too few variables: {read:?}");

    let readme = fs::read_to_string(root.join("README.md")).unwrap();
    let documented: BTreeSet<String> = readme
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .filter(|n| n.chars().all(|c| c.is_ascii_uppercase() || c == '_') && n.contains('_'))
        .map(str::to_string)
        .collect();

    let undocumented: Vec<_> = read.difference(&documented).collect();
    let unread: Vec<_> = documented.difference(&read).collect();
    assert!(
        undocumented.is_empty(),
        "read by the code but missing from README: {undocumented:?}"
    );
    assert!(
        unread.is_empty(),
        "in README but read by no code: {unread:?}"
    );
}
