//! The layering rules of `src/lib.rs`, checked on the source itself: every
//! `crate::…`, `super::…` and `self::…` path in every file under `src/`
//! is resolved to the folder it names, and
//!
//! - `core` names nothing outside `core`;
//! - `proto` (the sans-IO layer) names only `core` and `proto`;
//! - `config` names only `core` and `config`;
//! - `io` names anything but the composition root (`server`);
//! - and the folders (`core`, `config`, `server`, each `proto/<x>` and
//!   `io/<x>`) depend on each other without a cycle.
//!
//! A new import that breaks a rule fails this test with the file and the
//! path, so the layers stay one-way without a second crate.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

/// Which top-level layers each layer may name.
fn allowed(layer: &str) -> &'static [&'static str] {
    match layer {
        "core" => &["core"],
        "proto" => &["core", "proto"],
        "config" => &["core", "config"],
        "io" => &["core", "proto", "config", "io"],
        "server" => &["core", "proto", "config", "io", "server"],
        _ => &[],
    }
}

#[test]
fn layers_point_one_way_and_folders_form_no_cycle() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut violations = Vec::new();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in rust_files(&root) {
        let rel = file.strip_prefix(&root).expect("under src");
        let module = module_path(rel);
        let Some(layer) = module.first().map(String::as_str) else { continue };
        if !["core", "proto", "config", "io", "server"].contains(&layer) {
            continue; // lib.rs and main.rs only declare and start
        }
        let text = fs::read_to_string(&file).expect("readable source");
        let from = unit(&module);
        for path in referenced_paths(&strip_comments_and_strings(&text), &module) {
            let Some(target) = path.first() else { continue };
            if !["core", "proto", "config", "io", "server"].contains(&target.as_str()) {
                continue; // a crate-root item such as a macro
            }
            if !allowed(layer).contains(&target.as_str()) {
                violations.push(format!("{}: names crate::{}", rel.display(), path.join("::")));
            }
            let to = unit(&path);
            if to != from {
                edges.entry(from.clone()).or_default().insert(to);
            }
        }
    }
    assert!(
        violations.is_empty(),
        "imports that run against the layers:\n{}",
        violations.join("\n")
    );
    if let Some(cycle) = find_cycle(&edges) {
        panic!("folders that depend on each other in a cycle: {}", cycle.join(" -> "));
    }
}

/// STYLE.md rule 10: Fx hashing only for keys the server makes. A map
/// keyed by text (user ids, pages, channel names) holds what clients chose,
/// and Fx collisions are easy to make, so those maps keep std's randomly
/// seeded SipHash.
#[test]
fn text_keys_are_never_fx_hashed() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut found = Vec::new();
    for file in rust_files(&root) {
        let text = strip_comments_and_strings(&fs::read_to_string(&file).expect("readable"));
        for (at, _) in text.match_indices("FxHash") {
            let rest = &text[at..];
            let Some(open) = rest.find('<').filter(|o| *o <= "FxHashMap".len()) else { continue };
            let key = rest[open + 1..].trim_start();
            if ["Box<str>", "String", "&str", "Box<[u8]>", "Vec<u8>", "(AppIdx, Box<str>)"]
                .iter()
                .any(|k| key.starts_with(k))
            {
                let line = text[..at].matches('\n').count() + 1;
                let rel = file.strip_prefix(&root).expect("under src");
                found.push(format!("{}:{line}", rel.display()));
            }
        }
    }
    assert!(found.is_empty(), "Fx-hashed maps keyed by client text: {}", found.join(", "));
}

#[test]
fn the_checker_sees_grouped_relative_and_inline_paths() {
    let module: Vec<String> = ["proto", "pusher", "shard"].map(String::from).into();
    let text = strip_comments_and_strings(
        "use crate::{core::{AppIdx, json}, proto::ws::codec};\n\
         use super::super::index::ChannelIndex; // crate::io::nothing\n\
         fn f() { let s = \"crate::io::fake\"; crate::config::Config::default(); }",
    );
    let found: BTreeSet<String> =
        referenced_paths(&text, &module).into_iter().map(|p| p.join("::")).collect();
    let expected = [
        "core::AppIdx",
        "core::json",
        "proto::ws::codec",
        "proto::index::ChannelIndex",
        "config::Config::default",
    ];
    assert_eq!(found, expected.into_iter().map(String::from).collect());
    let mut edges = BTreeMap::new();
    edges.insert("a".to_owned(), BTreeSet::from(["b".to_owned()]));
    edges.insert("b".to_owned(), BTreeSet::from(["a".to_owned()]));
    assert!(find_cycle(&edges).is_some());
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).expect("readable dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// `proto/pusher/shard.rs` → `[proto, pusher, shard]`; `io/mod.rs` → `[io]`.
fn module_path(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> =
        rel.iter().map(|p| p.to_string_lossy().trim_end_matches(".rs").to_owned()).collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    if parts.len() == 1 && (parts[0] == "lib" || parts[0] == "main") {
        parts.clear();
    }
    parts
}

/// The folder a path belongs to: `core`, `config` and `server` whole,
/// `proto` and `io` by their first level (`proto/pusher`, `io/shard`).
fn unit(path: &[String]) -> String {
    match path {
        [layer, sub, ..] if layer == "proto" || layer == "io" => format!("{layer}/{sub}"),
        [layer, ..] => layer.clone(),
        [] => String::new(),
    }
}

/// Source text without comments and without the contents of string and
/// character literals, so that only code is searched.
fn strip_comments_and_strings(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                let mut depth = 0;
                while i < bytes.len() {
                    if bytes[i] == b'/' && bytes.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        i += 2;
                    } else if bytes[i] == b'*' && bytes.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
            }
            b'r' if bytes.get(i + 1) == Some(&b'#') || bytes.get(i + 1) == Some(&b'"') => {
                // A raw string r"…" or r#"…"#, unless `r` ends an identifier.
                let ident_before =
                    i > 0 && (bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
                let hashes = bytes[i + 1..].iter().take_while(|b| **b == b'#').count();
                if ident_before || bytes.get(i + 1 + hashes) != Some(&b'"') {
                    out.push('r');
                    i += 1;
                    continue;
                }
                i += 2 + hashes;
                let close: Vec<u8> =
                    std::iter::once(b'"').chain(std::iter::repeat_n(b'#', hashes)).collect();
                while i < bytes.len() && !bytes[i..].starts_with(&close) {
                    i += 1;
                }
                i += close.len();
                out.push_str("\"\"");
            }
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
                out.push_str("\"\"");
            }
            b'\'' => {
                // A char literal ('x', '\n', '\u{..}') or a lifetime ('a).
                let end = bytes[i + 1..].iter().take(12).position(|b| *b == b'\'');
                match end {
                    Some(n) if n == 1 || bytes.get(i + 1) == Some(&b'\\') => {
                        i += n + 2;
                        out.push_str("' '");
                    }
                    _ => {
                        out.push('\'');
                        i += 1;
                    }
                }
            }
            _ => {
                let ch = text[i..].chars().next().expect("in bounds");
                out.push(ch);
                i += ch.len_utf8();
            }
        }
    }
    out
}

