//! The docs tell the truth about the code: every route of every service's OpenAPI
//! document is in the README, every variable of `.env.example` is explained there, and
//! every relative link of the README and `docs/` points at a file that exists.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn every_route_of_every_service_is_in_the_readme() {
    let readme = read(&root().join("README.md"));
    let documents = [
        ("account-service", account_service::openapi::document_json()),
        ("transfer-service", transfer_service::openapi::document_json()),
        ("query-service", query_service::openapi::document_json()),
        ("event-bus", event_bus::openapi::document_json()),
        ("gateway", gateway::openapi::own_document()),
    ];
    let mut missing = Vec::new();
    let mut seen = 0;
    for (service, document) in &documents {
        for path in document["paths"].as_object().unwrap().keys() {
            seen += 1;
            if !readme.contains(path.as_str()) {
                missing.push(format!("{service} {path}"));
            }
        }
    }
    assert!(seen >= 30, "only {seen} routes found: the documents changed shape");
    assert!(missing.is_empty(), "routes the README does not mention: {missing:?}");
}

#[test]
fn every_variable_of_the_env_example_is_explained_in_the_readme() {
    let readme = read(&root().join("README.md"));
    let example = read(&root().join(".env.example"));
    let variables: Vec<&str> = example
        .lines()
        .filter_map(|line| {
            let line = line.trim_start_matches('#').trim_start();
            let (name, _) = line.split_once('=')?;
            (!name.is_empty() && name.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
                .then_some(name)
        })
        .collect();
    assert!(variables.len() >= 80, "only {} variables found in .env.example", variables.len());
    let missing: Vec<&&str> = variables.iter().filter(|v| !readme.contains(&format!("`{v}`"))).collect();
    assert!(missing.is_empty(), "variables of .env.example the README does not explain: {missing:?}");
}

#[test]
fn every_relative_link_in_the_docs_points_at_a_file() {
    let root = root();
    let mut files = vec![root.join("README.md")];
    for dir in ["docs", "docs/decisions"] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "md") {
                files.push(path);
            }
        }
    }
    let mut broken = Vec::new();
    let mut links = 0;
    for file in &files {
        let text = read(file);
        for (i, _) in text.match_indices("](") {
            let rest = &text[i + 2..];
            let Some(end) = rest.find(')') else { continue };
            let target = rest[..end].split('#').next().unwrap_or_default();
            if target.is_empty() || target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            links += 1;
            if !file.parent().unwrap().join(target).exists() {
                broken.push(format!("{} -> {target}", file.strip_prefix(&root).unwrap().display()));
            }
        }
    }
    assert!(links >= 10, "only {links} relative links found");
    assert!(broken.is_empty(), "links that point nowhere: {broken:?}");
}
