//! ARCHITECTURE.md's invariants that a tool can check, checked: the crate dependency rules
//! (from `cargo metadata`), no function over 120 lines outside tests, and no import cycle
//! between the files of a crate (from the sources, parsed with `syn`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use syn::spanned::Spanned;
use syn::visit::Visit;

/// The longest function body outside tests, in lines (signature to closing brace).
const MAX_FUNCTION_LINES: usize = 120;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ sits in the workspace root").to_path_buf()
}

/// Each crate of ours with the crates of ours it may depend on (normal dependencies; tests and
/// build scripts are free). `None`: no rule (the binaries choose everything).
fn allowed_dependencies() -> BTreeMap<&'static str, Option<&'static [&'static str]>> {
    BTreeMap::from([
        ("lomo-io", Some(&[][..])),
        ("lomo-data", Some(&["lomo-io"][..])),
        ("lomo-kernels", Some(&["lomo-io"][..])),
        ("lomo-optim", Some(&["lomo-kernels", "lomo-io"][..])),
        ("lomo-models", Some(&["lomo-optim", "lomo-kernels", "lomo-io"][..])),
        ("lomo-dist", Some(&["lomo-optim"][..])),
        ("lomo-testutil", Some(&[][..])),
        ("lomo-cli", None),
        ("xtask", None),
        ("lomo-tests", None),
    ])
}

/// Crates that must not touch burn: they do no tensor math.
const BURN_FREE: &[&str] = &["lomo-io", "lomo-data", "lomo-testutil"];

#[test]
fn crate_dependencies_follow_the_rules() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--no-deps", "--offline"])
        .current_dir(workspace_root())
        .output()
        .expect("cargo metadata runs");
    assert!(out.status.success(), "cargo metadata: {}", String::from_utf8_lossy(&out.stderr));
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON");
    let rules = allowed_dependencies();
    let mut seen = BTreeSet::new();
    let mut broken = Vec::new();
    for package in meta["packages"].as_array().expect("packages") {
        let name = package["name"].as_str().expect("package name");
        seen.insert(name.to_string());
        let Some(rule) = rules.get(name) else {
            broken.push(format!("{name}: a workspace crate with no rule here (add it to allowed_dependencies)"));
            continue;
        };
        for dep in package["dependencies"].as_array().expect("dependencies") {
            let dep_name = dep["name"].as_str().expect("dependency name");
            let normal = dep["kind"].is_null();
            if dep_name == "lomo-testutil" && normal {
                broken.push(format!("{name} depends on lomo-testutil outside its tests"));
            }
            if !normal {
                continue;
            }
            if BURN_FREE.contains(&name) && dep_name.starts_with("burn") {
                broken.push(format!("{name} depends on {dep_name}: it must stay free of burn"));
            }
            if let Some(allowed) = rule {
                if (dep_name.starts_with("lomo-") || dep_name == "xtask") && !allowed.contains(&dep_name) {
                    broken.push(format!("{name} depends on {dep_name}; it may depend on {allowed:?} only"));
                }
            }
        }
    }
    for name in rules.keys() {
        assert!(seen.contains(*name), "{name} has a rule but is not a workspace crate");
    }
    assert!(broken.is_empty(), "crate dependency rules broken:\n{}", broken.join("\n"));
}

/// The `.rs` files below `dir`, skipping test trees and build outputs.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if path.is_dir() {
            if !matches!(name.as_ref(), "tests" | "target" | "fixtures") && !name.starts_with('.') {
                sources(&path, out);
            }
        } else if name.ends_with(".rs") {
            out.push(path);
        }
    }
}

/// The source roots of every crate: `crates/*/` and `xtask/`.
fn crate_dirs() -> Vec<PathBuf> {
    let root = workspace_root();
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root.join("crates"))
        .expect("crates/ is readable")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("Cargo.toml").exists())
        .collect();
    dirs.push(root.join("xtask"));
    dirs.sort();
    dirs
}

