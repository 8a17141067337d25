//! The layering ARCHITECTURE.md promises, checked from the source so it
//! cannot silently come back: which crate may depend on which, no import
//! cycle among the controller's modules, the model and the store at the
//! bottom, and protobuf only at the edges.
//!
//! Imports are read from the text (`crate::module` paths, also inside
//! `use crate::{…}` groups), with comments and `#[cfg(test)]` code left
//! out: tests may reach anywhere.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use ruse_e2e::workspace;

/// Every `.rs` file under `dir`, relative to it, sorted.
fn sources(dir: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, base: &Path, out: &mut Vec<PathBuf>) {
        for entry in fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, base, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path.strip_prefix(base).unwrap().to_path_buf());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// The code of a file without comments and without its test modules (a
/// `#[cfg(test)]` item runs to the end of the file in this codebase, and
/// files named `tests.rs` are test modules).
fn code(path: &Path) -> String {
    if path.file_name().is_some_and(|n| n == "tests.rs") {
        return String::new();
    }
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let text = text.split("#[cfg(test)]").next().unwrap_or_default();
    let mut out = String::with_capacity(text.len());
    let mut in_block = false;
    for line in text.lines() {
        let mut line = line;
        if in_block {
            match line.find("*/") {
                Some(end) => {
                    line = &line[end + 2..];
                    in_block = false;
                }
                None => continue,
            }
        }
        if let Some(start) = line.find("/*") {
            in_block = !line[start..].contains("*/");
            line = &line[..start];
        }
        // `//` outside a string literal; the paths we look for are never
        // inside one with `//` before them.
        let line = match line.find("//") {
            Some(i) if !line[..i].contains('"') => &line[..i],
            _ => line,
        };
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// The top-level modules of a crate's `src/` other than the roots.
fn modules(src: &Path) -> BTreeSet<String> {
    fs::read_dir(src)
        .unwrap()
        .filter_map(|e| {
            let path = e.unwrap().path();
            let name = path.file_name()?.to_str()?.to_owned();
            if path.is_dir() {
                Some(name)
            } else {
                let stem = name.strip_suffix(".rs")?;
                (stem != "lib" && stem != "main").then(|| stem.to_owned())
            }
        })
        .collect()
}

fn identifier(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The top-level modules a piece of code names through `crate::`.
fn named_modules(code: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // `crate::{a, b::{c, d}, e}`: the names at depth one.
            let mut depth = 1;
            let mut start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    ',' if depth == 1 => start = true,
                    c if start && depth == 1 && !c.is_whitespace() => {
                        start = false;
                        out.insert(identifier(&group[i..]).to_owned());
                    }
                    _ => {}
                }
            }
        } else {
            out.insert(identifier(rest).to_owned());
        }
    }
    out.retain(|m| modules.contains(m));
    out
}

/// module → the modules it imports, for a crate's `src/`.
fn import_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let modules = modules(src);
    let mut graph: BTreeMap<String, BTreeSet<String>> = modules
        .iter()
        .map(|m| (m.clone(), BTreeSet::new()))
        .collect();
    for file in sources(src) {
        let first = file.components().next().unwrap().as_os_str();
        let module = first.to_str().unwrap().trim_end_matches(".rs").to_owned();
        if !modules.contains(&module) {
            continue; // lib.rs, main.rs
        }
        let mut names = named_modules(&code(&src.join(&file)), &modules);
        names.remove(&module);
        graph.get_mut(&module).unwrap().extend(names);
    }
    graph
}

/// The strongly connected components with more than one module (Tarjan).
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct State<'a> {
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        found: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        for w in &s.graph[v] {
            let w = w.as_str();
            if !s.index.contains_key(w) {
                visit(s, w);
                let low = s.low[v].min(s.low[w]);
                s.low.insert(v, low);
            } else if s.stack.contains(&w) {
                let low = s.low[v].min(s.index[w]);
                s.low.insert(v, low);
            }
        }
        if s.low[v] == s.index[v] {
            let at = s.stack.iter().rposition(|x| *x == v).unwrap();
            let component: Vec<String> = s.stack.drain(at..).map(str::to_owned).collect();
            if component.len() > 1 {
                s.found.push(component);
            }
        }
    }
    let mut s = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.found
}

/// The workspace crates a member's manifest depends on (any section).
fn workspace_dependencies(manifest: &Path) -> BTreeSet<String> {
    let text = fs::read_to_string(manifest).unwrap();
    let mut section = String::new();
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            section = line.to_owned();
            continue;
        }
        if section.contains("dependencies") && line.starts_with("ruse-") {
            out.insert(identifier_dashed(line).to_owned());
        }
    }
    out
}

