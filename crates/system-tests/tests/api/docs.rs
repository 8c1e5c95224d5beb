//! The English and the Chinese docs stay in step: each pair (`README.md` and
//! `README.zh-CN.md`, `docs/X.md` and `docs/zh-CN/X.md`) has the same headings at the same
//! levels in the same order and the same commands in its code blocks; both scenario docs
//! name exactly the scripts in `scripts/scenarios/`; every relative link resolves.
//!
//! And the docs stay true to the code: every test they cite (`crate/tests/file.rs::test`)
//! exists, every figure they quote from the benchmark is one `docs/benchmarks.md` reports,
//! and they speak to readers: no work item, no seed, no path of the machine they were
//! written on.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
};

/// The scenario scripts the docs describe, used while `scripts/scenarios/` does not exist yet.
const SCENARIOS: [&str; 14] = [
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
    "14-cancel-after-payment.sh",
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

/// Every doc the checks read: both READMEs and the Markdown files of `docs/` and `docs/zh-CN/`.
fn doc_files() -> Vec<PathBuf> {
    let mut files = vec![PathBuf::from("README.md"), PathBuf::from("README.zh-CN.md")];
    for dir in ["docs", "docs/zh-CN"] {
        for entry in fs::read_dir(root().join(dir)).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            if name.ends_with(".md") {
                files.push(Path::new(dir).join(name));
            }
        }
    }
    files
}

#[test]
fn every_relative_link_in_the_docs_resolves() {
    let files = doc_files();
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
    let files = doc_files();
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

/// A test as the docs cite it: `message-table/tests/outbox.rs::a_test` (the crate, then the
/// path inside it), a file alone (`pay/tests/admin.rs`), or `::a_test` after a citation of
/// its file in the same line. A name ending in `…` is a prefix.
#[derive(Clone, Debug, PartialEq)]
struct TestRef {
    /// The crate's directory name: `crates/<krate>` or `services/<krate>`.
    krate: String,
    /// `tests` or `src`: where under the crate the file is.
    under: String,
    /// The file's name; it is looked up anywhere under `under`, so a moved file is found.
    file: String,
    name: Option<String>,
}

/// The test citations of one text, each with the line it is on; an error for a citation
/// that names no crate or follows no file.
fn test_refs(text: &str) -> Vec<(usize, Result<TestRef, String>)> {
    let mut out = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let mut last: Option<TestRef> = None;
        for span in line.split('`').skip(1).step_by(2) {
            let found = if let Some(name) = span.strip_prefix("::") {
                match &last {
                    Some(file) => Ok(TestRef {
                        name: Some(name.to_string()),
                        ..file.clone()
                    }),
                    None => Err(format!("`{span}` follows no file")),
                }
            } else if span.contains(".rs::") || (span.contains("/tests/") && span.ends_with(".rs"))
            {
                parse_test_ref(span)
            } else {
                continue;
            };
            if let Ok(found) = &found {
                last = Some(TestRef {
                    name: None,
                    ..found.clone()
                });
            }
            out.push((number + 1, found));
        }
    }
    out
}

fn parse_test_ref(span: &str) -> Result<TestRef, String> {
    let (path, name) = match span.split_once("::") {
        Some((path, name)) => (path, Some(name.to_string())),
        None => (span, None),
    };
    let path = path
        .strip_prefix("crates/")
        .or_else(|| path.strip_prefix("services/"))
        .unwrap_or(path);
    let parts: Vec<&str> = path.split('/').collect();
    match parts.as_slice() {
        [krate, under @ ("tests" | "src"), .., file] if file.ends_with(".rs") => Ok(TestRef {
            krate: krate.to_string(),
            under: under.to_string(),
            file: file.to_string(),
            name,
        }),
        _ => Err(format!(
            "`{span}` does not name its crate (write crate/tests/file.rs::test)"
        )),
    }
}

/// Every file called `name` under `dir`.
fn files_named(dir: &Path, name: &str, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files_named(&path, name, out);
        } else if path.file_name().is_some_and(|n| n == name) {
            out.push(path);
        }
    }
}

