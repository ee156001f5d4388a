//! The crate graph follows the data flow: no service depends on another service (event
//! types live in `bank-domain`), the domain is pure, and query-service, which never
//! reads Kinesis, does not link the Kinesis SDK (only S3's, through `pond`, for the
//! statements). Read from `cargo metadata`.
#![allow(clippy::unwrap_used)]

use serde_json::Value;
use std::collections::{BTreeSet, HashMap};

const SERVICES: [&str; 5] = ["account-service", "transfer-service", "view-updater", "query-service", "archive"];

/// Each workspace package's transitive normal (non-dev, non-build) dependencies, by name.
fn normal_closure() -> HashMap<String, BTreeSet<String>> {
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // this machine's platform only: the others' crates are never downloaded
    let rustc = std::process::Command::new("rustc").arg("-vV").output().expect("rustc -vV runs");
    let host = String::from_utf8_lossy(&rustc.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_owned))
        .expect("rustc -vV names the host");
    let out = std::process::Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--offline",
            "--filter-platform",
            &host,
            "--manifest-path",
            manifest,
        ])
        .output()
        .expect("cargo metadata runs");
    assert!(out.status.success(), "cargo metadata failed: {}", String::from_utf8_lossy(&out.stderr));
    let meta: Value = serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON");
    let name_of: HashMap<&str, &str> = meta["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|p| (p["id"].as_str().expect("id"), p["name"].as_str().expect("name")))
        .collect();
    let mut direct: HashMap<&str, Vec<&str>> = HashMap::new();
    for node in meta["resolve"]["nodes"].as_array().expect("resolve.nodes") {
        let id = node["id"].as_str().expect("node id");
        let deps = node["deps"]
            .as_array()
            .expect("deps")
            .iter()
            .filter(|d| d["dep_kinds"].as_array().expect("dep_kinds").iter().any(|k| k["kind"].is_null()));
        direct.insert(id, deps.map(|d| d["pkg"].as_str().expect("pkg")).collect());
    }
    let members: Vec<&str> =
        meta["workspace_members"].as_array().expect("members").iter().map(|m| m.as_str().expect("member")).collect();
    members
        .iter()
        .map(|member| {
            let mut seen = BTreeSet::new();
            let mut todo = vec![*member];
            while let Some(id) = todo.pop() {
                for dep in direct.get(id).into_iter().flatten() {
                    if seen.insert(name_of[dep].to_string()) {
                        todo.push(dep);
                    }
                }
            }
            (name_of[member].to_string(), seen)
        })
        .collect()
}

#[test]
fn no_service_depends_on_another_service_and_query_service_has_no_kinesis_sdk() {
    let closure = normal_closure();
    for service in SERVICES {
        let deps = closure.get(service).unwrap_or_else(|| panic!("{service} is a workspace member"));
        let others: Vec<_> = SERVICES.iter().filter(|s| **s != service && deps.contains(**s)).collect();
        assert!(others.is_empty(), "{service} depends on the service crates {others:?}");
        assert!(deps.contains("bank-domain"), "{service} should take its event types from bank-domain");
    }
    let query = &closure["query-service"];
    assert!(!query.contains("aws-sdk-kinesis"), "query-service links the Kinesis SDK");
    assert!(query.contains("pond"), "query-service reads the statements through pond");
    assert!(!query.contains("rapids") && !query.contains("tailer"), "query-service depends on the rapids");
}

#[test]
fn the_domain_is_pure_and_the_event_store_knows_no_http_nor_kinesis() {
    let closure = normal_closure();
    let io = ["sqlx", "axum", "hyper", "tokio", "reqwest", "aws-sdk-kinesis"];
    let domain = &closure["bank-domain"];
    let found: Vec<_> = io.iter().filter(|d| domain.contains(**d)).collect();
    assert!(found.is_empty(), "bank-domain depends on {found:?}");
    let store = &closure["eventstore"];
    for forbidden in ["axum", "hyper", "aws-sdk-kinesis", "rapids", "tailer", "service-kit"] {
        assert!(!store.contains(forbidden), "eventstore depends on {forbidden}");
    }
    // the rapids do not depend on the tailer (no cycle; the tailer depends on them)
    assert!(!closure["rapids"].contains("tailer"), "rapids depends on the tailer");
    assert!(closure["tailer"].contains("rapids"), "the tailer publishes through the rapids crate");
}
