//! `docs/figure2.md` maps each rule to code, transcripts and deliberate bugs. This test
//! keeps the map true as the code moves: every `file::function` it names must still
//! define that function, every transcript line it quotes must still be an output line of
//! that scenario, and every deliberate bug it names must still be in
//! `tests/teeth/mutations.txt`.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The text between backticks, in order.
fn quoted(cell: &str) -> Vec<&str> {
    cell.split('`').skip(1).step_by(2).collect()
}

/// A scenario's output lines: those after a `---`, up to the next blank line.
fn output_lines(script: &str) -> BTreeSet<&str> {
    let mut lines = BTreeSet::new();
    let mut in_output = false;
    for line in script.lines() {
        if line == "---" {
            in_output = true;
        } else if line.trim().is_empty() {
            in_output = false;
        } else if in_output {
            lines.insert(line);
        }
    }
    lines
}

/// Whether `source` defines a function called `name`.
fn defines(source: &str, name: &str) -> bool {
    source.match_indices(&format!("fn {name}")).any(|(at, matched)| {
        let next = source[at + matched.len()..].chars().next();
        next.is_some_and(|c| c == '(' || c == '<')
    })
}

#[test]
fn every_rule_in_figure2_md_points_at_code_transcripts_and_bugs_that_exist() {
    let root = root();
    let doc = read(&root.join("docs/figure2.md"));
    let mutations = read(&root.join("tests/teeth/mutations.txt"));
    let bug_names: BTreeSet<&str> = mutations
        .lines()
        .filter_map(|l| l.strip_prefix("name: "))
        .map(|l| l.split(" (").next().unwrap_or(l).trim())
        .collect();
    let mut sources: HashMap<String, String> = HashMap::new();
    let mut scripts: HashMap<String, String> = HashMap::new();
    let mut broken = Vec::new();
    let mut rows = 0;
    let mut functions = 0;
    for line in doc.lines().filter(|l| l.starts_with("| ") && !l.starts_with("| Rule (our words)")) {
        let cells: Vec<&str> = line.trim().trim_matches('|').split(" | ").map(str::trim).collect();
        let [rule, code, shown, bugs] = cells[..] else {
            broken.push(format!("a table row without four cells: {line}"));
            continue;
        };
        rows += 1;
        let row = rule.chars().take(60).collect::<String>();
        for reference in quoted(code) {
            let Some((file, function)) = reference.split_once("::") else {
                broken.push(format!("{row}: code {reference:?} is not file::function"));
                continue;
            };
            let source = sources.entry(file.to_string()).or_insert_with(|| read(&root.join(file)));
            functions += 1;
            if !defines(source, function) {
                broken.push(format!("{row}: {file} no longer defines fn {function}"));
            }
        }
        let mut scenario: Option<String> = None;
        for item in quoted(shown) {
            if item.starts_with("tests/scenarios/") {
                scripts.entry(item.to_string()).or_insert_with(|| read(&root.join(item)));
                scenario = Some(item.to_string());
            } else if let Some(name) = &scenario {
                let script = scripts.get(name).map(String::as_str).unwrap_or_default();
                if !output_lines(script).contains(item) {
                    broken.push(format!("{row}: {name} no longer shows the line {item:?}"));
                }
            } else {
                broken.push(format!("{row}: the line {item:?} names no scenario before it"));
            }
        }
        // Deliberate bugs are kebab-case names; other quoted text there names tests.
        for name in quoted(bugs).into_iter().filter(|t| t.contains('-') && !t.contains(['/', ' ', '.'])) {
            if !bug_names.contains(name) {
                broken.push(format!("{row}: no deliberate bug is called {name:?}"));
            }
        }
        for path in quoted(bugs).into_iter().filter(|t| t.ends_with(".rs")) {
            if !root.join(path).is_file() {
                broken.push(format!("{row}: the test file {path} is gone"));
            }
        }
    }
    assert!(rows >= 70 && functions >= 100, "figure2.md has only {rows} rows naming {functions} functions");
    assert!(broken.is_empty(), "docs/figure2.md is out of date:\n{}", broken.join("\n"));
}