/// Every path, resolved from the crate root, that `text` names through
/// `crate::`, `super::` or `self::` (only the `use` forms for `self::`).
fn referenced_paths(text: &str, module: &[String]) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let starts_word = i == 0
            || !(bytes[i - 1].is_ascii_alphanumeric()
                || bytes[i - 1] == b'_'
                || bytes[i - 1] == b':');
        if !starts_word {
            i += 1;
            continue;
        }
        let rest = &bytes[i..];
        let (base, consumed) = if rest.starts_with(b"crate::") {
            (Vec::new(), "crate::".len())
        } else if rest.starts_with(b"super::") || rest.starts_with(b"self::") {
            let mut base = module.to_vec();
            let mut n = 0;
            loop {
                if bytes[i + n..].starts_with(b"super::") {
                    base.pop();
                    n += "super::".len();
                } else if n == 0 && bytes[i..].starts_with(b"self::") {
                    n += "self::".len();
                } else {
                    break;
                }
            }
            (base, n)
        } else {
            i += 1;
            continue;
        };
        let mut cursor = i + consumed;
        for tail in use_tree(text, &mut cursor) {
            let mut path = base.clone();
            path.extend(tail);
            out.push(path);
        }
        i = cursor.max(i + 1);
    }
    out
}

/// Parses a path or a `{…}` group at `*at`; returns every leaf path.
fn use_tree(text: &str, at: &mut usize) -> Vec<Vec<String>> {
    skip_space(text, at);
    if text[*at..].starts_with('{') {
        *at += 1;
        let mut all = Vec::new();
        loop {
            skip_space(text, at);
            if *at >= text.len() || text[*at..].starts_with('}') {
                *at += 1;
                return all;
            }
            let before = *at;
            all.extend(use_tree(text, at));
            if *at == before {
                *at += 1; // a glob (`*`) or anything else that is not a path
            }
            skip_space(text, at);
            if text[*at..].starts_with(',') {
                *at += 1;
            }
        }
    }
    let mut segments = Vec::new();
    loop {
        let ident: String =
            text[*at..].chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
        if ident.is_empty() {
            break;
        }
        *at += ident.len();
        if ident != "self" {
            segments.push(ident);
        }
        if text[*at..].starts_with("::") {
            *at += 2;
            if text[*at..].starts_with('{') {
                return use_tree(text, at)
                    .into_iter()
                    .map(|tail| segments.iter().cloned().chain(tail).collect())
                    .collect();
            }
        } else {
            break;
        }
    }
    // `as name` after a leaf is not part of the path.
    vec![segments]
}

fn skip_space(text: &str, at: &mut usize) {
    while *at < text.len() && text.as_bytes()[*at].is_ascii_whitespace() {
        *at += 1;
    }
}

/// A cycle in the folder graph, if there is one.
fn find_cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(node.to_owned(), 1);
        stack.push(node.to_owned());
        for next in edges.get(node).into_iter().flatten() {
            match state.get(next.as_str()) {
                Some(1) => {
                    let from = stack.iter().position(|n| n == next).unwrap_or(0);
                    let mut cycle = stack[from..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                Some(_) => {}
                None => {
                    if let Some(cycle) = visit(next, edges, state, stack) {
                        return Some(cycle);
                    }
                }
            }
        }
        stack.pop();
        state.insert(node.to_owned(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for node in edges.keys() {
        if !state.contains_key(node.as_str()) {
            let mut stack = Vec::new();
            if let Some(cycle) = visit(node, edges, &mut state, &mut stack) {
                return Some(cycle);
            }
        }
    }
    None
}
