#![allow(clippy::unwrap_used)]
//! deploy/kubernetes/ is well-formed and consistent: every file is a Kubernetes object, the
//! Deployment probes `/-/healthy` and `/-/ready` on the container's port, runs locked down and
//! takes the key from the example Secret's name and key, the Service and ServiceMonitor select
//! it, and the PrometheusRule holds exactly the groups of `alerts/*.yml`, so they cannot drift.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const DIR: &str = "deploy/kubernetes";
const CONTAINER: &str = "kapso-exporter";

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn parse(path: &Path) -> Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_norway::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()))
}

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

fn str_at<'a>(value: &'a Value, pointer: &str) -> &'a str {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no string at {pointer}"))
}

/// The pod's container named kapso-exporter.
fn container(deployment: &Value) -> &Value {
    deployment
        .pointer("/spec/template/spec/containers")
        .and_then(Value::as_array)
        .unwrap()
        .iter()
        .find(|c| c["name"] == CONTAINER)
        .unwrap_or_else(|| panic!("the Deployment has no container {CONTAINER}"))
}

/// `labels` holds every pair of `selector`.
fn selects(selector: &Value, labels: &Value) -> bool {
    let selector = selector.as_object().unwrap();
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
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
    assert_eq!(deployment["kind"], "Deployment");
    assert!(selects(
        &deployment["spec"]["selector"]["matchLabels"],
        &deployment["spec"]["template"]["metadata"]["labels"]
    ));
    let c = container(&deployment);
    let port = &c["ports"][0];
    let port_name = port["name"].as_str().unwrap();
    let port_number = port["containerPort"].as_u64().unwrap();
    for (probe, path) in [
        ("livenessProbe", "/-/healthy"),
        ("readinessProbe", "/-/ready"),
    ] {
        let get = &c[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        assert!(
            get["port"] == port_name || get["port"].as_u64() == Some(port_number),
            "{probe} targets port {}, the container serves {port_name} ({port_number})",
            get["port"]
        );
    }
    // The exporter listens on the port the probes and the Service use.
    let listen = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .find_map(|a| a.strip_prefix("--web.listen-address="))
        .unwrap_or(kapso_exporter::config::DEFAULT_LISTEN_ADDRESS);
    assert_eq!(listen.rsplit(':').next().unwrap(), port_number.to_string());
    for kind in ["requests", "limits"] {
        for resource in ["cpu", "memory"] {
            assert!(
                c["resources"][kind][resource].is_string(),
                "no resources.{kind}.{resource}"
            );
        }
    }
}

#[test]
fn deployment_runs_locked_down_as_the_image_user() {
    let deployment = manifest("deployment.yaml");
    let pod = &deployment["spec"]["template"]["spec"];
    let c = container(&deployment);
    let security = &c["securityContext"];
    let pod_security = &pod["securityContext"];
    let either = |field: &str| {
        if security[field].is_null() {
            pod_security[field].clone()
        } else {
            security[field].clone()
        }
    };
    assert_eq!(either("runAsNonRoot"), true);
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert!(
        security["capabilities"]["drop"]
            .as_array()
            .is_some_and(|d| d.iter().any(|c| c == "ALL")),
        "capabilities.drop lacks ALL"
    );
    assert_eq!(either("seccompProfile")["type"], "RuntimeDefault");
    // The same numeric user as the image's USER.
    let dockerfile = std::fs::read_to_string(repo_root().join("Dockerfile")).unwrap();
    let user = dockerfile
        .lines()
        .filter_map(|l| l.trim().strip_prefix("USER "))
        .next_back()
        .unwrap();
    let uid: u64 = user.split(':').next().unwrap().trim().parse().unwrap();
    assert_eq!(either("runAsUser").as_u64(), Some(uid));
    assert_eq!(pod["automountServiceAccountToken"], false);
}

#[test]
fn api_key_comes_from_the_example_secret() {
    let deployment = manifest("deployment.yaml");
    let env = container(&deployment)["env"].as_array().unwrap();
    let key = env
        .iter()
        .find(|e| e["name"] == "KAPSO_API_KEY")
        .expect("the container sets KAPSO_API_KEY");
    assert!(
        key.get("value").is_none(),
        "KAPSO_API_KEY has a literal value"
    );
    let reference = &key["valueFrom"]["secretKeyRef"];
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
    let deployment = manifest("deployment.yaml");
    let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];
    let port_name = str_at(container(&deployment), "/ports/0/name");

    let service = manifest("service.yaml");
    assert!(selects(&service["spec"]["selector"], pod_labels));
    let service_port = &service["spec"]["ports"][0];
    assert_eq!(service_port["targetPort"], port_name);

    let monitor = manifest("servicemonitor.yaml");
    assert!(selects(
        &monitor["spec"]["selector"]["matchLabels"],
        &service["metadata"]["labels"]
    ));
    let endpoint = &monitor["spec"]["endpoints"][0];
    assert_eq!(endpoint["port"], service_port["name"]);
    assert_eq!(endpoint["path"], "/metrics");

    // The job name the alerts expect (`up{job="..."}`) is the one the ServiceMonitor sets.
    let rules = serde_json::to_string(&alert_groups()).unwrap();
    if let Some(rest) = rules.split(r#"up{job=\""#).nth(1) {
        let job = rest.split('\\').next().unwrap();
        let sets_job = endpoint["relabelings"].as_array().is_some_and(|r| {
            r.iter()
                .any(|r| r["targetLabel"] == "job" && r["replacement"] == job)
        });
        assert!(sets_job, "the ServiceMonitor does not set job=\"{job}\"");
    }
}

/// The `groups` of every `alerts/*.yml`, in file name order.
fn alert_groups() -> Vec<Value> {
    let dir = repo_root().join("alerts");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no rule files in alerts/");
    files
        .iter()
        .flat_map(|p| {
            parse(p)["groups"]
                .as_array()
                .unwrap_or_else(|| panic!("{} has no groups", p.display()))
                .clone()
        })
        .collect()
}

#[test]
fn prometheus_rule_holds_exactly_the_alert_rule_groups() {
    let rule = manifest("prometheusrule.yaml");
    assert_eq!(rule["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(rule["kind"], "PrometheusRule");
    let groups = rule["spec"]["groups"].as_array().unwrap();
    let expected = alert_groups();
    let names = |g: &[Value]| -> Vec<String> {
        g.iter()
            .map(|g| g["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        names(groups),
        names(&expected),
        "prometheusrule.yaml is out of date: python3 deploy/kubernetes/generate-prometheusrule.py"
    );
    for (got, want) in groups.iter().zip(&expected) {
        assert_eq!(
            got, want,
            "group {} of prometheusrule.yaml differs from alerts/: \
             python3 deploy/kubernetes/generate-prometheusrule.py",
            want["name"]
        );
    }
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
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("python3 with PyYAML is required when CI=true");
        }
        eprintln!("SKIPPED: python3 with PyYAML is not available");
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