fn parse(path: &Path) -> syn::File {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    syn::parse_file(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

fn is_cfg_test(attrs: &[syn::Attribute]) -> bool {
    attrs
        .iter()
        .any(|a| a.path().is_ident("cfg") && a.meta.require_list().is_ok_and(|l| l.tokens.to_string().trim() == "test"))
}

/// Every function with a body, as (name, first line, lines), outside `#[cfg(test)]` modules.
#[derive(Default)]
struct Functions(Vec<(String, usize, usize)>);

impl Functions {
    fn record(&mut self, name: &syn::Ident, span: proc_macro2::Span) {
        let (start, end) = (span.start().line, span.end().line);
        self.0.push((name.to_string(), start, end + 1 - start));
    }
}

impl<'a> Visit<'a> for Functions {
    fn visit_item_mod(&mut self, item: &'a syn::ItemMod) {
        if !is_cfg_test(&item.attrs) {
            syn::visit::visit_item_mod(self, item);
        }
    }
    fn visit_item_fn(&mut self, item: &'a syn::ItemFn) {
        self.record(&item.sig.ident, item.span());
        syn::visit::visit_item_fn(self, item);
    }
    fn visit_impl_item_fn(&mut self, item: &'a syn::ImplItemFn) {
        self.record(&item.sig.ident, item.span());
        syn::visit::visit_impl_item_fn(self, item);
    }
    fn visit_trait_item_fn(&mut self, item: &'a syn::TraitItemFn) {
        if item.default.is_some() {
            self.record(&item.sig.ident, item.span());
        }
        syn::visit::visit_trait_item_fn(self, item);
    }
}

#[test]
fn no_function_over_the_limit_outside_tests() {
    let root = workspace_root();
    let mut long = Vec::new();
    let mut counted = 0;
    for dir in crate_dirs() {
        let mut files = Vec::new();
        sources(&dir, &mut files);
        for path in files {
            let mut functions = Functions::default();
            functions.visit_file(&parse(&path));
            counted += functions.0.len();
            for (name, line, lines) in functions.0 {
                if lines > MAX_FUNCTION_LINES {
                    let rel = path.strip_prefix(&root).unwrap_or(&path);
                    long.push(format!("{}:{line} `{name}`: {lines} lines", rel.display()));
                }
            }
        }
    }
    assert!(counted > 500, "found only {counted} functions: is the source walk broken?");
    assert!(long.is_empty(), "functions over {MAX_FUNCTION_LINES} lines outside tests:\n{}", long.join("\n"));
}

/// A crate's files as modules: `src/a/b.rs` and `src/a/b/mod.rs` are `a::b`; the crate roots
/// (`lib.rs`, `main.rs`) and other binaries' roots are left out (they only declare and re-export).
fn module_of(src: &Path, file: &Path) -> Option<Vec<String>> {
    let rel = file.strip_prefix(src).ok()?;
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let last = parts.pop()?;
    if parts.first().is_some_and(|p| p == "bin" || p == "examples") {
        return None;
    }
    match last.as_str() {
        "lib.rs" | "main.rs" if parts.is_empty() => None,
        "mod.rs" => Some(parts),
        _ => {
            parts.push(last.trim_end_matches(".rs").to_string());
            Some(parts)
        }
    }
}

/// Every path a file names (`use` trees spelled out, and paths in the code), as segments.
#[derive(Default)]
struct Paths(Vec<Vec<String>>);

impl Paths {
    fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.use_tree(prefix, &p.tree);
                prefix.pop();
            }
            syn::UseTree::Name(n) => self.0.push([prefix.clone(), vec![n.ident.to_string()]].concat()),
            syn::UseTree::Rename(r) => self.0.push([prefix.clone(), vec![r.ident.to_string()]].concat()),
            syn::UseTree::Glob(_) => self.0.push(prefix.clone()),
            syn::UseTree::Group(g) => g.items.iter().for_each(|t| self.use_tree(prefix, t)),
        }
    }
}

impl<'a> Visit<'a> for Paths {
    fn visit_item_use(&mut self, item: &'a syn::ItemUse) {
        self.use_tree(&mut Vec::new(), &item.tree);
    }
    fn visit_path(&mut self, path: &'a syn::Path) {
        self.0.push(path.segments.iter().map(|s| s.ident.to_string()).collect());
        syn::visit::visit_path(self, path);
    }
    fn visit_item_mod(&mut self, item: &'a syn::ItemMod) {
        if !is_cfg_test(&item.attrs) {
            syn::visit::visit_item_mod(self, item);
        }
    }
}

