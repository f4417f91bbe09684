//! Tidy: the structure the architecture promises, checked on the source tree.
//!
//! - The crate dependency rule: `synod-api`, `synod-tls` and `synod-bbolt` depend on no Synod
//!   crate; `synod-core` on `synod-api` and `synod-bbolt` alone and on no async runtime or network
//!   stack; `synod-sim` on `synod-core` and `synod-api`, never the server; `synod-client` on
//!   `synod-api` and `synod-tls` alone.
//! - The core reads no clock, opens no socket, starts no thread, and touches files only through
//!   `disk.rs` (its production `Disk`), raft-engine and redb.
//! - In the server a gRPC `Status` is built only in `error.rs`.

use std::path::{Path, PathBuf};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .and_then(Path::parent)
        .expect("crates/synod sits two levels below the workspace root")
        .to_path_buf()
}

/// The names under `[dependencies]` of a crate's manifest.
fn dependencies(krate: &str) -> Vec<String> {
    let manifest = workspace().join("crates").join(krate).join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest).expect("manifest");
    let mut in_dependencies = false;
    let mut names = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_dependencies = line == "[dependencies]";
            continue;
        }
        if in_dependencies && let Some((name, _)) = line.split_once('=') {
            let name = name.trim().trim_end_matches(".workspace").to_owned();
            if !name.is_empty() && !name.starts_with('#') {
                names.push(name);
            }
        }
    }
    names
}

/// Every `.rs` file under `dir`, with its lines.
fn sources(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("read dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).expect("source");
                found.push((path, text));
            }
        }
    }
    found.sort();
    found
}

/// Lines of code, without comments (`//` to the end of the line).
fn code_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines().enumerate().map(|(number, line)| {
        let code = line.split_once("//").map_or(line, |(code, _)| code);
        (number + 1, code)
    })
}

#[test]
fn crates_depend_only_downward() {
    let synod_crates = |krate: &str| -> Vec<String> {
        dependencies(krate)
            .into_iter()
            .filter(|name| name.starts_with("synod"))
            .collect()
    };
    assert_eq!(synod_crates("synod-api"), Vec::<String>::new());
    assert_eq!(synod_crates("synod-core"), ["synod-api", "synod-bbolt"]);
    assert_eq!(synod_crates("synod-bbolt"), Vec::<String>::new());
    assert_eq!(synod_crates("synod-tls"), Vec::<String>::new());
    assert_eq!(synod_crates("synod-client"), ["synod-api", "synod-tls"]);
    assert_eq!(synod_crates("synod-sim"), ["synod-api", "synod-core"]);
    assert_eq!(
        synod_crates("synod-server"),
        ["synod-api", "synod-bbolt", "synod-core", "synod-tls"]
    );
    for runtime in [
        "tokio",
        "tonic",
        "axum",
        "hyper",
        "hyper-util",
        "futures",
        "tokio-stream",
    ] {
        for krate in ["synod-core", "synod-sim"] {
            assert!(
                !dependencies(krate).iter().any(|name| name == runtime),
                "{krate} must not depend on {runtime}: it runs without an async runtime or sockets"
            );
        }
    }
}

#[test]
fn the_core_reads_no_clock_and_touches_files_only_through_its_disk() {
    let forbidden = [
        (
            "std::fs",
            "files go through `disk::Disk`, raft-engine or redb",
        ),
        ("SystemTime", "time is ticks"),
        ("Instant::now", "time is ticks"),
        ("std::thread", "the owner runs the loop"),
        ("std::net", "the core opens no socket"),
        ("tokio", "no async runtime"),
    ];
    let root = workspace().join("crates/synod-core/src");
    let mut found = Vec::new();
    for (path, text) in sources(&root) {
        let allowed_fs = path.ends_with("disk.rs");
        for (number, code) in code_lines(&text) {
            for (word, why) in forbidden {
                if code.contains(word) && !(allowed_fs && word == "std::fs") {
                    found.push(format!("{}:{number}: {word} ({why})", path.display()));
                }
            }
        }
    }
    assert!(found.is_empty(), "{}", found.join("\n"));
}