/// Why a citation does not resolve, or `None` when it does: the crate exists, a file of
/// that name is under its `tests/` (or `src/`), and, when a test is named, that file has a
/// `fn` (or a `mod`) of that name.
fn unresolved(reference: &TestRef) -> Option<String> {
    let Some(krate) = ["crates", "services"]
        .iter()
        .map(|d| root().join(d).join(&reference.krate))
        .find(|d| d.is_dir())
    else {
        return Some(format!("no crate {}", reference.krate));
    };
    let mut files = Vec::new();
    files_named(&krate.join(&reference.under), &reference.file, &mut files);
    if files.is_empty() {
        return Some(format!(
            "no {} under {}/{}",
            reference.file, reference.krate, reference.under
        ));
    }
    let name = reference.name.as_deref()?;
    let (name, prefix) = match name.strip_suffix('…') {
        Some(start) => (start, true),
        None => (name, false),
    };
    let defines = |source: &str| {
        ["fn ", "mod "].iter().any(|keyword| {
            source
                .match_indices(&format!("{keyword}{name}"))
                .any(|(at, found)| {
                    let next = source[at + found.len()..].chars().next();
                    prefix || !next.is_some_and(|c| c.is_alphanumeric() || c == '_')
                })
        })
    };
    let found = files
        .iter()
        .any(|f| defines(&fs::read_to_string(f).unwrap_or_default()));
    (!found).then(|| format!("no test {name} in {}", reference.file))
}

#[test]
fn every_test_the_docs_cite_exists() {
    let mut broken = Vec::new();
    let mut resolved = 0;
    for file in doc_files() {
        let text = read(file.to_str().unwrap());
        for (line, reference) in test_refs(&text) {
            let problem = match &reference {
                Ok(reference) => unresolved(reference),
                Err(problem) => Some(problem.clone()),
            };
            match problem {
                Some(problem) => broken.push(format!("{}:{line}: {problem}", file.display())),
                None => resolved += 1,
            }
        }
    }
    assert!(
        broken.is_empty(),
        "citations that resolve to nothing: {broken:#?}"
    );
    assert!(resolved > 100, "only {resolved} test citations found");
}

#[test]
fn the_citation_parser_reads_crates_files_tests_and_continuations() {
    let refs: Vec<_> = test_refs(
        "`message-table/tests/outbox.rs::a_test`, `::b_…` and `pay/tests/admin.rs`; `x::y`, `flows.rs::c`\n`::d`",
    )
    .into_iter()
    .map(|(line, r)| (line, r.map(|r| (r.krate, r.under, r.file, r.name))))
    .collect();
    let some = |s: &str| Some(s.to_string());
    let cited = |k: &str, f: &str, n: Option<String>| {
        Ok((k.to_string(), "tests".to_string(), f.to_string(), n))
    };
    assert_eq!(
        refs[0],
        (1, cited("message-table", "outbox.rs", some("a_test")))
    );
    assert_eq!(
        refs[1],
        (1, cited("message-table", "outbox.rs", some("b_…")))
    );
    assert_eq!(refs[2], (1, cited("pay", "admin.rs", None)));
    assert!(
        refs[3].1.is_err(),
        "a file without its crate: {:?}",
        refs[3]
    );
    assert!(
        refs[4].1.is_err(),
        "a continuation on a line of its own: {:?}",
        refs[4]
    );
    assert_eq!(refs.len(), 5);
}

/// The units after which a number is a measured figure (longest first).
const FIGURE_UNITS: [&str; 12] = [
    "orders/s",
    "answers/s",
    "msg/s",
    "条/秒",
    "单/秒",
    "/秒",
    "/s",
    "tps",
    "ms",
    "µs",
    "MiB",
    "%",
];

