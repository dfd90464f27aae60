//! The house rules that a reader relies on to find their way: the folders of `src/`
//! import each other without circles, so each can be read knowing only those below it,
//! and every source file says its purpose in its first line.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Folder -> the other folders of `src/` its files name through `crate::`.
fn folder_imports() -> BTreeMap<String, BTreeSet<String>> {
    let src = root().join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let rel = file.strip_prefix(&src).unwrap();
        let mut parts = rel.components();
        let folder = parts
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .into_owned();
        if parts.next().is_none() {
            continue; // lib.rs and main.rs sit above every folder
        }
        let text = fs::read_to_string(&file).unwrap();
        let edges = graph.entry(folder.clone()).or_default();
        for (i, _) in text.match_indices("crate::") {
            let name: String = text[i + 7..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() && name != folder && src.join(&name).is_dir() {
                edges.insert(name);
            }
        }
    }
    graph
}

/// A circle in `graph`, as the folders along it, if there is one.
fn find_circle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut circle = path[at..].to_vec();
            circle.push(node.to_string());
            return Some(circle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(c) = visit(next, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|n| visit(n, graph, &mut Vec::new(), &mut done))
}

#[test]
fn folders_import_each_other_without_circles() {
    let graph = folder_imports();
    assert!(
        graph.len() >= 10,
        "expected the src/ folders, found {graph:?}"
    );
    if let Some(circle) = find_circle(&graph) {
        panic!("import circle between folders: {}", circle.join(" -> "));
    }
}

#[test]
fn the_circle_finder_finds_circles() {
    let edges = |pairs: &[(&str, &str)]| {
        let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (a, b) in pairs {
            g.entry(a.to_string()).or_default().insert(b.to_string());
        }
        g
    };
    let chain = edges(&[("a", "b"), ("b", "c"), ("a", "c")]);
    assert_eq!(find_circle(&chain), None);
    let circle = edges(&[("a", "b"), ("b", "c"), ("c", "a")]);
    assert_eq!(find_circle(&circle).unwrap().len(), 4);
}

#[test]
fn every_source_file_says_its_purpose_first() {
    let mut files = Vec::new();
    for dir in ["src", "tests", "examples"] {
        rust_files(&root().join(dir), &mut files);
    }
    let silent: Vec<String> = files
        .iter()
        .filter(|f| !fs::read_to_string(f).unwrap().starts_with("//!"))
        .map(|f| f.display().to_string())
        .collect();
    assert!(silent.is_empty(), "no `//!` first line: {silent:?}");
}
