//! The READMEs keep their promise, and the configuration tables agree with the code.
//!
//! Each README is a short path: the problem, the mechanism, the guarantees (each labelled
//! *tested* or *measured*), "Learn in 30 minutes", the quick start (its two commands, the
//! tests' command, the curl of `/order/buy`), and where everything else is.
//!
//! The configuration table (`docs/configuration.md`, and its Chinese twin) and the code agree:
//! every variable the code reads (what the services' settings parse, as `--help` lists them,
//! and the tests' own) is documented with its default, and every documented variable is read.

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

/// The configuration docs, English and Chinese: each has the whole table.
const CONFIGURATION_DOCS: [&str; 2] = ["docs/configuration.md", "docs/zh-CN/configuration.md"];

fn read(relative: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    fs::read_to_string(root.join(relative)).unwrap_or_else(|e| panic!("{relative}: {e}"))
}

/// A configuration table: variable → its default cell.
fn documented(doc: &str) -> BTreeMap<String, String> {
    read(doc)
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
fn services_read_every_variable_the_configuration_doc_lists() {
    let read = read_by_the_code();
    assert!(read.len() > 20, "too few variables: {read:?}");
    for doc in CONFIGURATION_DOCS {
        let documented = documented(doc);
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
            "read by the code but missing from {doc}: {undocumented:?}"
        );
        assert!(
            unread.is_empty(),
            "in {doc} but read by no code: {unread:?}"
        );
    }
}

#[test]
fn the_configuration_doc_gives_each_variable_the_codes_default() {
    for doc in CONFIGURATION_DOCS {
        gives_each_variable_the_codes_default(doc);
    }
}

fn gives_each_variable_the_codes_default(doc: &str) {
    let documented = documented(doc);
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
            "{name}: {doc}'s default differs from the code's"
        );
    }
}

/// The lists above are complete only if nothing else reads the environment: the services,
/// the message service and `common` read it only through their settings (clap).
#[test]
fn the_services_read_the_environment_only_through_their_settings() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut files = Vec::new();
    for dir in ["services", "crates/service-kit/src", "crates/common/src"] {
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

/// The READMEs, with the words each uses for its sections and labels.
struct Readme {
    file: &'static str,
    /// The second-level headings, in order.
    sections: [&'static str; 6],
    tested: &'static str,
    measured: &'static str,
}

const READMES: [Readme; 2] = [
    Readme {
        file: "README.md",
        sections: [
            "The problem: two writes, two systems",
            "The mechanism: outbox + inbox",
            "What is guaranteed, and how it is shown",
            "Learn in 30 minutes",
            "Quick start",
            "Where everything else is",
        ],
        tested: "*tested*",
        measured: "*measured*",
    },
    Readme {
        file: "README.zh-CN.md",
        sections: [
            "问题所在：两次写入，两个系统",
            "机制：outbox + inbox",
            "保证了什么，怎样证明",
            "30 分钟学会",
            "快速开始",
            "其他内容在哪里",
        ],
        tested: "*测试*",
        measured: "*实测*",
    },
];

/// The lines of a README's section (without its heading).
fn section<'a>(text: &'a str, heading: &str) -> Vec<&'a str> {
    text.lines()
        .skip_while(|l| *l != format!("## {heading}"))
        .skip(1)
        .take_while(|l| !l.starts_with("## "))
        .collect()
}

#[test]
fn each_readme_is_a_short_path_in_six_sections() {
    for readme in READMES {
        let text = read(readme.file);
        let headings: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("## ")).collect();
        assert_eq!(headings, readme.sections, "{}: its sections", readme.file);
        let lines = text.lines().count();
        assert!(
            lines <= 300,
            "{} has {lines} lines: the rest belongs in docs/",
            readme.file
        );
    }
}

#[test]
fn each_readme_starts_both_ways_runs_the_tests_and_buys() {
    for readme in READMES {
        let text = read(readme.file);
        let quick_start = section(&text, readme.sections[4]).join("\n");
        for command in [
            "docker compose up",
            "scripts/run-local.sh ",
            "scripts/test.sh",
            "curl -s -X POST localhost:8769/order/buy",
        ] {
            assert!(
                quick_start.contains(command),
                "{}: the quick start lacks `{command}`",
                readme.file
            );
        }
        let learn = section(&text, readme.sections[3]).join("\n");
        for start in [
            "docker compose --profile demo up",
            "scripts/run-local.sh --demo",
        ] {
            assert!(
                learn.contains(start),
                "{}: the 30-minute path lacks `{start}`",
                readme.file
            );
        }
        for scenario in ["01", "02", "05", "07", "08", "13"] {
            assert!(
                learn.contains(&format!("**{scenario}")),
                "{}: the 30-minute path lacks scenario {scenario}",
                readme.file
            );
        }
        for doc in ["docs/how-it-works.md", "docs/comparison.md"] {
            let doc = if readme.file == "README.md" {
                doc.to_string()
            } else {
                doc.replace("docs/", "docs/zh-CN/")
            };
            assert!(
                learn.contains(&format!("({doc})")),
                "{}: the 30-minute path does not lead to {doc}",
                readme.file
            );
        }
    }
}

/// Every claim says how it is shown: *tested*, with the tests it cites, or *measured*, with
/// the benchmark section it comes from.
#[test]
fn each_claim_is_labelled_tested_or_measured() {
    for readme in READMES {
        let text = read(readme.file);
        let rows: Vec<&str> = section(&text, readme.sections[2])
            .into_iter()
            .filter(|l| l.starts_with('|'))
            .skip(2)
            .collect();
        assert!(
            rows.len() > 25,
            "{}: only {} claims",
            readme.file,
            rows.len()
        );
        for row in rows {
            let shown_by = row.trim_end_matches('|').rsplit('|').next().unwrap().trim();
            let cites = if shown_by.starts_with(readme.tested) {
                shown_by.contains('`')
            } else if shown_by.starts_with(readme.measured) {
                shown_by.contains("benchmarks.md#")
            } else {
                false
            };
            assert!(
                cites,
                "{}: a claim neither tested with a test nor measured with a benchmark section: {row}",
                readme.file
            );
        }
    }
}
