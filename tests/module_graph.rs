//! The library's layout holds: no module imports one that imports it back.
//!
//! Every `.rs` file of the library (not the binaries) is read, comments are
//! dropped and each `crate::`/`super::` path it names (in `use` trees and in
//! code) is an edge from its module to the one it names. The modules are the
//! children of the folders that group the library (`agent::supervisor`,
//! `common::grpc_server`, `security::roles`, ...), so an edge between
//! siblings and one across folders count alike, and `proto`; a cycle fails,
//! naming the files whose imports close it. The folders also keep their
//! direction: `common` and `security` import no daemon, the coordinator
//! never imports the agent, and no daemon imports `testkit`. And every
//! source file, the programs' too, stays under 600 lines.
use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

/// The folders `lib.rs` groups the library into.
const GROUPS: [&str; 5] = ["agent", "common", "coordinator", "security", "testkit"];

/// Edges between top-level folders that must never exist: shared code knows
/// no daemon, the daemons do not know each other's insides, and no daemon
/// uses the test tooling.
const FORBIDDEN: [(&str, &str); 8] = [
    ("common", "agent"),
    ("common", "coordinator"),
    ("security", "agent"),
    ("security", "coordinator"),
    ("coordinator", "agent"),
    ("agent", "testkit"),
    ("coordinator", "testkit"),
    ("common", "testkit"),
];

/// Where a module edge comes from: the file that names the other module.
type Edges = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

fn main_src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The library's files (`with_bins`: the programs' too).
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    walk(dir, false, out)
}

fn walk(dir: &Path, with_bins: bool, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            if with_bins || path.file_name().is_some_and(|n| n != "bin") {
                walk(&path, with_bins, out);
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `src/agent/supervisor/exits.rs` → `["agent", "supervisor", "exits"]`.
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).expect("under src");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().expect("a file name");
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" && stem != "lib" {
        parts.push(stem.to_string());
    }
    parts
}