/// The figures of a text: numbers followed by a unit of rate, time or size, thousands
/// separators removed (`4,588/s` is `4588`).
fn figures(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let starts = chars[i].is_ascii_digit()
            && !(i > 0 && (chars[i - 1].is_alphanumeric() || matches!(chars[i - 1], '_' | '.')));
        if !starts {
            i += 1;
            continue;
        }
        let mut j = i;
        while j < chars.len()
            && (chars[j].is_ascii_digit()
                || (matches!(chars[j], ',' | '.')
                    && chars.get(j + 1).is_some_and(|c| c.is_ascii_digit())))
        {
            j += 1;
        }
        let number: String = chars[i..j].iter().filter(|c| **c != ',').collect();
        let after: String = chars[j..].iter().take(12).collect();
        let after = after.strip_prefix(' ').unwrap_or(&after);
        if FIGURE_UNITS.iter().any(|unit| after.starts_with(unit)) {
            out.insert(number);
        }
        i = j;
    }
    out
}

/// Every number of a text, thousands separators removed.
fn numbers(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_digit() || c == ',' || c == '.'))
        .map(|n| n.trim_matches(|c| c == ',' || c == '.').replace(',', ""))
        .filter(|n| !n.is_empty())
        .collect()
}

/// The rule for figures: a paragraph or a table row that cites `benchmarks.md` quotes only
/// figures that `benchmarks.md` (of the same language) reports.
#[test]
fn figures_quoted_from_the_benchmark_are_the_benchmarks() {
    let mut wrong = Vec::new();
    let mut checked = 0;
    for file in doc_files() {
        let name = file.to_str().unwrap();
        if name.ends_with("benchmarks.md") {
            continue;
        }
        let chinese = name.contains("zh-CN");
        let reported = numbers(&read(if chinese {
            "docs/zh-CN/benchmarks.md"
        } else {
            "docs/benchmarks.md"
        }));
        let text = read(name);
        let mut blocks: Vec<String> = Vec::new();
        let mut paragraph = String::new();
        for line in text.lines() {
            if line.starts_with('|') {
                blocks.push(line.to_string());
            } else if line.trim().is_empty() {
                blocks.push(std::mem::take(&mut paragraph));
            } else {
                paragraph.push_str(line);
                paragraph.push('\n');
            }
        }
        blocks.push(paragraph);
        for block in blocks.iter().filter(|b| b.contains("benchmarks.md")) {
            for figure in figures(block) {
                checked += 1;
                if !reported.contains(&figure) {
                    wrong.push(format!("{name}: {figure} in {block:?}"));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "figures the benchmark does not report: {wrong:#?}"
    );
    assert!(checked > 10, "only {checked} quoted figures found");
}

#[test]
fn the_figure_reader_sees_numbers_with_units_only() {
    assert_eq!(
        figures(
            "4,588/s and 1.5 / 5.4 ms, 49%, 1,465 对 1,201 单/秒, p99 3, v3.5 ms, 16 producers"
        ),
        ["1201", "49", "4588", "5.4"]
            .map(String::from)
            .into_iter()
            .collect()
    );
    assert!(numbers("| 4,677 (3,545) / 19,708 |").contains("3545"));
}

/// Readers cannot see the project's work items or the seeds it started from, nor the
/// machine the docs were written on: the docs cite what a reader can find.
#[test]
fn the_docs_name_no_work_item_no_seed_and_no_local_path() {
    let mut found = Vec::new();
    for file in doc_files() {
        let text = read(file.to_str().unwrap());
        let lower = text.to_lowercase();
        for (number, line) in lower.lines().enumerate() {
            let words: Vec<&str> = line.split_whitespace().collect();
            let names_one = words.windows(2).any(|w| {
                matches!(w[0], "issue" | "seed" | "issues" | "seeds")
                    && w[1].starts_with(|c: char| c.is_ascii_digit())
            });
            // A machine's own folders (built, so this file names none itself).
            let local = ["work", "root", "home"]
                .iter()
                .any(|dir| line.contains(&format!("/{dir}/")))
                || line.contains("种子文章");
            if names_one || local || line.contains("seed scenario") {
                found.push(format!("{}:{}: {line}", file.display(), number + 1));
            }
        }
    }
    assert!(found.is_empty(), "lines a reader cannot follow: {found:#?}");
}
