//! The English and the Chinese docs stay in step: each pair (`README.md` and
//! `README.zh-CN.md`, `docs/X.md` and `docs/zh-CN/X.md`) has the same headings at the same
//! levels in the same order and the same commands in its code blocks; both scenario docs
//! name exactly the scripts in `scripts/scenarios/`; every relative link resolves.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
};

/// The scenario scripts the docs describe, used while `scripts/scenarios/` does not exist yet.
const SCENARIOS: [&str; 13] = [
    "01-rollback-before-send.sh",
    "02-commit-then-send-fails.sh",
    "03-broker-down-at-order-time.sh",
    "04-relay-killed-before-mark-sent.sh",
    "05-lost-confirm.sh",
    "06-unroutable.sh",
    "07-consumer-killed-before-ack.sh",
    "08-duplicate-delivery.sh",
    "09-poison-message.sh",
    "10-handler-fails-then-succeeds.sh",
    "11-dead-then-requeued.sh",
    "12-database-down-under-pay.sh",
    "13-lost-message-reconciler.sh",
];

/// Code-block lines that are commands, compared between the languages.
const COMMAND_PREFIXES: [&str; 3] = ["scripts/", "curl", "docker compose"];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(relative: &str) -> String {
    fs::read_to_string(root().join(relative)).unwrap_or_else(|e| panic!("{relative}: {e}"))
}

/// A markdown file as this test sees it.
#[derive(Default)]
struct Doc {
    /// Headings outside code blocks: (level, text).
    headings: Vec<(usize, String)>,
    /// Command lines inside code blocks, without a trailing `# comment`.
    commands: BTreeSet<String>,
    /// Link targets outside code blocks, as written.
    links: Vec<String>,
}

fn parse(text: &str) -> Doc {
    let mut doc = Doc::default();
    let mut fence: Option<&str> = None;
    for line in text.lines() {
        let trimmed = line.trim_start();
        if let Some(marker) = fence {
            if trimmed.starts_with(marker) && trimmed.trim_start_matches(marker).trim().is_empty() {
                fence = None;
            } else if COMMAND_PREFIXES.iter().any(|p| trimmed.starts_with(p)) {
                let command = trimmed.split(" #").next().unwrap_or(trimmed);
                doc.commands.insert(command.trim_end().to_string());
            }
            continue;
        }
        if let Some(marker) = ["```", "~~~"].into_iter().find(|m| trimmed.starts_with(m)) {
            fence = Some(marker);
            continue;
        }
        let level = line.chars().take_while(|&c| c == '#').count();
        if (1..=6).contains(&level) && line[level..].starts_with(' ') {
            doc.headings.push((level, line[level..].trim().to_string()));
        }
        doc.links.extend(links_in(line));
    }
    assert!(fence.is_none(), "a code block is not closed");
    doc
}

/// The targets of `[text](target)` links in one line.
fn links_in(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find("](") {
        rest = &rest[at + 2..];
        let Some(end) = rest.find(')') else { break };
        let target = rest[..end].split_whitespace().next().unwrap_or("");
        out.push(target.to_string());
        rest = &rest[end..];
    }
    out
}

/// Every `NN-name.sh` a text names.
fn scenario_scripts(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (at, _) in text.match_indices(".sh") {
        // After the last character that cannot be part of a name (which may be a multi-byte
        // one, as in Chinese punctuation).
        let start = text[..at]
            .char_indices()
            .rev()
            .find(|(_, c)| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
            .map_or(0, |(i, c)| i + c.len_utf8());
        let name = &text[start..at + 3];
        let b = name.as_bytes();
        if b.len() > 6 && b[0].is_ascii_digit() && b[1].is_ascii_digit() && b[2] == b'-' {
            out.insert(name.to_string());
        }
    }
    out
}

fn scenarios_dir() -> Option<PathBuf> {
    let dir = root().join("scripts/scenarios");
    dir.is_dir().then_some(dir)
}

/// The English/Chinese pairs: the READMEs, and every `docs/X.md` with `docs/zh-CN/X.md`.
fn pairs() -> Vec<(String, String)> {
    let mut pairs = vec![("README.md".to_string(), "README.zh-CN.md".to_string())];
    let mut names = BTreeSet::new();
    for dir in ["docs", "docs/zh-CN"] {
        for entry in fs::read_dir(root().join(dir)).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            if name.ends_with(".md") {
                names.insert(name);
            }
        }
    }
    for name in names {
        pairs.push((format!("docs/{name}"), format!("docs/zh-CN/{name}")));
    }
    pairs
}

