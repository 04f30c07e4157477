//! The documentation travels with the repository and cannot drift: every
//! relative Markdown link resolves, nothing points outside the repository,
//! every reason is in the decision table, and the README's sample output,
//! picture and test command are today's.

use std::path::{Path, PathBuf};
use std::process::Command;

use arbiter::Reason;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize().unwrap()
}

/// Every Markdown file of the repository (build output and fuzz artifacts aside).
fn markdown_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
        entries.sort();
        for p in entries {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            if p.is_dir() {
                if !["target", ".git", "corpus", "artifacts"].contains(&name.as_str()) {
                    walk(&p, out);
                }
            } else if name.ends_with(".md") {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(&repo(), &mut out);
    out
}

/// The targets of `[text](target)` links, outside code blocks.
fn links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_code = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if in_code {
            continue;
        }
        let mut rest = line;
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let Some(end) = after.find(')') else { break };
            out.push(after[..end].to_owned());
            rest = &after[end..];
        }
    }
    out
}

#[test]
fn every_relative_link_in_every_markdown_file_resolves() {
    let files = markdown_files();
    assert!(files.len() >= 5, "{files:?}");
    let mut broken = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        for target in links(&text) {
            if target.contains("://") || target.starts_with("mailto:") || target.starts_with('#') {
                continue;
            }
            let path = target.split('#').next().unwrap();
            let resolved = f.parent().unwrap().join(path);
            let inside = resolved.canonicalize().is_ok_and(|r| r.starts_with(repo()));
            if !inside {
                broken.push(format!("{}: {target}", f.display()));
            }
        }
    }
    assert!(broken.is_empty(), "links that do not resolve inside the repository: {broken:#?}");
}

#[test]
fn no_document_points_outside_the_repository() {
    for f in markdown_files() {
        let text = std::fs::read_to_string(&f).unwrap();
        assert!(!text.contains("../shared") && !text.contains("shared/spec"), "{} points outside", f.display());
    }
}

#[test]
fn the_decision_table_names_every_reason() {
    let table = std::fs::read_to_string(repo().join("docs/decision-table.md")).unwrap();
    for r in Reason::ALL {
        assert!(table.contains(&format!("`{}`", r.name())), "docs/decision-table.md lacks {}", r.name());
    }
}

fn readme() -> String {
    std::fs::read_to_string(repo().join("README.md")).unwrap()
}

fn arbiter(args: &[&str]) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_arbiter")).args(args).current_dir(repo()).output().unwrap();
    String::from_utf8(o.stdout).unwrap()
}

#[test]
fn the_readme_lab_sample_is_todays_output() {
    let readme = readme();
    let start = readme.find("<!-- lab-sample: start -->").unwrap();
    let end = readme.find("<!-- lab-sample: end -->").unwrap();
    let sample: Vec<&str> =
        readme[start..end].lines().filter(|l| !l.starts_with("<!--") && !l.starts_with("```") && *l != "...").collect();
    assert!(sample.len() >= 8);
    let output = arbiter(&["lab"]);
    let lines: Vec<&str> = output.lines().collect();
    let mut at = 0;
    for want in sample {
        match lines[at..].iter().position(|l| *l == want) {
            Some(i) => at += i + 1,
            None => panic!(
                "README's lab sample line is not in `arbiter lab`'s output (in this order):\n{want}\n\
                 Run `arbiter lab` and copy the lines into README.md.\n\n{output}"
            ),
        }
    }
}

#[test]
fn the_readme_picture_is_todays_chain_and_its_caption_counts_its_hops() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    arbiter(&["lab", "--peer", "no-records", "--no-baseline", "--rules", "rules/default.toml", "--dot", d]);
    let fresh = std::fs::read_to_string(dir.path().join("arbiter_no-records_ours-above_tcp_v4_default.dot")).unwrap();
    let shipped = std::fs::read_to_string(repo().join("docs/chain-no-records.dot")).unwrap();
    assert_eq!(
        shipped, fresh,
        "docs/chain-no-records.dot is out of date: run `arbiter lab --peer no-records --no-baseline --rules \
         rules/default.toml --dot DIR` and copy arbiter_no-records_ours-above_tcp_v4_default.{{dot,svg}}"
    );
    let title = shipped.lines().find(|l| l.trim_start().starts_with("label=")).unwrap();
    let hops = title.split("after ").nth(1).unwrap().split(' ').next().unwrap();
    assert!(readme().contains(&format!("delivered after {hops} hops")), "README's caption disagrees with: {title}");
}

#[test]
fn ci_runs_the_readme_test_command() {
    let readme = readme();
    let block = readme.split("```sh\n").nth(1).unwrap().split("```").next().unwrap();
    let lines: Vec<&str> = block.lines().collect();
    assert_eq!(
        lines,
        ["cargo install --locked --path cli", "arbiter lab && arbiter replay fixtures", "cargo test --workspace"]
    );
    let ci = std::fs::read_to_string(repo().join(".ci/run")).unwrap();
    assert!(ci.lines().any(|l| l.trim() == "cargo test --workspace --locked"), "{ci}");
    assert!(ci.contains("scripts/newcomer.sh"), ".ci/run does not run the newcomer script");
}
