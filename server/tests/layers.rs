//! The dependency rule of ARCHITECTURE.md, checked: every `crate::` and
//! `super::` path in `server/src` must point at a module on a lower layer
//! of the table under "Layers", and the pure modules listed there may
//! reach only the leaf layer. The table is read from ARCHITECTURE.md
//! itself, so the document and the check cannot drift apart.
//!
//! This reads source text rather than compiler output: comments and
//! string literals are skipped, `use` trees with braces are expanded, and
//! `super::` is resolved from the file's place in the module tree. Test
//! modules inside source files are held to the same rule.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The crate's modules as ARCHITECTURE.md layers them.
struct Rule {
    /// Each top-level module's layer, 0 being the leaf layer.
    layer: BTreeMap<String, usize>,
    /// Modules (full paths such as `ingest::decode`) that may import only
    /// the leaf layer.
    pure: BTreeSet<String>,
}

fn read_rule(architecture: &str) -> Rule {
    let section = architecture
        .split("\n## Layers")
        .nth(1)
        .expect("ARCHITECTURE.md has a \"## Layers\" section");
    let block = section
        .split("```text\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("the Layers section has a ```text block");
    let mut layer = BTreeMap::new();
    let mut pure = BTreeSet::new();
    for (n, line) in block
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .enumerate()
    {
        if let Some(list) = line.strip_prefix("pure:") {
            pure.extend(list.split_whitespace().map(str::to_owned));
            continue;
        }
        for module in line.split_whitespace() {
            assert!(
                layer.insert(module.to_owned(), n).is_none(),
                "{module} is on two layers"
            );
        }
    }
    Rule { layer, pure }
}

/// Every `.rs` file under `dir`.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module a file defines, as path segments: `edge/session.rs` is
/// `["edge", "session"]`, `edge/mod.rs` is `["edge"]`, `lib.rs` is `[]`.
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file
        .strip_prefix(src)
        .expect("under src")
        .with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

/// The text with comments, string and character literals blanked out, so
/// that only code is searched for paths.
fn code_only(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push(' ');
        } else if c == 'r'
            && (next == Some('"') || next == Some('#'))
            && !chars
                .get(i.wrapping_sub(1))
                .is_some_and(|p| p.is_alphanumeric() || *p == '_')
        {
            // A raw string: r"..." or r#"..."#, with any number of #.
            let mut j = i + 1;
            let mut hashes = 0;
            while chars.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if chars.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            loop {
                if j >= chars.len() {
                    break;
                }
                if chars[j] == '"' && (0..hashes).all(|k| chars.get(j + 1 + k) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            out.push_str("\"\"");
            i = j;
        } else if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == '\'' {
            // A character literal ('x', '\n', '\u{..}'), not a lifetime.
            let close = if next == Some('\\') {
                (i + 2..chars.len().min(i + 12)).find(|&k| chars[k] == '\'')
            } else if chars.get(i + 2) == Some(&'\'') {
                Some(i + 2)
            } else {
                None
            };
            match close {
                Some(k) => {
                    out.push_str("' '");
                    i = k + 1;
                }
                None => {
                    out.push(c);
                    i += 1;
                }
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// Expands one `use` tree (or a plain path) starting at `text`, such as
/// `crate::{a::b, c::{d, e}}`, into full paths of segments.
fn expand(text: &str) -> Vec<Vec<String>> {
    fn tree(prefix: &[String], s: &str, out: &mut Vec<Vec<String>>) {
        let s = s.trim();
        if let Some(open) = s.find('{') {
            let head: Vec<String> = s[..open]
                .split("::")
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(str::to_owned)
                .collect();
            let inner = &s[open + 1..s.rfind('}').unwrap_or(s.len())];
            let mut depth = 0;
            let mut start = 0;
            let mut base = prefix.to_vec();
            base.extend(head);
            for (i, ch) in inner.char_indices() {
                match ch {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        tree(&base, &inner[start..i], out);
                        start = i + 1;
                    }
                    _ => {}
                }
            }
            tree(&base, &inner[start..], out);
        } else {
            let path = s.split(" as ").next().unwrap_or(s);
            let mut full = prefix.to_vec();
            full.extend(
                path.split("::")
                    .map(str::trim)
                    .filter(|p| !p.is_empty() && *p != "*" && *p != "self")
                    .map(str::to_owned),
            );
            if !full.is_empty() {
                out.push(full);
            }
        }
    }
    let mut out = Vec::new();
    tree(&[], text, &mut out);
    out
}

/// Every path in `code` that starts with `crate::` or `super::`, resolved
/// to full module paths from the crate root.
fn crate_paths(code: &str, module: &[String]) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    let bytes = code.as_bytes();
    for start in ["crate::", "super::"] {
        let mut from = 0;
        while let Some(at) = code[from..].find(start) {
            let at = from + at;
            from = at + start.len();
            if at > 0 && (bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_') {
                continue;
            }
            if at > 1 && &code[at - 2..at] == "::" {
                continue;
            }
            // The path runs to the end of its `use` tree or expression.
            let mut end = at;
            let mut depth = 0;
            for (i, ch) in code[at..].char_indices() {
                match ch {
                    '{' => depth += 1,
                    '}' if depth > 0 => depth -= 1,
                    c if depth == 0
                        && !(c.is_alphanumeric() || c == '_' || c == ':' || c == '*') =>
                    {
                        end = at + i;
                        break;
                    }
                    _ => {}
                }
                end = at + i + ch.len_utf8();
            }
            for path in expand(&code[at..end]) {
                let mut resolved = module.to_vec();
                let mut rest = path.as_slice();
                match rest.first().map(String::as_str) {
                    Some("crate") => {
                        resolved.clear();
                        rest = &rest[1..];
                    }
                    Some("super") => {
                        while rest.first().map(String::as_str) == Some("super") {
                            resolved.pop();
                            rest = &rest[1..];
                        }
                    }
                    _ => continue,
                }
                resolved.extend(rest.iter().cloned());
                found.push(resolved);
            }
        }
    }
    found
}

/// Crates that do I/O, which pure modules must not touch.
const IO_CRATES: &[&str] = &[
    "tokio",
    "sea_orm",
    "axum",
    "rumqttd",
    "reqwest",
    "leptos_axum",
];

/// The violations of `rule` in the crate at `src`.
fn violations(src: &Path, rule: &Rule) -> Vec<String> {
    let mut files = Vec::new();
    sources(src, &mut files);
    files.sort();
    let mut problems = Vec::new();
    for file in files {
        let module = module_of(src, &file);
        // The crate root and the binary wire everything together.
        let Some(top) = module.first() else {
            continue;
        };
        let Some(&own_layer) = rule.layer.get(top) else {
            problems.push(format!(
                "{}: module `{top}` is not on any layer in ARCHITECTURE.md",
                file.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(&file).expect("read source");
        let joined = module.join("::");
        let pure = rule.pure.contains(&joined);
        let mut seen = BTreeSet::new();
        for path in crate_paths(&code_only(&text), &module) {
            // `super::*` in a test module inside the file names the file's
            // own module (or an ancestor, read from the file's place):
            // the module itself, which is no dependency.
            if module.starts_with(&path) {
                continue;
            }
            let Some(target) = path.first() else {
                continue;
            };
            // Items of the crate root (`crate::Listeners`) are not modules.
            let Some(&target_layer) = rule.layer.get(target) else {
                continue;
            };
            let upward = target != top && target_layer >= own_layer;
            // A pure module reaches only the leaf layer, itself, and other
            // pure modules.
            let full = path.join("::");
            let impure = pure
                && target_layer > 0
                && !path.starts_with(&module)
                && !rule
                    .pure
                    .iter()
                    .any(|p| full == *p || full.starts_with(&format!("{p}::")));
            if (upward || impure) && seen.insert(full.clone()) {
                problems.push(format!(
                    "{} (`{joined}`, layer {own_layer}{}) uses `{full}` (layer {target_layer})",
                    file.display(),
                    if pure { ", pure" } else { "" },
                ));
            }
        }
        if pure {
            let code = code_only(&text);
            for io in IO_CRATES {
                if code
                    .split(|c: char| !(c.is_alphanumeric() || c == '_'))
                    .any(|word| word == *io)
                {
                    problems.push(format!(
                        "{} (`{joined}`, pure) uses the I/O crate `{io}`",
                        file.display()
                    ));
                }
            }
        }
    }
    problems
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn every_import_points_down_the_layers_of_architecture_md() {
    let architecture =
        std::fs::read_to_string(root().join("../ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let rule = read_rule(&architecture);
    let problems = violations(&root().join("src"), &rule);
    assert!(
        problems.is_empty(),
        "imports against the dependency rule (ARCHITECTURE.md, \"Layers\"):\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_reader_finds_paths_in_use_trees_and_code_but_not_in_text() {
    let code = code_only(
        r##"
        use crate::{store::{Store, writer}, metrics::Metrics as M};
        use super::super::clock;
        // use crate::live::Hub;
        let s = "crate::http::AppState";
        let r = r#"crate::edge"#;
        let c = '"'; let lifetime: &'static str = "";
        crate::clock::now_ms();
        x::crate::not_this();
        "##,
    );
    let module = vec!["history".to_owned(), "buckets".to_owned()];
    let found: BTreeSet<String> = crate_paths(&code, &module)
        .into_iter()
        .map(|p| p.join("::"))
        .collect();
    let expected: BTreeSet<String> = [
        "store::Store",
        "store::writer",
        "metrics::Metrics",
        "clock",
        "clock::now_ms",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    assert_eq!(found, expected);
}

#[test]
fn an_upward_import_is_caught() {
    let dir = tempfile::tempdir().expect("dir");
    let src = dir.path();
    std::fs::create_dir_all(src.join("store")).expect("mkdir");
    std::fs::write(
        src.join("lib.rs"),
        "pub mod clock; pub mod store; pub mod live;",
    )
    .expect("lib");
    std::fs::write(src.join("clock.rs"), "pub fn now_ms() -> i64 { 0 }").expect("clock");
    std::fs::write(src.join("live.rs"), "use crate::store::Store;").expect("live");
    std::fs::write(
        src.join("store/mod.rs"),
        "pub mod writer;\npub struct Store;",
    )
    .expect("store");
    std::fs::write(
        src.join("store/writer.rs"),
        "use super::Store;\nuse crate::clock::now_ms;\nfn f() { crate::live::x(); tokio::spawn(g()); }",
    )
    .expect("writer");
    let rule =
        read_rule("# A\n\n## Layers\n```text\nclock\nstore\nlive\npure: store::writer\n```\n");
    let problems = violations(src, &rule);
    assert_eq!(problems.len(), 3, "{problems:#?}");
    assert!(problems[0].contains("uses `live::x`"), "{problems:#?}");
    assert!(problems[1].contains("uses `store::Store`"), "{problems:#?}");
    assert!(
        problems[2].contains("the I/O crate `tokio`"),
        "{problems:#?}"
    );
}