/// The module a path names, resolved against the modules that are files: `crate::a::b::Item`
/// is the file `a::b` if there is one, else `a`. `None` for paths outside the crate.
fn target_module(from: &[String], path: &[String], modules: &BTreeSet<Vec<String>>) -> Option<Vec<String>> {
    let mut base: Vec<String> = match path.first().map(String::as_str) {
        Some("crate") => Vec::new(),
        Some("super") => from[..from.len().saturating_sub(1)].to_vec(),
        Some("self") => from.to_vec(),
        _ => return None,
    };
    for seg in &path[1..] {
        match seg.as_str() {
            "super" => {
                base.pop();
            }
            "self" => {}
            name => {
                base.push(name.to_string());
                if !modules.contains(&base) {
                    base.pop();
                    break;
                }
            }
        }
    }
    (!base.is_empty()).then_some(base)
}

/// The groups of modules that import each other in a circle (strongly connected components
/// of more than one module, Tarjan's algorithm), each as its modules' names.
fn cyclic_groups(graph: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>) -> Vec<Vec<String>> {
    struct Tarjan<'g> {
        graph: &'g BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        index: BTreeMap<&'g Vec<String>, (usize, usize)>,
        stack: Vec<&'g Vec<String>>,
        groups: Vec<Vec<String>>,
    }
    impl<'g> Tarjan<'g> {
        fn visit(&mut self, node: &'g Vec<String>) -> usize {
            let order = self.index.len();
            self.index.insert(node, (order, order));
            self.stack.push(node);
            let mut low = order;
            for next in self.graph.get(node).into_iter().flatten() {
                match self.index.get(next) {
                    None => low = low.min(self.visit(next)),
                    Some(&(next_order, _)) if self.stack.contains(&next) => low = low.min(next_order),
                    Some(_) => {}
                }
            }
            self.index.insert(node, (order, low));
            if low == order {
                let at = self.stack.iter().rposition(|n| *n == node).expect("on the stack");
                let group: Vec<String> = self.stack.split_off(at).iter().map(|m| m.join("::")).collect();
                if group.len() > 1 {
                    self.groups.push(group);
                }
            }
            low
        }
    }
    let mut tarjan = Tarjan { graph, index: BTreeMap::new(), stack: Vec::new(), groups: Vec::new() };
    for node in graph.keys() {
        if !tarjan.index.contains_key(node) {
            tarjan.visit(node);
        }
    }
    tarjan.groups
}

#[test]
fn no_import_cycle_between_files() {
    let mut cycles = Vec::new();
    let mut edges = 0;
    for dir in crate_dirs() {
        let src = dir.join("src");
        let mut files = Vec::new();
        sources(&src, &mut files);
        let files: Vec<(Vec<String>, PathBuf)> =
            files.into_iter().filter_map(|f| module_of(&src, &f).map(|m| (m, f))).collect();
        let modules: BTreeSet<Vec<String>> = files.iter().map(|(m, _)| m.clone()).collect();
        let mut graph: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
        for (module, path) in &files {
            let mut paths = Paths::default();
            paths.visit_file(&parse(path));
            for target in paths.0.iter().filter_map(|p| target_module(module, p, &modules)) {
                // A module and the modules inside it are one unit: a parent dispatching to its
                // children and the children reading their parent's shared items is structure.
                if target.starts_with(module) || module.starts_with(&target) {
                    continue;
                }
                edges += 1;
                graph.entry(module.clone()).or_default().insert(target);
            }
        }
        for group in cyclic_groups(&graph) {
            let name = dir.file_name().unwrap_or_default().to_string_lossy().into_owned();
            cycles.push(format!("{name}: {} import each other", group.join(", ")));
        }
    }
    assert!(edges > 50, "found only {edges} imports between files: is the path walk broken?");
    assert!(cycles.is_empty(), "import cycles between files:\n{}", cycles.join("\n"));
}
