//! The Terraform module's IAM policy for the provisioner allows exactly the AWS calls the
//! provisioner makes: every SDK operation called in `provisioner/src/aws.rs` (the only file that
//! calls the SDK) is an action of the policy's `provisioner_policy` document, and every action of
//! the document is an operation called there. The module's own `terraform test` checks the
//! rendered document against the same list (edge_ingress.tftest.hcl); this test ties that list
//! to the code. No AWS needed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `describe_target_health` -> `DescribeTargetHealth`.
fn camel(snake: &str) -> String {
    snake.split('_').map(|w| w[..1].to_uppercase() + &w[1..]).collect()
}

/// `service:Operation` for every `self.<client>.<operation>()` call in the adapter.
fn operations_in_code() -> BTreeSet<String> {
    let source = std::fs::read_to_string(root().join("provisioner/src/aws.rs")).expect("aws.rs");
    // rustfmt breaks call chains across lines: read the code without its whitespace.
    let source: String = source.chars().filter(|c| !c.is_whitespace()).collect();
    let mut found = BTreeSet::new();
    for (client, service) in [("self.elb.", "elasticloadbalancing"), ("self.ec2.", "ec2")] {
        let mut rest = source.as_str();
        while let Some(at) = rest.find(client) {
            rest = &rest[at + client.len()..];
            let name: String = rest.chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect();
            if rest[name.len()..].starts_with("()") {
                found.insert(format!("{service}:{}", camel(&name)));
            }
        }
    }
    found
}

/// The actions of `local.provisioner_policy` in the module.
fn actions_in_policy() -> BTreeSet<String> {
    let main = std::fs::read_to_string(root().join("terraform/modules/edge-ingress/main.tf")).expect("main.tf");
    let start = main.find("provisioner_policy = {").expect("the provisioner_policy local");
    let block = &main[start..];
    let end = block.find("\n  }\n}").expect("the end of the locals block");
    block[..end]
        .split('"')
        .skip(1)
        .step_by(2)
        .filter(|s| s.starts_with("elasticloadbalancing:") || s.starts_with("ec2:"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_provisioners_iam_policy_allows_exactly_the_calls_it_makes() {
    let code = operations_in_code();
    let policy = actions_in_policy();
    assert!(code.contains("elasticloadbalancing:RegisterTargets") && code.contains("ec2:DescribeVpcs"), "{code:?}");
    let missing: Vec<&String> = code.difference(&policy).collect();
    let unused: Vec<&String> = policy.difference(&code).collect();
    assert!(missing.is_empty(), "the code calls {missing:?}, which the policy does not allow");
    assert!(unused.is_empty(), "the policy allows {unused:?}, which the code never calls");
}

#[test]
fn only_the_aws_adapter_calls_the_sdk() {
    let mut dirs = vec![root().join("provisioner/src")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.file_name().is_some_and(|n| n != "aws.rs") {
                let text = std::fs::read_to_string(&path).expect("source");
                for sdk in ["aws_sdk_elasticloadbalancingv2::Client", "aws_sdk_ec2::Client", ".into_paginator()"] {
                    assert!(
                        !text.contains(sdk),
                        "{} uses {sdk}: SDK calls belong in aws.rs, where the policy test reads them",
                        path.display()
                    );
                }
            }
        }
    }
}