/// The text without comments, strings or char literals (so a path in a doc
/// link or a log message is no import).
fn code_only(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            let mut depth = 0;
            while i < b.len() {
                if b[i..].starts_with(b"/*") {
                    depth += 1;
                    i += 2;
                } else if b[i..].starts_with(b"*/") {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if b[i] == b'r' && (b.get(i + 1) == Some(&b'#') || b.get(i + 1) == Some(&b'"')) {
            // raw string r"..." or r#"..."#
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&b'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&b'"') {
                out.push(b[i] as char);
                i += 1;
                continue;
            }
            j += 1;
            loop {
                if j >= b.len() {
                    break;
                }
                if b[j] == b'"'
                    && b[j + 1..]
                        .iter()
                        .take(hashes)
                        .filter(|&&c| c == b'#')
                        .count()
                        == hashes
                {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            out.push_str("\"\"");
            i = j;
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if b[i] == b'\'' {
            // a char literal ('x', '\n', '\'') or a lifetime ('a)
            if b.get(i + 1) == Some(&b'\\') {
                i += 2;
                while i < b.len() && b[i] != b'\'' {
                    i += 1;
                }
                i += 1;
            } else if b.get(i + 2) == Some(&b'\'') {
                i += 3;
            } else {
                out.push('\'');
                i += 1;
            }
            out.push(' ');
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

fn tokens(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = code.char_indices().peekable();
    while let Some((start, c)) = chars.next() {
        if c.is_alphanumeric() || c == '_' {
            let mut end = start + c.len_utf8();
            while let Some(&(i, n)) = chars.peek() {
                if n.is_alphanumeric() || n == '_' {
                    end = i + n.len_utf8();
                    chars.next();
                } else {
                    break;
                }
            }
            out.push(code[start..end].to_string());
        } else if c == ':' && chars.peek().is_some_and(|&(_, n)| n == ':') {
            chars.next();
            out.push("::".into());
        } else if !c.is_whitespace() {
            out.push(c.to_string());
        }
    }
    out
}

/// Every path a `use` tree names, flattened: `a::{b, c::d}` → `a::b`, `a::c::d`.
fn use_tree(toks: &[String], mut i: usize, prefix: &[String], out: &mut Vec<Vec<String>>) -> usize {
    let mut path = prefix.to_vec();
    loop {
        match toks.get(i).map(String::as_str) {
            Some("{") => {
                i += 1;
                while toks.get(i).is_some_and(|t| t != "}") {
                    i = use_tree(toks, i, &path, out);
                    if toks.get(i).is_some_and(|t| t == ",") {
                        i += 1;
                    }
                }
                return i + 1;
            }
            Some("::") => i += 1,
            Some(t) if t == "," || t == "}" || t == ";" => {
                out.push(path);
                return i;
            }
            Some("as") => i += 2,
            Some(t) => {
                path.push(t.to_string());
                i += 1;
            }
            None => {
                out.push(path);
                return i;
            }
        }
    }
}

/// The modules a file names, resolved to absolute module paths.
fn named_paths(module: &[String], code: &str) -> Vec<Vec<String>> {
    let toks = tokens(code);
    let mut raw = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        if toks[i] == "use" {
            i = use_tree(&toks, i + 1, &[], &mut raw);
            continue;
        }
        let starts_path = (toks[i] == "crate" || toks[i] == "super")
            && toks.get(i + 1).is_some_and(|t| t == "::")
            && (i == 0 || toks[i - 1] != "::");
        if starts_path {
            let mut path = vec![toks[i].clone()];
            let mut j = i + 1;
            while toks.get(j).is_some_and(|t| t == "::")
                && toks
                    .get(j + 1)
                    .is_some_and(|t| t.chars().all(|c| c.is_alphanumeric() || c == '_'))
            {
                path.push(toks[j + 1].clone());
                j += 2;
            }
            raw.push(path);
            i = j;
            continue;
        }
        i += 1;
    }
    raw.into_iter()
        .filter_map(|p| {
            let mut base: Vec<String> = match p.first().map(String::as_str) {
                Some("crate") => Vec::new(),
                Some("super") => module.to_vec(),
                _ => return None,
            };
            let mut rest = &p[..];
            if rest[0] == "crate" {
                rest = &rest[1..];
            }
            while rest.first().is_some_and(|s| s == "super") {
                base.pop();
                rest = &rest[1..];
            }
            base.extend(rest.iter().filter(|s| *s != "self" && *s != "*").cloned());
            Some(base)
        })
        .collect()
}

/// The node a module path counts as: a group's direct child
/// (`agent::supervisor`), or a top-level module outside the groups (`proto`).
fn node(path: &[String], known: &BTreeSet<Vec<String>>) -> Option<String> {
    let first = path.first()?;
    if !GROUPS.contains(&first.as_str()) {
        return known.contains(&vec![first.clone()]).then(|| first.clone());
    }
    let child = path.get(1)?;
    known
        .contains(&vec![first.clone(), child.clone()])
        .then(|| format!("{first}::{child}"))
}

fn add(edges: &mut Edges, from: &str, to: &str, file: &str) {
    edges
        .entry(from.to_string())
        .or_default()
        .entry(to.to_string())
        .or_default()
        .insert(file.to_string());
}

/// Both graphs: between the modules of the groups (siblings and across
/// groups), and between the groups themselves.
fn graphs() -> (Edges, Edges) {
    let src = main_src();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let known: BTreeSet<Vec<String>> = files.iter().map(|f| module_of(&src, f)).collect();
    let mut modules = Edges::new();
    let mut groups = Edges::new();
    for file in &files {
        let module = module_of(&src, file);
        let text = fs::read_to_string(file).expect("read a source file");
        let shown = file.strip_prefix(&src).unwrap().display().to_string();
        for target in named_paths(&module, &code_only(&text)) {
            let (Some(from_group), Some(to_group)) = (module.first(), target.first()) else {
                continue;
            };
            if from_group != to_group
                && GROUPS.contains(&from_group.as_str())
                && GROUPS.contains(&to_group.as_str())
            {
                add(&mut groups, from_group, to_group, &shown);
            }
            if let (Some(from), Some(to)) = (node(&module, &known), node(&target, &known))
                && from != to
            {
                add(&mut modules, &from, &to, &shown);
            }
        }
    }
    (modules, groups)
}

/// The strongly connected parts of the graph with more than one node
/// (Tarjan), each as one cycle through it.
fn cycles(edges: &Edges) -> Vec<Vec<String>> {
    struct Walk<'a> {
        edges: &'a Edges,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        parts: Vec<Vec<&'a str>>,
    }
    fn connect<'a>(w: &mut Walk<'a>, n: &'a str) {
        let i = w.index.len();
        w.index.insert(n, i);
        w.low.insert(n, i);
        w.stack.push(n);
        w.on_stack.insert(n);
        for next in w.edges.get(n).into_iter().flat_map(|m| m.keys()) {
            let next = next.as_str();
            if !w.index.contains_key(next) {
                connect(w, next);
                let l = w.low[next].min(w.low[n]);
                w.low.insert(n, l);
            } else if w.on_stack.contains(next) {
                let l = w.index[next].min(w.low[n]);
                w.low.insert(n, l);
            }
        }
        if w.low[n] == w.index[n] {
            let mut part = Vec::new();
            while let Some(m) = w.stack.pop() {
                w.on_stack.remove(m);
                part.push(m);
                if m == n {
                    break;
                }
            }
            if part.len() > 1 {
                w.parts.push(part);
            }
        }
    }
    let mut w = Walk {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        parts: Vec::new(),
    };
    for n in edges.keys() {
        if !w.index.contains_key(n.as_str()) {
            connect(&mut w, n);
        }
    }
    // One cycle through each part: a shortest way back to its first node.
    w.parts
        .iter()
        .map(|part| {
            let inside: BTreeSet<&str> = part.iter().copied().collect();
            let start = *inside.iter().next().unwrap();
            let mut came_from: BTreeMap<&str, &str> = BTreeMap::new();
            let mut queue = std::collections::VecDeque::from([start]);
            'search: while let Some(n) = queue.pop_front() {
                for next in edges.get(n).into_iter().flat_map(|m| m.keys()) {
                    let next = next.as_str();
                    if next == start {
                        came_from.insert(start, n);
                        break 'search;
                    }
                    if inside.contains(next) && !came_from.contains_key(next) {
                        came_from.insert(next, n);
                        queue.push_back(next);
                    }
                }
            }
            let mut cycle = vec![start.to_string()];
            let mut at = came_from[start];
            while at != start {
                cycle.push(at.to_string());
                at = came_from[at];
            }
            cycle.push(start.to_string());
            cycle.reverse();
            cycle
        })
        .collect()
}

fn explain(edges: &Edges, cycle: &[String]) -> String {
    cycle
        .windows(2)
        .map(|w| {
            let files: Vec<_> = edges[&w[0]][&w[1]].iter().cloned().collect();
            format!("{} -> {} (in {})", w[0], w[1], files.join(", "))
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let (modules, _) = graphs();
    let found: Vec<String> = cycles(&modules)
        .iter()
        .map(|c| explain(&modules, c))
        .collect();
    if std::env::var_os("MODULE_GRAPH_EDGES").is_some() {
        for (from, to) in &modules {
            for (to, files) in to {
                eprintln!("{from} -> {to} {files:?}");
            }
        }
    }
    assert!(found.is_empty(), "import cycles:\n{}", found.join("\n"));
}

#[test]
fn shared_code_knows_no_daemon_and_no_daemon_uses_the_testkit() {
    let (_, groups) = graphs();
    let wrong: Vec<String> = FORBIDDEN
        .iter()
        .filter_map(|(from, to)| {
            let files = groups.get(*from)?.get(*to)?;
            Some(format!(
                "{from} imports {to} (in {})",
                files.iter().cloned().collect::<Vec<_>>().join(", ")
            ))
        })
        .collect();
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// Longest a source file may grow: past it, a file is split into modules
/// named after what they own.
const MAX_LINES: usize = 600;

#[test]
fn every_source_file_is_under_600_lines() {
    let src = main_src();
    let mut files = Vec::new();
    walk(&src, true, &mut files);
    assert!(
        files.len() > 100,
        "the walk found the sources: {}",
        files.len()
    );
    let long: Vec<String> = files
        .iter()
        .filter_map(|f| {
            let lines = fs::read_to_string(f)
                .expect("read a source file")
                .lines()
                .count();
            (lines >= MAX_LINES).then(|| format!("{} has {lines} lines", f.display()))
        })
        .collect();
    assert!(long.is_empty(), "{}", long.join("\n"));
}

/// The check sees what it is meant to see: a known edge is found, and a
/// cycle built by hand is reported.
#[test]
fn the_check_finds_edges_and_cycles() {
    let (modules, groups) = graphs();
    assert!(
        modules["agent::daemon"].contains_key("agent::supervisor"),
        "the agent's daemon wires the supervisor: {modules:?}"
    );
    assert!(
        groups["agent"].contains_key("common"),
        "the agent uses the shared code: {groups:?}"
    );
    let mut edges = Edges::new();
    add(&mut edges, "a", "b", "a.rs");
    add(&mut edges, "b", "c", "b.rs");
    add(&mut edges, "d", "d2", "d.rs");
    add(&mut edges, "d2", "d", "d2.rs");
    assert_eq!(cycles(&edges), vec![vec!["d", "d2", "d"]]);
    add(&mut edges, "c", "a", "c.rs");
    assert_eq!(cycles(&edges).len(), 2);
    assert!(cycles(&edges).contains(&vec!["a".into(), "b".into(), "c".into(), "a".into()]));
    let paths = named_paths(
        &["agent".into(), "x".into()],
        &code_only(
            "use crate::{a::{b, c::D}, e};\n// crate::f::g\nlet s = \"crate::h\"; super::i::j();",
        ),
    );
    assert_eq!(
        paths,
        vec![
            vec!["a", "b"],
            vec!["a", "c", "D"],
            vec!["e"],
            vec!["agent", "i", "j"],
        ]
        .into_iter()
        .map(|p| p.into_iter().map(String::from).collect::<Vec<_>>())
        .collect::<Vec<_>>()
    );
}
