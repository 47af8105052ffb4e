//! No module of a crate depends on a sibling that depends back on it, even
//! through others: at every level of each crate's module tree, the
//! "uses something of" relation between sibling subtrees has no cycle.
//! A cycle is where one idea was split across two places (the secrets key
//! inside the secrets service that needs the core that holds the key); the
//! fix is to move the shared piece below both.
//!
//! The graph is read from the source text: every `crate::a::b…` path and
//! every `super::…` path outside `#[cfg(test)]` modules, resolved to the
//! module files that exist. A module and its own ancestors or descendants
//! never count as a cycle (a parent re-exporting its child's types is
//! normal Rust).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use ferry_integration_tests::source::{code, workspace};

/// Module path (e.g. `["store", "engine"]`) of each source file under `src`.
fn modules(src: &Path) -> BTreeMap<Vec<String>, PathBuf> {
    let mut out = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                if path.file_name().is_some_and(|n| n != "bin") {
                    stack.push(path);
                }
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(src).unwrap().with_extension("");
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
            if parts.first().is_some_and(|p| p == "bin") {
                continue;
            }
            out.insert(parts, path);
        }
    }
    out
}

/// The module paths `crate::…` and `super::…` paths in `text` lead to.
fn references(text: &str, here: &[String], known: &BTreeSet<Vec<String>>) -> BTreeSet<Vec<String>> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    for (start, prefix) in text
        .match_indices("crate::")
        .chain(text.match_indices("super::"))
    {
        if start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_') {
            continue; // e.g. `ferry_crate::`
        }
        let mut path: Vec<String> = if prefix == "crate::" {
            Vec::new()
        } else {
            here[..here.len().saturating_sub(1)].to_vec()
        };
        let rest = &text[start + prefix.len()..];
        let mut rest = rest;
        // `super::super::x`
        while let Some(r) = rest.strip_prefix("super::") {
            path.pop();
            rest = r;
        }
        for seg in rest.split("::") {
            let name: String = seg
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if name.is_empty() {
                break;
            }
            let mut next = path.clone();
            next.push(name);
            if !known.contains(&next) {
                break;
            }
            path = next;
            if !seg.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                break;
            }
        }
        if !path.is_empty() {
            out.insert(path);
        }
    }
    out
}

/// Every cycle among sibling subtrees, as lists of module paths.
fn cycles(src: &Path) -> Vec<String> {
    let files = modules(src);
    let known: BTreeSet<Vec<String>> = files.keys().cloned().collect();
    // Edges between files.
    let mut edges: Vec<(Vec<String>, Vec<String>)> = Vec::new();
    for (module, path) in &files {
        for target in references(&code(path), module, &known) {
            edges.push((module.clone(), target));
        }
    }
    let mut found = Vec::new();
    // For each parent, the graph among its children's subtrees.
    let parents: BTreeSet<Vec<String>> = known
        .iter()
        .flat_map(|m| (0..m.len()).map(|n| m[..n].to_vec()))
        .collect();
    for parent in parents {
        let child_of = |m: &Vec<String>| -> Option<String> {
            (m.len() > parent.len() && m.starts_with(&parent)).then(|| m[parent.len()].clone())
        };
        let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (from, to) in &edges {
            if let (Some(a), Some(b)) = (child_of(from), child_of(to))
                && a != b
            {
                graph.entry(a).or_default().insert(b);
            }
        }
        // A cycle exists iff some node reaches itself.
        for start in graph.keys() {
            let mut seen = BTreeSet::new();
            let mut todo: Vec<(String, Vec<String>)> = vec![(start.clone(), vec![start.clone()])];
            while let Some((node, trail)) = todo.pop() {
                for next in graph.get(&node).into_iter().flatten() {
                    if next == start {
                        let mut names: Vec<String> = trail
                            .iter()
                            .map(|n| {
                                let mut p = parent.clone();
                                p.push(n.clone());
                                p.join("::")
                            })
                            .collect();
                        names.push(names[0].clone());
                        found.push(names.join(" -> "));
                    } else if seen.insert(next.clone()) {
                        let mut t = trail.clone();
                        t.push(next.clone());
                        todo.push((next.clone(), t));
                    }
                }
            }
        }
    }
    // One line per cycle, whichever module it was found from.
    let mut unique: BTreeMap<BTreeSet<String>, String> = BTreeMap::new();
    for c in found {
        let key: BTreeSet<String> = c.split(" -> ").map(String::from).collect();
        unique.entry(key).or_insert(c);
    }
    unique.into_values().collect()
}

/// The crates whose module trees are checked.
fn crate_sources() -> Vec<PathBuf> {
    let root = workspace();
    ["common", "coordinator", "agent", "cli", "proto"]
        .iter()
        .map(|c| root.join(c).join("src"))
        .filter(|p| p.is_dir())
        .collect()
}

#[test]
fn no_module_depends_on_a_sibling_that_depends_back() {
    let mut all = Vec::new();
    for src in crate_sources() {
        for c in cycles(&src) {
            all.push(format!("{}: {c}", src.display()));
        }
    }
    assert!(all.is_empty(), "module cycles:\n{}", all.join("\n"));
}

/// The check itself finds a cycle: two sibling files that use each other,
/// one through a submodule.
#[test]
fn a_cycle_between_siblings_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::create_dir_all(src.join("b")).unwrap();
    std::fs::write(src.join("lib.rs"), "pub mod a;\npub mod b;\n").unwrap();
    std::fs::write(src.join("a.rs"), "use crate::b::inner::Thing;\n").unwrap();
    std::fs::write(src.join("b/mod.rs"), "pub mod inner;\n").unwrap();
    std::fs::write(
        src.join("b/inner.rs"),
        "use crate::a;\npub struct Thing;\n#[cfg(test)]\nmod tests { use crate::zzz; }\n",
    )
    .unwrap();
    assert_eq!(cycles(src), vec!["a -> b -> a".to_string()]);
    // Parent and child using each other is not a cycle.
    std::fs::write(src.join("b/inner.rs"), "use super::Other;\n").unwrap();
    std::fs::write(
        src.join("b/mod.rs"),
        "pub mod inner;\npub use inner::Thing;\n",
    )
    .unwrap();
    assert!(cycles(src).is_empty(), "{:?}", cycles(src));
}
