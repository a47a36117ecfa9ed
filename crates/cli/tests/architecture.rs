//! The trust boundary in the crate graph: the trusted side (`cipherinfer-local`, which holds
//! secret keys, and `cipherinfer-client`) never links the untrusted server, and the server never
//! links the trusted side. Checked with `cargo tree -e normal` (dev-dependencies are allowed:
//! the local crate's tests run a real remote server), with default and with all features.
#![allow(clippy::unwrap_used, clippy::panic, reason = "tests fail loudly")]

use std::path::Path;
use std::process::Command;

/// The workspace crates `package` links in normal builds (its own name included), with its
/// default features, all features, or only `features`.
fn linked(package: &str, features: Features) -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.toml");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["tree", "--manifest-path"]).arg(&root).args([
        "-e", "normal", "--prefix", "none", "--format", "{p}", "-p", package,
    ]);
    match features {
        Features::Default => {}
        Features::All => {
            cmd.arg("--all-features");
        }
        Features::Only(list) => {
            cmd.args(["--no-default-features", "--features", list]);
        }
    }
    let out = cmd.output().expect("run cargo tree");
    assert!(
        out.status.success(),
        "cargo tree -p {package} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut crates: Vec<String> = String::from_utf8(out.stdout)
        .expect("utf-8")
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| name.starts_with("cipherinfer-"))
        .map(str::to_string)
        .collect();
    crates.sort();
    crates.dedup();
    crates
}

#[derive(Clone, Copy, Debug)]
enum Features {
    Default,
    All,
    Only(&'static str),
}

fn assert_excludes(package: &str, forbidden: &[&str]) {
    for features in [Features::Default, Features::All] {
        assert_excludes_with(package, features, forbidden);
    }
}

fn assert_excludes_with(package: &str, features: Features, forbidden: &[&str]) {
    {
        let crates = linked(package, features);
        assert!(
            crates.iter().any(|c| c == package),
            "cargo tree did not list {package} itself: {crates:?}"
        );
        for f in forbidden {
            assert!(
                !crates.iter().any(|c| c == f),
                "{package} links {f} (features: {features:?}); the crate graph must keep \
                 the trusted and untrusted sides apart: {crates:?}"
            );
        }
    }
}

#[test]
fn the_trusted_side_does_not_link_the_server() {
    assert_excludes("cipherinfer-local", &["cipherinfer-remote"]);
    assert_excludes(
        "cipherinfer-client",
        &["cipherinfer-remote", "cipherinfer-local"],
    );
}

#[test]
fn the_server_does_not_link_the_trusted_side() {
    assert_excludes(
        "cipherinfer-remote",
        &["cipherinfer-local", "cipherinfer-client"],
    );
}

#[test]
fn the_shared_layers_link_neither_side() {
    for shared in [
        "cipherinfer-transport",
        "cipherinfer-protocol",
        "cipherinfer-compiler",
        "cipherinfer-model",
        "cipherinfer-ckks",
    ] {
        assert_excludes(
            shared,
            &[
                "cipherinfer-remote",
                "cipherinfer-local",
                "cipherinfer-client",
                "cipherinfer-cli",
            ],
        );
    }
}

/// The two build variants of the `cipherinfer` binary: a server operator's build links no key
/// store and no client; a user's build links no server.
#[test]
fn the_binary_variants_link_one_side_each() {
    assert_excludes_with(
        "cipherinfer-cli",
        Features::Only("server"),
        &["cipherinfer-local", "cipherinfer-client"],
    );
    assert_excludes_with(
        "cipherinfer-cli",
        Features::Only("client"),
        &["cipherinfer-remote"],
    );
    let both = linked("cipherinfer-cli", Features::Default);
    for side in [
        "cipherinfer-remote",
        "cipherinfer-local",
        "cipherinfer-client",
    ] {
        assert!(both.iter().any(|c| c == side), "default build lacks {side}");
    }
}

/// Nothing in the crates' sources finds files through the source tree at run time (a copied or
/// installed binary would break): `CARGO_MANIFEST_DIR` appears only in build scripts and tests.
#[test]
fn no_source_tree_lookups_at_run_time() {
    fn scan(dir: &Path, hits: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                scan(&path, hits);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                if text.contains(concat!("CARGO_MANIFEST", "_DIR")) {
                    hits.push(path.display().to_string());
                }
            }
        }
    }
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut hits = Vec::new();
    for entry in std::fs::read_dir(&crates).unwrap() {
        let src = entry.unwrap().path().join("src");
        if src.is_dir() {
            scan(&src, &mut hits);
        }
    }
    assert!(hits.is_empty(), "source-tree lookups in {hits:?}");
}