fn outline(headings: &[(usize, String)]) -> String {
    headings
        .iter()
        .map(|(level, text)| format!("{} {text}", "#".repeat(*level)))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn each_english_doc_has_a_chinese_twin_with_the_same_headings() {
    for (en, zh) in pairs() {
        assert!(
            root().join(&en).is_file(),
            "{zh} has no English original {en}"
        );
        assert!(
            root().join(&zh).is_file(),
            "{en} has no Chinese version {zh}"
        );
        let (en_doc, zh_doc) = (parse(&read(&en)), parse(&read(&zh)));
        let levels = |d: &Doc| d.headings.iter().map(|(l, _)| *l).collect::<Vec<_>>();
        assert!(
            levels(&en_doc) == levels(&zh_doc),
            "{en} and {zh} differ in their headings (level and order):\n--- {en}\n{}\n--- {zh}\n{}",
            outline(&en_doc.headings),
            outline(&zh_doc.headings)
        );
    }
}

#[test]
fn each_pair_shows_the_same_commands() {
    for (en, zh) in pairs() {
        let (en_doc, zh_doc) = (parse(&read(&en)), parse(&read(&zh)));
        let only_en: Vec<_> = en_doc.commands.difference(&zh_doc.commands).collect();
        let only_zh: Vec<_> = zh_doc.commands.difference(&en_doc.commands).collect();
        assert!(
            only_en.is_empty() && only_zh.is_empty(),
            "code-block commands differ: only in {en}: {only_en:#?}; only in {zh}: {only_zh:#?}"
        );
        let scripts = |f: &str| scenario_scripts(&read(f));
        assert_eq!(
            scripts(&en),
            scripts(&zh),
            "{en} and {zh} name different scenario scripts"
        );
    }
}

#[test]
fn the_scenario_docs_name_exactly_the_scenario_scripts() {
    let expected: BTreeSet<String> = match scenarios_dir() {
        Some(dir) => fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| scenario_scripts(n).contains(n))
            .collect(),
        None => SCENARIOS.iter().map(|s| s.to_string()).collect(),
    };
    assert!(!expected.is_empty(), "no scenario scripts");
    for doc in ["docs/scenarios.md", "docs/zh-CN/scenarios.md"] {
        let text = read(doc);
        let named = scenario_scripts(&text);
        let missing: Vec<_> = expected.difference(&named).collect();
        let unknown: Vec<_> = named.difference(&expected).collect();
        assert!(missing.is_empty(), "{doc} does not describe {missing:?}");
        assert!(
            unknown.is_empty(),
            "{doc} names scripts that scripts/scenarios/ does not have: {unknown:?}"
        );
        assert!(
            text.contains("scripts/scenarios/all.sh"),
            "{doc} does not name scripts/scenarios/all.sh"
        );
    }
    if let Some(dir) = scenarios_dir() {
        assert!(
            dir.join("all.sh").is_file(),
            "the docs name scripts/scenarios/all.sh"
        );
    }
}

