//! The crate's top-level modules (`bus`, `config`, `consumer`, `memory`,
//! `nats`, `runner`, ...) import each other without circles: every
//! `crate::<module>` path (and every `crate::<Name>` re-exported from the
//! root, resolved to the module that defines it) in non-test code is an
//! edge, and the graph must be acyclic, so that each module can be read and
//! changed knowing only the ones below it. A failure names the cycle and,
//! for each step, the file and line of the import that makes it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Where module `from` uses module `to`: one `file:line` per edge.
type Edges = BTreeMap<String, BTreeMap<String, String>>;

/// Imports known to close a circle, waiting for their change: (file under
/// `src/`, module it imports, why). They are left out of the graph; each must
/// still be there (remove it from this list once it is gone).
const PENDING: &[(&str, &str, &str)] = &[];

#[test]
fn top_level_modules_have_no_import_circles() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let (edges, pending_seen) = module_graph(&src);
    for (file, to, why) in PENDING {
        assert!(
            pending_seen.contains(&(file.to_string(), to.to_string())),
            "src/{file} no longer imports `{to}`: remove it from PENDING ({why})"
        );
    }
    assert!(
        edges.contains_key("config") && edges["config"].contains_key("memory"),
        "the scan found no `config -> memory` edge: is it still reading src/? {edges:?}"
    );
    if let Some(cycle) = find_cycle(&edges) {
        let steps: Vec<String> = cycle
            .windows(2)
            .map(|w| format!("  {} -> {} ({})", w[0], w[1], edges[&w[0]][&w[1]]))
            .collect();
        panic!(
            "import circle among event-bus's top-level modules: {}\n{}\nMove the shared item \
             into the lower module (or a leaf module both use) so imports go one way.",
            cycle.join(" -> "),
            steps.join("\n")
        );
    }
}

/// A circle the check must catch: `a -> b -> c -> a`, named in order.
#[test]
fn a_circle_is_found_and_named() {
    let mut edges = Edges::new();
    for (from, to) in [("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")] {
        edges
            .entry(from.into())
            .or_default()
            .insert(to.into(), "x.rs:1".into());
    }
    assert_eq!(
        find_cycle(&edges).expect("a cycle"),
        ["a", "b", "c", "a"].map(String::from)
    );
    edges.get_mut("c").unwrap().remove("a");
    assert_eq!(find_cycle(&edges), None);
}

/// The graph, and the [`PENDING`] imports found (left out of it).
fn module_graph(src: &Path) -> (Edges, BTreeSet<(String, String)>) {
    let lib = std::fs::read_to_string(src.join("lib.rs")).expect("src/lib.rs");
    let modules = top_level_modules(&lib);
    let reexports = root_reexports(&lib, &modules);
    let mut edges = Edges::new();
    let mut pending_seen = BTreeSet::new();
    for file in rust_files(src) {
        let rel = file.strip_prefix(src).unwrap();
        let from = top_level_of(rel);
        if from.is_empty() {
            continue; // lib.rs: the facade re-exports everything.
        }
        let text = std::fs::read_to_string(&file).unwrap();
        for (line_no, line) in code_lines(&text) {
            for name in crate_paths(line) {
                let to = if modules.contains(&name) {
                    Some(name)
                } else {
                    reexports.get(&name).cloned()
                };
                if let Some(to) = to.filter(|to| *to != from) {
                    let file_name = rel.to_string_lossy().replace('\\', "/");
                    if PENDING.iter().any(|(f, t, _)| *f == file_name && *t == to) {
                        pending_seen.insert((file_name, to));
                        continue;
                    }
                    edges
                        .entry(from.clone())
                        .or_default()
                        .entry(to)
                        .or_insert_with(|| format!("src/{}:{line_no}", rel.display()));
                }
            }
        }
    }
    (edges, pending_seen)
}

