#![allow(clippy::unwrap_used)]
//! deploy/kubernetes/ is well-formed and consistent: every file is a Kubernetes object, the
//! Deployment probes `/-/healthy` and `/-/ready` on the container's port, runs locked down and
//! takes the key from the example Secret's name and key, the Service and ServiceMonitor select
//! it, and the PrometheusRule holds exactly the groups of `alerts/*.yml`, so they cannot drift.

mod kube;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kube::{container, parse, repo_root, str_at};
use serde_json::Value;

const DIR: &str = "deploy/kubernetes";

/// Every `*.yaml` of deploy/kubernetes/, by file name.
fn manifests() -> Vec<(String, Value)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo_root().join(DIR))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                parse(&p),
            )
        })
        .collect()
}

fn manifest(file: &str) -> Value {
    parse(&repo_root().join(DIR).join(file))
}

#[test]
fn every_manifest_is_a_named_kubernetes_object() {
    let all = manifests();
    assert!(
        all.len() >= 6,
        "deploy/kubernetes holds {} manifests",
        all.len()
    );
    for (file, doc) in &all {
        for field in ["/apiVersion", "/kind", "/metadata/name"] {
            let value = doc.pointer(field).and_then(Value::as_str).unwrap_or("");
            assert!(!value.is_empty(), "{file} has no {field}");
        }
    }
    let kinds: BTreeSet<&str> = all
        .iter()
        .map(|(_, doc)| doc["kind"].as_str().unwrap())
        .collect();
    for kind in [
        "Deployment",
        "Service",
        "Secret",
        "ServiceMonitor",
        "PrometheusRule",
        "Kustomization",
    ] {
        assert!(kinds.contains(kind), "no {kind} in {DIR}");
    }
}

#[test]
fn kustomization_lists_every_manifest_but_the_example_secret() {
    let kustomization = manifest("kustomization.yaml");
    let listed: BTreeSet<&str> = kustomization["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    let expected: BTreeSet<String> = manifests()
        .into_iter()
        .map(|(file, _)| file)
        .filter(|f| f != "kustomization.yaml" && f != "secret.example.yaml")
        .collect();
    let expected: BTreeSet<&str> = expected.iter().map(String::as_str).collect();
    assert_eq!(listed, expected);
    // The image name the Deployment uses is the one kustomize rewrites.
    let deployment = manifest("deployment.yaml");
    let image = str_at(container(&deployment), "/image");
    let name = image.split(':').next().unwrap();
    assert_eq!(str_at(&kustomization, "/images/0/name"), name);
}

#[test]
fn deployment_probes_health_and_readiness_on_the_container_port() {
    let deployment = manifest("deployment.yaml");
    kube::check_probes(&deployment);
    kube::check_resources(&deployment);
}

#[test]
fn deployment_runs_locked_down_as_the_image_user() {
    kube::check_locked_down(&manifest("deployment.yaml"));
}

#[test]
fn api_key_comes_from_the_example_secret() {
    let deployment = manifest("deployment.yaml");
    let reference = kube::api_key_reference(&deployment);
    let secret = manifest("secret.example.yaml");
    assert_eq!(secret["kind"], "Secret");
    assert_eq!(reference["name"], secret["metadata"]["name"]);
    let key_name = reference["key"].as_str().unwrap();
    let placeholder = secret["stringData"][key_name]
        .as_str()
        .unwrap_or_else(|| panic!("the example Secret has no stringData.{key_name}"));
    assert!(
        placeholder.contains("REPLACE"),
        "the example Secret's value {placeholder:?} does not look like a placeholder"
    );
    // No other manifest carries a Secret or a key.
    for (file, doc) in manifests() {
        if file != "secret.example.yaml" {
            assert_ne!(doc["kind"], "Secret", "{file} is a Secret");
        }
    }
}

#[test]
fn service_and_service_monitor_select_the_exporter() {
    kube::check_service_and_monitor(
        &manifest("deployment.yaml"),
        &manifest("service.yaml"),
        &manifest("servicemonitor.yaml"),
    );
}

#[test]
fn prometheus_rule_holds_exactly_the_alert_rule_groups() {
    kube::check_rule_groups(
        &manifest("prometheusrule.yaml"),
        "python3 deploy/kubernetes/generate-prometheusrule.py",
    );
}

/// The generator reproduces the committed file byte for byte (needs python3 with PyYAML).
#[test]
fn prometheus_rule_is_what_the_generator_writes() {
    let has_pyyaml = Command::new("python3")
        .args(["-c", "import yaml"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has_pyyaml {
        kube::missing("python3 with PyYAML is not available");
        return;
    }
    let mut child = Command::new("python3")
        .arg(repo_root().join(DIR).join("generate-prometheusrule.py"))
        .arg("--check")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("generate-prometheusrule.py --check passed its 60 s deadline");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        status.success(),
        "prometheusrule.yaml is not what generate-prometheusrule.py writes: run it"
    );
}
