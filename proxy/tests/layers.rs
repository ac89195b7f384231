//! The crate's modules form layers, and code only reaches down.
//!
//! Every `crate::<module>` path outside test code is an edge from the file's
//! top-level module to that module. An edge to a module of the same or a
//! higher layer fails this test, naming the file: that is how import cycles
//! start (a low module that needs a high one is usually missing a type or a
//! function that belongs lower; move it down). Tests may reach anywhere.
//!
//! A new top-level module must be placed in `LAYERS`, or this test fails.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Bottom to top. A module may use modules of lower layers only.
const LAYERS: &[(&str, &[&str])] = &[
    // The protocol, metrics, plain config data, the virtual cluster's identities.
    ("foundation", &["codec", "metrics", "config", "identity"]),
    // Transport security: TLS and SASL, toward clients and toward sites.
    ("security", &["tls", "sasl"]),
    // Upstream sites (connections, views, Switchyard's own client); routes.
    ("sites and routes", &["upstream", "route"]),
    // Authorization decisions (over the routes' matchers).
    ("authorization", &["authz"]),
    // Offset translation; the WASM plugin host.
    ("offsets and plugins", &["offsets", "plugin"]),
    ("tee", &["tee"]),
    ("failover", &["failover"]),
    // What every connection shares, built from the config.
    ("shared state", &["shared"]),
    // The request pipeline: its phases, its stages, sending and the
    // upstream-failure answers.
    ("pipeline", &["pipeline"]),
    // The request handlers.
    ("api", &["api"]),
    ("connections", &["session", "admin"]),
    // Composition: listeners, shutdown.
    ("server", &["server"]),
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|(_, mods)| mods.contains(&module))
}

/// The top-level module a source file belongs to (`None`: lib.rs, main.rs).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (name != "lib" && name != "main").then(|| name.to_string())
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The text without comments and without items marked `#[cfg(test)]`.
fn code_only(text: &str) -> String {
    let no_comments: String = text
        .lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = String::new();
    let mut rest = no_comments.as_str();
    while let Some(i) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..i]);
        rest = skip_item(&rest[i + "#[cfg(test)]".len()..]);
    }
    out.push_str(rest);
    out
}

/// Skips one item: up to its `;` or through its balanced `{ … }` block.
fn skip_item(text: &str) -> &str {
    let mut depth = 0usize;
    for (i, c) in text.char_indices() {
        match c {
            ';' if depth == 0 => return &text[i + 1..],
            '{' => depth += 1,
            '}' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return &text[i + 1..];
                }
            }
            _ => {}
        }
    }
    ""
}

fn ident(text: &str) -> &str {
    let end = text
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(text.len());
    &text[..end]
}

/// The top-level modules a piece of code names through `crate::`.
fn used_modules(code: &str) -> Vec<String> {
    let mut used = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        let macro_crate = rest[..i].ends_with('$');
        rest = &rest[i + "crate::".len()..];
        if macro_crate {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            // `crate::{a, b::c, d::{e, f}}`: the first name of each entry.
            let mut depth = 0usize;
            let mut at_entry = true;
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => at_entry = true,
                    c if at_entry && (c.is_ascii_alphabetic() || c == '_') => {
                        used.push(ident(&group[j..]).to_string());
                        at_entry = false;
                    }
                    _ => {}
                }
            }
        } else {
            used.push(ident(rest).to_string());
        }
    }
    used
}

#[test]
fn modules_only_use_lower_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    assert!(files.len() > 20, "no sources found under {}", src.display());

    let mut problems = Vec::new();
    let mut edges: BTreeMap<(String, String), usize> = BTreeMap::new();
    for file in &files {
        let Some(from) = module_of(&src, file) else {
            continue;
        };
        let Some(from_layer) = layer_of(&from) else {
            problems.push(format!(
                "module `{from}` ({}) is in no layer: add it to LAYERS in {}",
                file.display(),
                file!()
            ));
            continue;
        };
        let text =
            std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        for to in used_modules(&code_only(&text)) {
            if to == from || to == "self" || to == "super" {
                continue;
            }
            *edges.entry((from.clone(), to.clone())).or_default() += 1;
            match layer_of(&to) {
                Some(to_layer) if to_layer < from_layer => {}
                Some(to_layer) => problems.push(format!(
                    "{}: `{from}` ({}) uses `crate::{to}` ({}), which is not below it",
                    file.strip_prefix(&src).unwrap_or(file).display(),
                    LAYERS[from_layer].0,
                    LAYERS[to_layer].0
                )),
                None => {} // an item of lib.rs, not a module
            }
        }
    }
    problems.sort();
    problems.dedup();
    assert!(
        problems.is_empty(),
        "module layering broken (see the top of {}):\n{}",
        file!(),
        problems.join("\n")
    );
    // The check must see the crate's real structure, not nothing.
    assert!(
        edges.contains_key(&("api".into(), "upstream".into())),
        "no edge api -> upstream found: the parser is broken"
    );
}

#[test]
fn the_parser_sees_grouped_and_nested_paths_and_skips_tests() {
    let code = code_only(
        "use crate::{codec::{self, batch}, metrics::Metrics};\n\
         fn f() { crate::upstream::x(); } // crate::server in a comment\n\
         macro_rules! m { () => { $crate::tee::y() } }\n\
         #[cfg(test)]\nmod tests { use crate::server::Proxy; }\n\
         fn g() { crate::route::z(); }",
    );
    assert_eq!(
        used_modules(&code),
        ["codec", "metrics", "upstream", "route"]
    );
}