/// The module a file belongs to: `nats` for `nats/config/mod.rs` and for
/// `nats.rs`; empty for `lib.rs`.
fn top_level_of(rel: &Path) -> String {
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    let name = first.trim_end_matches(".rs");
    if name == "lib" {
        String::new()
    } else {
        name.to_string()
    }
}

/// `mod x;` / `pub mod x {` declarations at the root.
fn top_level_modules(lib: &str) -> BTreeSet<String> {
    lib.lines()
        .filter(|l| !l.starts_with(' '))
        .filter_map(|l| {
            let rest = l
                .trim_start_matches("pub(crate) ")
                .trim_start_matches("pub ");
            let name = rest.strip_prefix("mod ")?;
            Some(name.trim_end_matches([';', '{', ' ']).to_string())
        })
        .collect()
}

/// Names the root re-exports (`pub use module::{A, B};`), by module.
fn root_reexports(lib: &str, modules: &BTreeSet<String>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut statement = String::new();
    for line in lib.lines().filter(|l| !l.starts_with(' ')) {
        if statement.is_empty() && !line.starts_with("pub use ") {
            continue;
        }
        statement.push_str(line);
        if !line.trim_end().ends_with(';') {
            continue;
        }
        let path = statement["pub use ".len()..]
            .trim_end_matches(';')
            .to_string();
        statement.clear();
        let Some((module, names)) = path.split_once("::") else {
            continue;
        };
        if !modules.contains(module) {
            continue;
        }
        for name in names.trim_matches(['{', '}']).split(',') {
            let name = name.trim().rsplit("::").next().unwrap().trim();
            if !name.is_empty() {
                out.insert(name.to_string(), module.to_string());
            }
        }
    }
    out
}

/// The lines of a file that are compiled outside tests, numbered from 1,
/// without comments: everything from a `#[cfg(test)]` module on is left
/// out (test modules close the files here).
fn code_lines(text: &str) -> Vec<(usize, &str)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        if trimmed == "#[cfg(test)]"
            && lines
                .get(i + 1)
                .is_some_and(|next| next.trim_start().starts_with("mod "))
        {
            break;
        }
        let code = match line.find("//") {
            // `"nats://..."` is not a comment: cut only outside strings.
            Some(at) if line[..at].matches('"').count() % 2 == 0 => &line[..at],
            _ => line,
        };
        out.push((i + 1, code));
    }
    out
}

/// The first segment after each `crate::` (each item of a `crate::{..}`
/// group): a module, or a name the root re-exports.
fn crate_paths(line: &str) -> Vec<String> {
    let ident = |s: &str| -> String {
        s.trim_start()
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let mut out = Vec::new();
    for (at, _) in line.match_indices("crate::") {
        if line[..at].ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == '$') {
            continue; // `$crate::`, `my_crate::`
        }
        let rest = &line[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = group.split('}').next().unwrap_or("");
            out.extend(group.split(',').map(ident).filter(|s| !s.is_empty()));
        } else {
            out.push(ident(rest));
        }
    }
    out
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") && !is_test_file(&path) {
            out.push(path);
        }
    }
    out
}

/// A file declared `#[cfg(test)] mod name;` by its parent (`memory/tests.rs`).
fn is_test_file(path: &Path) -> bool {
    let stem = path.file_stem().unwrap().to_string_lossy();
    let parent = path.parent().unwrap().join("mod.rs");
    std::fs::read_to_string(parent).is_ok_and(|text| {
        text.contains(&format!("#[cfg(test)]\nmod {stem};"))
            || text.contains(&format!("#[cfg(test)]\npub(crate) mod {stem};"))
    })
}

/// A cycle in the graph, as the modules along it with the first repeated
/// at the end, or `None`.
fn find_cycle(edges: &Edges) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        edges: &Edges,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|n| n == node) {
            let mut cycle = path[start..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in edges.get(node).into_iter().flat_map(|m| m.keys()) {
            if let Some(cycle) = visit(next, edges, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    edges
        .keys()
        .find_map(|node| visit(node, edges, &mut Vec::new(), &mut done))
}