fn identifier_dashed(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

#[test]
fn crates_depend_only_downward() {
    // Who may depend on whom. The agent and the controller never depend
    // on each other: the controller links no fanotify, decoy or DICOM
    // code, and an agent holds nothing of the controller's.
    let allowed: &[(&str, &[&str])] = &[
        ("proto", &[]),
        ("pki", &["ruse-proto"]),
        ("controller", &["ruse-proto", "ruse-pki"]),
        ("agent", &["ruse-proto", "ruse-pki"]),
        ("cli", &["ruse-proto", "ruse-pki"]),
    ];
    for (dir, may) in allowed {
        let deps = workspace_dependencies(&workspace().join(dir).join("Cargo.toml"));
        let wrong: Vec<_> = deps.iter().filter(|d| !may.contains(&d.as_str())).collect();
        assert!(
            wrong.is_empty(),
            "{dir}/Cargo.toml depends on {wrong:?}; it may depend only on {may:?} (ARCHITECTURE.md, crate graph)"
        );
    }
}

#[test]
fn the_checks_see_imports() {
    // The reader of imports finds what it must, or the checks below pass
    // for nothing.
    let modules: BTreeSet<String> = ["core", "model", "store", "api"]
        .into_iter()
        .map(str::to_owned)
        .collect();
    let code = "use crate::{core::Core, model::{A, B}};\nlet x = crate::store::open();\n";
    assert_eq!(
        named_modules(code, &modules),
        ["core", "model", "store"]
            .into_iter()
            .map(str::to_owned)
            .collect()
    );
    let graph = import_graph(&workspace().join("controller/src"));
    assert!(graph["api"].contains("core"), "{graph:?}");
    let mut cyclic = graph.clone();
    cyclic.get_mut("model").unwrap().insert("core".into());
    assert!(!cycles(&cyclic).is_empty());
}

#[test]
fn the_controller_modules_import_no_cycle() {
    let graph = import_graph(&workspace().join("controller/src"));
    let found = cycles(&graph);
    assert!(
        found.is_empty(),
        "import cycles among the controller's modules: {found:?}\n(move the shared type down into `model`, or pass a function instead of the module)\ngraph: {graph:#?}"
    );
    assert!(
        graph["model"].is_empty(),
        "model is the bottom layer and imports no other module, but imports {:?}",
        graph["model"]
    );
    let store_imports: Vec<_> = graph["store"].iter().filter(|m| *m != "model").collect();
    assert!(
        store_imports.is_empty(),
        "the store imports only the model, but imports {store_imports:?}"
    );
}

#[test]
fn the_agent_modules_import_no_cycle_and_the_platform_sits_below() {
    let graph = import_graph(&workspace().join("agent/src"));
    let found = cycles(&graph);
    assert!(
        found.is_empty(),
        "import cycles among the agent's modules: {found:?}\ngraph: {graph:#?}"
    );
    // The platform seam is what other platforms replace: it may use the
    // shared types of ruse-proto, never the agent's own modules.
    assert!(
        graph["platform"].is_empty(),
        "agent/src/platform imports {:?}; a platform implementation must not depend on the rest of the agent",
        graph["platform"]
    );
}

#[test]
fn protobuf_stays_at_the_edges() {
    // The protocol's messages and tonic; `prost` alone is an encoding
    // library the store may use for its own records.
    let names_protobuf =
        |code: &str| code.contains("pb::") || code.contains("tonic::") || code.contains("::v1");
    let mut found = BTreeSet::new();
    for (krate, edges) in [
        ("controller", &["api/", "main.rs"][..]),
        ("agent", &["protocol/", "main.rs"][..]),
    ] {
        let src = workspace().join(krate).join("src");
        for file in sources(&src) {
            let rel = file.to_str().unwrap();
            if edges.iter().any(|e| rel.starts_with(e)) {
                continue;
            }
            if names_protobuf(&code(&src.join(&file))) {
                found.insert(format!("{krate}/src/{rel}"));
            }
        }
    }
    assert!(
        found.is_empty(),
        "protobuf or tonic outside the edges (controller: api/; agent: protocol/) in {found:?}: convert at the edge instead (ruse_proto::convert, spec, event)"
    );
}

#[test]
fn long_files_say_why() {
    // A file that holds several subsystems is hard to read; past ~800
    // lines a file says in its header why it is one file.
    const LIMIT: usize = 850;
    let mut unexplained = Vec::new();
    for krate in ["proto", "pki", "controller", "agent", "cli", "tests"] {
        for dir in ["src", "tests", "benches"] {
            let root = workspace().join(krate).join(dir);
            if !root.is_dir() {
                continue;
            }
            for file in sources(&root) {
                let text = fs::read_to_string(root.join(&file)).unwrap();
                let header: String = text.lines().take(40).collect::<Vec<_>>().join(" ");
                if text.lines().count() > LIMIT && !header.contains("Longer than our ~800 lines") {
                    unexplained.push(format!(
                        "{krate}/{dir}/{} ({} lines)",
                        file.display(),
                        text.lines().count()
                    ));
                }
            }
        }
    }
    assert!(
        unexplained.is_empty(),
        "files over ~800 lines whose header does not say why (\"Longer than our ~800 lines …\"): {unexplained:?}"
    );
}
