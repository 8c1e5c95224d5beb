//! README's configuration table and the code agree: every variable the code reads (what
//! the services' settings parse, as `--help` lists them, and the tests' own) is documented
//! with its default, and every documented variable is read.

use std::{collections::BTreeMap, fs, path::Path};

/// Every variable the services and the tests read, with its default; a variable shared by
/// services (`AMQP_*`, `OUTBOX_*`, `RUST_LOG`…) has one default.
fn read_by_the_code() -> BTreeMap<String, String> {
    let tests = test_kit::VARIABLES.map(|(n, d)| (n.to_string(), d.to_string()));
    let mut read = BTreeMap::new();
    for (name, default) in [order::variables(), pay::variables(), gateway::variables()]
        .into_iter()
        .flatten()
        .chain(tests)
    {
        if let Some(other) = read.insert(name.clone(), default.clone()) {
            assert_eq!(other, default, "{name} has two defaults");
        }
    }
    read
}

/// The configuration table: variable → its default cell.
fn documented() -> BTreeMap<String, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let readme = fs::read_to_string(root.join("README.md")).unwrap();
    readme
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| {
            let (name, rest) = l.split_once('`')?;
            let default = rest.strip_prefix(" | ")?.split(" | ").next()?;
            Some((name.to_string(), default.to_string()))
        })
        .filter(|(n, _)| n.chars().all(|c| c.is_ascii_uppercase() || c == '_') && n.contains('_'))
        .collect()
}

#[test]
fn services_read_every_variable_the_readme_lists() {
    let read = read_by_the_code();
    assert!(read.len() > 20, "too few variables: {read:?}");
    let documented = documented();
    let undocumented: Vec<_> = read
        .keys()
        .filter(|n| !documented.contains_key(*n))
        .collect();
    let unread: Vec<_> = documented
        .keys()
        .filter(|n| !read.contains_key(*n))
        .collect();
    assert!(
        undocumented.is_empty(),
        "read by the code but missing from README: {undocumented:?}"
    );
    assert!(
        unread.is_empty(),
        "in README but read by no code: {unread:?}"
    );
}

#[test]
fn the_readme_gives_each_variable_the_codes_default() {
    let documented = documented();
    for (name, default) in read_by_the_code() {
        // A missing row is the other test's failure.
        let Some(cell) = documented.get(&name) else {
            continue;
        };
        // `value`, possibly followed by a gloss ("`0` (never)"); an empty default is "empty".
        let shown = match cell.strip_prefix('`') {
            Some(quoted) => quoted.split('`').next().unwrap(),
            None if cell == "empty" => "",
            None => panic!("{name}: the default {cell:?} is neither `value` nor empty"),
        };
        assert_eq!(
            shown, default,
            "{name}: README's default differs from the code's"
        );
    }
}

/// The lists above are complete only if nothing else reads the environment: the services,
/// the message service and `common` read it only through their settings (clap).
#[test]
fn the_services_read_the_environment_only_through_their_settings() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut files = Vec::new();
    for dir in [
        "services",
        "crates/message-service/src",
        "crates/common/src",
    ] {
        collect_rust_files(&root.join(dir), &mut files);
    }
    assert!(files.len() > 20, "too few files: {files:?}");
    for file in files {
        // The parser itself (and the readers the tests use).
        if file.ends_with("crates/common/src/config.rs")
            || file.components().any(|c| c.as_os_str() == "tests")
        {
            continue;
        }
        let source = fs::read_to_string(&file).unwrap();
        for reader in [
            "env::var",
            "env_or(",
            "env_string(",
            "env_millis(",
            "env_secs(",
        ] {
            assert!(
                !source.contains(reader),
                "{}: reads the environment with {reader}, not through its settings",
                file.display()
            );
        }
    }
}

fn collect_rust_files(path: &Path, out: &mut Vec<std::path::PathBuf>) {
    if path.is_dir() {
        for entry in fs::read_dir(path).unwrap() {
            collect_rust_files(&entry.unwrap().path(), out);
        }
    } else if path.extension().is_some_and(|e| e == "rs") {
        out.push(path.to_path_buf());
    }
}