#[test]
fn every_relative_link_in_the_docs_resolves() {
    let mut files = vec![PathBuf::from("README.md"), PathBuf::from("README.zh-CN.md")];
    for dir in ["docs", "docs/zh-CN"] {
        for entry in fs::read_dir(root().join(dir)).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            if name.ends_with(".md") {
                files.push(Path::new(dir).join(name));
            }
        }
    }
    let scenarios_exist = scenarios_dir().is_some();
    let mut broken = Vec::new();
    for file in &files {
        let base = root().join(file).parent().unwrap().to_path_buf();
        for link in parse(&read(file.to_str().unwrap())).links {
            let path = link.split('#').next().unwrap_or("");
            if path.is_empty() || path.contains("://") || path.starts_with("mailto:") {
                continue;
            }
            let target = base.join(path);
            let under_scenarios = target
                .components()
                .collect::<Vec<_>>()
                .windows(2)
                .any(|w| w[0].as_os_str() == "scripts" && w[1].as_os_str() == "scenarios");
            if under_scenarios && !scenarios_exist {
                continue;
            }
            if !target.exists() {
                broken.push(format!("{}: {link}", file.display()));
            }
        }
    }
    assert!(broken.is_empty(), "links to nothing: {broken:#?}");
}

/// GitHub's anchor for each heading: lower case, only letters, digits, `-`, `_` and spaces
/// kept, spaces turned into `-`, a repeated anchor numbered `-1`, `-2`…
fn anchors(headings: &[(usize, String)]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (_, text) in headings {
        let base: String = text
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | ' '))
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let mut anchor = base.clone();
        let mut n = 0;
        while !out.insert(anchor.clone()) {
            n += 1;
            anchor = format!("{base}-{n}");
        }
    }
    out
}

#[test]
fn every_anchor_a_doc_links_to_is_a_heading() {
    let mut files = vec![PathBuf::from("README.md"), PathBuf::from("README.zh-CN.md")];
    for dir in ["docs", "docs/zh-CN"] {
        for entry in fs::read_dir(root().join(dir)).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            if name.ends_with(".md") {
                files.push(Path::new(dir).join(name));
            }
        }
    }
    let mut broken = Vec::new();
    for file in &files {
        for link in parse(&read(file.to_str().unwrap())).links {
            let Some((path, anchor)) = link.split_once('#') else {
                continue;
            };
            if path.contains("://") || !(path.is_empty() || path.ends_with(".md")) {
                continue;
            }
            let target = if path.is_empty() {
                root().join(file)
            } else {
                root().join(file).parent().unwrap().join(path)
            };
            let Ok(text) = fs::read_to_string(&target) else {
                continue; // the other test reports it
            };
            if !anchors(&parse(&text).headings).contains(anchor) {
                broken.push(format!("{}: {link}", file.display()));
            }
        }
    }
    assert!(broken.is_empty(), "links to nothing: {broken:#?}");
}

#[test]
fn each_readme_links_to_the_other_at_the_top() {
    for (file, other) in [
        ("README.md", "README.zh-CN.md"),
        ("README.zh-CN.md", "README.md"),
    ] {
        let text = read(file);
        let top: Vec<&str> = text.lines().take(5).collect();
        assert!(
            top.iter().any(|l| l.contains(&format!("]({other})"))),
            "{file} does not link to {other} in its first lines"
        );
    }
}

#[test]
fn the_parser_sees_headings_commands_and_links_outside_and_inside_code() {
    let doc = parse(
        "# Title\n[a](b.md) and [c](https://x)\n```sh\n# not a heading\ncurl -s x   # comment\n  scripts/a.sh\n```\n## Two\n",
    );
    assert_eq!(
        doc.headings,
        vec![(1, "Title".to_string()), (2, "Two".to_string())]
    );
    assert_eq!(
        doc.commands,
        BTreeSet::from(["curl -s x".to_string(), "scripts/a.sh".to_string()])
    );
    assert_eq!(doc.links, vec!["b.md".to_string(), "https://x".to_string()]);
    assert_eq!(
        scenario_scripts("run scripts/scenarios/01-a-b.sh, then all.sh and x.sh"),
        BTreeSet::from(["01-a-b.sh".to_string()])
    );
}
