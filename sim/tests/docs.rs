//! The policy lists in the README's simulator section, docs/SIMULATOR.md and
//! the scenarios README agree with the built-in policies.

use std::path::PathBuf;

fn read(rel: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The part of `text` from the heading `start` to the next heading of the same level.
fn section<'a>(text: &'a str, start: &str) -> &'a str {
    let from = text.find(start).unwrap_or_else(|| panic!("no `{start}`"));
    let rest = &text[from + start.len()..];
    let level = start.split(' ').next().expect("heading");
    let end = rest.find(&format!("\n{level} ")).unwrap_or(rest.len());
    &rest[..end]
}

#[test]
fn every_builtin_policy_is_documented_everywhere() {
    let readme = read("README.md");
    let docs = [
        (
            "README.md (The simulator)",
            section(&readme, "## The simulator").to_string(),
        ),
        ("docs/SIMULATOR.md", read("docs/SIMULATOR.md")),
        (
            "examples/scenarios/README.md",
            read("examples/scenarios/README.md"),
        ),
    ];
    for (name, _) in ebb_sim::policy::BUILTIN {
        for (doc, text) in &docs {
            assert!(
                text.contains(&format!("`{name}`")),
                "built-in policy `{name}` is missing from {doc}"
            );
        }
    }
}
