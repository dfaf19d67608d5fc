//! Architecture invariant: AWS SDK types appear only in
//! `api/src/capacity/ec2.rs`, and only `ebb-api` depends on AWS crates.
//! Everything else sees the plain types of `ebb_api::capacity`.

use std::path::{Path, PathBuf};

/// Crate paths of the AWS SDK family as Rust code names them.
const AWS_PATHS: &[&str] = &[
    "aws_sdk_",
    "aws_config",
    "aws_smithy_",
    "aws_runtime",
    "aws_credential_types",
    "aws_types",
];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy();
        if name.starts_with('.') || name == "target" {
            continue;
        }
        if path.is_dir() {
            rust_files(&path, out);
        } else if name.ends_with(".rs") {
            out.push(path);
        }
    }
}

#[test]
fn only_the_ec2_module_names_aws_types() {
    let root = workspace();
    let allowed = root.join("api/src/capacity/ec2.rs").canonicalize().unwrap();
    let this = Path::new(file!()).file_name().unwrap().to_owned();
    let mut files = Vec::new();
    for krate in ["api", "scheduler", "sim", "executor", "proto"] {
        if root.join(krate).is_dir() {
            rust_files(&root.join(krate), &mut files);
        }
    }
    assert!(files.len() > 10, "the scan found too few files: {files:?}");
    let mut offenders = Vec::new();
    for file in files {
        if file.canonicalize().unwrap() == allowed || file.file_name() == Some(this.as_os_str()) {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        for (n, line) in text.lines().enumerate() {
            if AWS_PATHS.iter().any(|p| line.contains(p)) {
                offenders.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "AWS types outside api/src/capacity/ec2.rs:\n{}",
        offenders.join("\n")
    );
}

#[test]
fn only_the_api_crate_depends_on_aws_crates() {
    let root = workspace();
    for krate in ["scheduler", "sim", "executor", "proto"] {
        let manifest = root.join(krate).join("Cargo.toml");
        let Ok(text) = std::fs::read_to_string(&manifest) else {
            continue;
        };
        assert!(
            !text.lines().any(|l| l.trim_start().starts_with("aws-")),
            "{} depends on an AWS crate",
            manifest.display()
        );
    }
    let api = std::fs::read_to_string(root.join("api/Cargo.toml")).unwrap();
    for line in api.lines().filter(|l| l.trim_start().starts_with("aws-")) {
        assert!(
            line.contains("optional = true"),
            "AWS crates are behind the `ec2` feature: {line}"
        );
    }
}
