//! The layering of `src/`, read from the source: dependencies run one way,
//! domain ← model_dir ← {train, serve, export} ← {worker, api} ← startup / cli.
//!
//! A module's dependencies are the `crate::…` paths its files name outside comments (including
//! grouped imports, `use crate::{a, b}`); a top-level module is a directory or file under `src/`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// `text` without `//` comments (doc comments included) and the contents of string literals,
/// raw strings among them.
fn code_of(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        let prev_ident = i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_');
        if b[i] == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i] == b'r' && (!prev_ident || (i > 0 && b[i - 1] == b'b')) && {
            let hashes = b[i + 1..].iter().take_while(|c| **c == b'#').count();
            b.get(i + 1 + hashes) == Some(&b'"')
        } {
            let hashes = b[i + 1..].iter().take_while(|c| **c == b'#').count();
            let close = format!("\"{}", "#".repeat(hashes));
            let body = i + 2 + hashes;
            let end = text[body..]
                .find(&close)
                .map_or(b.len(), |e| body + e + close.len());
            out.push_str("\"\"");
            i = end;
        } else if b[i] == b'\'' && b.get(i + 1) == Some(&b'"') {
            // '"' is a char, not the start of a string.
            out.push_str("'\"");
            i += 2;
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            out.push_str("\"\"");
            i += 1;
        } else {
            let c = text[i..].chars().next().unwrap();
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The top-level modules `code` names through `crate::`.
fn crate_paths(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let boundary = rest[..at].chars().next_back().is_none_or(|c| !is_ident(c));
        rest = &rest[at + "crate::".len()..];
        if !boundary {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let name: String = item.trim().chars().take_while(|c| is_ident(*c)).collect();
                if !name.is_empty() && name != "self" {
                    out.insert(name);
                }
            }
        } else {
            let name: String = rest.chars().take_while(|c| is_ident(*c)).collect();
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

/// `src/`'s files by top-level module, each with the modules it names.
fn sources() -> Vec<(String, PathBuf, BTreeSet<String>)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    rust_files(&src)
        .into_iter()
        .filter_map(|path| {
            let rel = path.strip_prefix(&src).unwrap();
            let first = rel.components().next()?.as_os_str().to_str()?;
            let top = first.trim_end_matches(".rs").to_owned();
            if top == "lib" || top == "main" {
                return None;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let names = crate_paths(&code_of(&text));
            Some((top, path, names))
        })
        .collect()
}

/// The top-level module graph: each module and the others it uses.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (top, _, names) in sources() {
        let deps = g.entry(top.clone()).or_default();
        deps.extend(names.into_iter().filter(|n| *n != top));
    }
    g
}

/// A cycle through `start`, if there is one (depth-first).
fn cycle_from(g: &BTreeMap<String, BTreeSet<String>>, start: &str) -> Option<Vec<String>> {
    fn walk(
        g: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        seen: &mut BTreeSet<String>,
        start: &str,
    ) -> bool {
        let here = path.last().unwrap().clone();
        for next in g.get(&here).into_iter().flatten() {
            if next == start {
                path.push(next.clone());
                return true;
            }
            if seen.insert(next.clone()) {
                path.push(next.clone());
                if walk(g, path, seen, start) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    let mut path = vec![start.to_owned()];
    walk(g, &mut path, &mut BTreeSet::new(), start).then_some(path)
}

#[test]
fn the_scanner_sees_grouped_imports_and_skips_comments_and_strings() {
    let code = code_of(
        "use crate::{api, store::Store};\n// crate::train\nlet s = \"crate::serve\"; \
         x = '\"'; crate::domain::x; notcrate::worker; r#\"crate::cli \"x\" \"#; crate::ui",
    );
    let names: Vec<String> = crate_paths(&code).into_iter().collect();
    assert_eq!(names, ["api", "domain", "store", "ui"]);
    let g = BTreeMap::from([
        ("a".to_owned(), BTreeSet::from(["b".to_owned()])),
        ("b".to_owned(), BTreeSet::from(["a".to_owned()])),
    ]);
    assert_eq!(cycle_from(&g, "a").unwrap(), ["a", "b", "a"]);
}

#[test]
fn the_trainer_is_used_only_by_the_worker_the_cli_and_startup() {
    let allowed = ["train", "worker", "cli", "startup"];
    let offenders: Vec<String> = sources()
        .into_iter()
        .filter(|(top, _, names)| names.contains("train") && !allowed.contains(&top.as_str()))
        .map(|(_, path, _)| path.display().to_string())
        .collect();
    assert!(
        offenders.is_empty(),
        "crate::train used outside train/, worker/, cli/ and startup: {offenders:?}"
    );
}

#[test]
fn the_domain_imports_only_the_domain() {
    let offenders: Vec<String> = sources()
        .into_iter()
        .filter(|(top, _, names)| top == "domain" && names.iter().any(|n| n != "domain"))
        .map(|(_, path, names)| format!("{} uses {names:?}", path.display()))
        .collect();
    assert!(offenders.is_empty(), "{offenders:?}");
}

#[test]
fn the_model_directory_builds_on_the_domain_alone() {
    let g = graph();
    let uses: Vec<&String> = g["model_dir"].iter().filter(|m| *m != "domain").collect();
    assert!(uses.is_empty(), "model_dir uses {uses:?}");
}

#[test]
fn no_top_level_modules_import_each_other_in_a_circle() {
    let g = graph();
    assert!(g.len() > 10, "the scan found only {:?}", g.keys());
    let cycles: Vec<Vec<String>> = g.keys().filter_map(|m| cycle_from(&g, m)).collect();
    assert!(cycles.is_empty(), "import circles: {cycles:?}");
}