#[test]
fn grpc_statuses_are_built_only_in_error_rs() {
    let constructors = [
        "Status::new(",
        "Status::ok(",
        "Status::cancelled(",
        "Status::unknown(",
        "Status::invalid_argument(",
        "Status::deadline_exceeded(",
        "Status::not_found(",
        "Status::already_exists(",
        "Status::permission_denied(",
        "Status::resource_exhausted(",
        "Status::failed_precondition(",
        "Status::aborted(",
        "Status::out_of_range(",
        "Status::unimplemented(",
        "Status::internal(",
        "Status::unavailable(",
        "Status::data_loss(",
        "Status::unauthenticated(",
    ];
    let root = workspace().join("crates/synod-server/src");
    let mut found = Vec::new();
    for (path, text) in sources(&root) {
        if path.ends_with("error.rs") {
            continue;
        }
        for (number, code) in code_lines(&text) {
            for constructor in constructors {
                if code.contains(constructor) {
                    found.push(format!("{}:{number}: {constructor}", path.display()));
                }
            }
            // A catalogue error turned into a status on the spot (`errors::X.status()`).
            if code.contains("errors::") && code.contains(".status()") {
                found.push(format!("{}:{number}: errors::...status()", path.display()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "map the failure to a typed error and build its status in error.rs:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_tidy_checks_see_the_tree() {
    // A check over no files passes whatever the code does: make sure each one reads something.
    assert!(sources(&workspace().join("crates/synod-core/src")).len() > 10);
    assert!(sources(&workspace().join("crates/synod-server/src")).len() > 10);
    assert!(dependencies("synod-core").iter().any(|d| d == "raft"));
}

/// The server's modules (a file `x.rs` or a folder `x/`) and the modules each one names with
/// `crate::`.
fn server_module_graph() -> std::collections::BTreeMap<String, std::collections::BTreeSet<String>> {
    let root = workspace().join("crates/synod-server/src");
    let mut graph = std::collections::BTreeMap::new();
    for (path, text) in sources(&root) {
        let relative = path.strip_prefix(&root).expect("under src");
        let module = relative
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .map(|name| name.trim_end_matches(".rs").to_owned())
            .expect("a module name");
        if module == "lib" {
            continue;
        }
        let uses: &mut std::collections::BTreeSet<String> =
            graph.entry(module.clone()).or_default();
        for (_, code) in code_lines(&text) {
            let mut rest = code;
            while let Some(at) = rest.find("crate::") {
                rest = &rest[at + "crate::".len()..];
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() && name != module {
                    uses.insert(name);
                }
            }
            // `use crate::{a, b}` names several at once.
            if let Some(group) = code.split("crate::{").nth(1) {
                for name in group.split(['}', ',']).map(|n| n.trim()) {
                    let name: String = name
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    if !name.is_empty() && name != module {
                        uses.insert(name);
                    }
                }
            }
        }
    }
    graph
}

#[test]
fn the_servers_modules_import_each_other_in_no_circle() {
    let graph = server_module_graph();
    assert!(graph.contains_key("member") && graph.contains_key("peer"));
    // Depth-first search for a path that comes back to where it started.
    fn visit(
        graph: &std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
        node: &str,
        path: &mut Vec<String>,
        done: &mut std::collections::BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|n| n == node) {
            let mut circle = path[start..].to_vec();
            circle.push(node.to_owned());
            return Some(circle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(circle) = visit(graph, next, path, done) {
                return Some(circle);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = std::collections::BTreeSet::new();
    for module in graph.keys() {
        if let Some(circle) = visit(&graph, module, &mut Vec::new(), &mut done) {
            panic!(
                "modules import each other in a circle: {}",
                circle.join(" -> ")
            );
        }
    }
}
