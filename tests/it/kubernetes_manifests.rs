#![allow(clippy::unwrap_used)]
//! deploy/kubernetes/ is well-formed and consistent: every file is a Kubernetes object, the
//! Deployment probes `/-/healthy` and `/-/ready` on the container's port, runs locked down and
//! takes the key from the example Secret's name and key, the Service and ServiceMonitor select
//! it, and the PrometheusRule holds exactly the groups of `alerts/*.yml`, so they cannot drift.
//!
//! The optional kustomize Components in deploy/kubernetes/components/ are rendered with
//! `kubectl kustomize` (from `KUBECTL` or the PATH; without it those tests fail under `CI=true`
//! and otherwise print `SKIPPED: ...`): `webhooks` adds the listener on its own port, its secret
//! from the example Secret, its own Service and an Ingress for `/webhooks/kapso` only; `storage`
//! mounts a PersistentVolumeClaim where `--storage.path` points, the root filesystem still
//! read-only. The base alone renders without either.

use crate::kube;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::kube::{container, parse, repo_root, str_at};
use serde_json::Value;

const DIR: &str = "deploy/kubernetes";
/// What components/storage passes as --storage.path.
const STORAGE_PATH: &str = "/var/lib/kapso-exporter";

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
    // The API key and the webhook secret (read by components/webhooks), both placeholders.
    for key_name in [key_name, "webhook-secret"] {
        let placeholder = secret["stringData"][key_name]
            .as_str()
            .unwrap_or_else(|| panic!("the example Secret has no stringData.{key_name}"));
        assert!(
            placeholder.contains("REPLACE"),
            "the example Secret's value {placeholder:?} does not look like a placeholder"
        );
    }
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

// ------------------------------------------------------------------------------------------------
// The optional Components, rendered with kubectl kustomize
// ------------------------------------------------------------------------------------------------

/// The directories of deploy/kubernetes/components/.
fn component_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(repo_root().join(DIR).join("components"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs
}

/// Each component is a kustomize Component that uses every YAML file beside it, and the base's
/// kustomization names each one (commented out: they are off by default).
#[test]
fn components_are_kustomize_components_using_every_file() {
    let dirs = component_dirs();
    let names: Vec<String> = dirs
        .iter()
        .map(|d| d.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["storage", "webhooks"]);
    let base = std::fs::read_to_string(repo_root().join(DIR).join("kustomization.yaml")).unwrap();
    assert!(
        manifest("kustomization.yaml").get("components").is_none(),
        "the base turns a component on"
    );
    for (dir, name) in dirs.iter().zip(&names) {
        assert!(
            base.contains(&format!("#   - components/{name}")),
            "kustomization.yaml does not show components/{name}"
        );
        let k = parse(&dir.join("kustomization.yaml"));
        assert_eq!(
            k["apiVersion"], "kustomize.config.k8s.io/v1alpha1",
            "{name}"
        );
        assert_eq!(k["kind"], "Component", "{name}");
        let mut used: BTreeSet<String> = BTreeSet::new();
        for r in k["resources"].as_array().into_iter().flatten() {
            used.insert(r.as_str().unwrap().to_owned());
        }
        for p in k["patches"].as_array().into_iter().flatten() {
            used.insert(p["path"].as_str().unwrap().to_owned());
        }
        let files: BTreeSet<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|f| f != "kustomization.yaml")
            .collect();
        assert_eq!(
            used, files,
            "components/{name} uses other files than it holds"
        );
    }
}

/// kubectl and an empty HOME for it, or `None` (after the outside-program rule).
fn kubectl() -> Option<(PathBuf, PathBuf)> {
    let bin = kube::program("KUBECTL", "kubectl")?;
    let home = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("kx-kubectl-home");
    std::fs::create_dir_all(&home).unwrap();
    Some((bin, home))
}

/// The objects of one render.
struct Objects(Vec<Value>);

impl Objects {
    fn render(components: &[&str]) -> Option<Objects> {
        let (bin, home) = kubectl()?;
        Some(Objects(kube::kustomize(&bin, components, &home)))
    }

    fn kinds(&self) -> Vec<&str> {
        let mut kinds: Vec<&str> = self.0.iter().map(|o| o["kind"].as_str().unwrap()).collect();
        kinds.sort();
        kinds
    }

    fn all(&self, kind: &str) -> Vec<&Value> {
        self.0.iter().filter(|o| o["kind"] == kind).collect()
    }

    fn named(&self, kind: &str, name: &str) -> &Value {
        self.0
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name} in the render"))
    }
}

/// The base alone: what deployment.yaml and the others say, nothing of the components.
#[test]
fn base_renders_without_webhooks_or_storage() {
    let Some(objects) = Objects::render(&[]) else {
        return;
    };
    assert_eq!(
        objects.kinds(),
        ["Deployment", "PrometheusRule", "Service", "ServiceMonitor"]
    );
    let deployment = objects.named("Deployment", "kapso-exporter");
    let args = kube::args(deployment);
    assert!(
        !args
            .iter()
            .any(|a| a.starts_with("--webhook.") || a.starts_with("--storage.")),
        "{args:?}"
    );
    assert_eq!(kube::container_port(deployment, "webhook"), None);
    assert!(kube::env_var(deployment, "KAPSO_WEBHOOK_SECRET").is_none());
    assert!(container(deployment).get("volumeMounts").is_none());
    kube::check_locked_down(deployment);
}

/// components/webhooks: the listener on :9854 with its secret from the example Secret, a Service
/// of its own that the ServiceMonitor leaves alone, an Ingress for /webhooks/kapso only; the
/// exporter accepts the resulting arguments.
#[test]
fn webhooks_component_adds_the_listener_its_service_and_an_ingress_for_webhooks_only() {
    let Some(objects) = Objects::render(&["webhooks"]) else {
        return;
    };
    assert_eq!(
        objects.kinds(),
        [
            "Deployment",
            "Ingress",
            "PrometheusRule",
            "Service",
            "Service",
            "ServiceMonitor"
        ]
    );
    let deployment = objects.named("Deployment", "kapso-exporter");
    kube::check_probes(deployment);
    kube::check_locked_down(deployment);
    kube::check_resources(deployment);
    let webhook_service = objects.named("Service", "kapso-exporter-webhook");
    let reference = kube::check_webhook(deployment, webhook_service, &objects.all("Ingress"));
    assert_eq!(kube::container_port(deployment, "webhook"), Some(9854));
    assert!(kube::args(deployment).contains(&"--webhook.listen-address=:9854"));
    let secret = manifest("secret.example.yaml");
    assert_eq!(reference["name"], secret["metadata"]["name"]);
    assert_eq!(reference["key"], "webhook-secret");
    assert!(secret["stringData"]["webhook-secret"].is_string());
    // The API key is still read as before, and /metrics is still scraped from the other Service.
    assert_eq!(
        kube::api_key_reference(deployment)["key"],
        kube::api_key_reference(&manifest("deployment.yaml"))["key"]
    );
    let monitor = &objects.all("ServiceMonitor")[0];
    kube::check_service_and_monitor(
        deployment,
        objects.named("Service", "kapso-exporter"),
        monitor,
    );
    kube::monitor_skips(monitor, webhook_service);

    // The exporter accepts these arguments with the two variables the Secret provides.
    let args: Vec<&str> = std::iter::once("kapso-exporter")
        .chain(kube::args(deployment))
        .collect();
    let cli = <kapso_exporter::config::Cli as clap::Parser>::try_parse_from(&args)
        .unwrap_or_else(|e| panic!("the exporter rejects {args:?}: {e}"));
    let env = |name: &str| match name {
        "KAPSO_API_KEY" => Some("sk-placeholder".to_owned()),
        "KAPSO_WEBHOOK_SECRET" => Some("whsec-placeholder".to_owned()),
        _ => None,
    };
    let loaded = kapso_exporter::config::Config::load(&cli, &env)
        .unwrap_or_else(|e| panic!("the exporter rejects {args:?}: {e}"));
    assert_eq!(
        loaded.webhook.expect("webhooks are off").address.port(),
        9854
    );
    assert!(loaded.projects.iter().all(|p| p.webhook_secret.is_some()));
}

/// components/storage: --storage.path on a PersistentVolumeClaim (ReadWriteOnce: one replica,
/// Recreate), writable by the image's user, the root filesystem still read-only.
#[test]
fn storage_component_mounts_a_claim_where_storage_path_points() {
    let Some(objects) = Objects::render(&["storage"]) else {
        return;
    };
    assert_eq!(
        objects.kinds(),
        [
            "Deployment",
            "PersistentVolumeClaim",
            "PrometheusRule",
            "Service",
            "ServiceMonitor"
        ]
    );
    let deployment = objects.named("Deployment", "kapso-exporter");
    kube::check_probes(deployment);
    kube::check_locked_down(deployment);
    assert!(kube::args(deployment).contains(&format!("--storage.path={STORAGE_PATH}").as_str()));
    let volume = kube::check_storage(deployment);
    let claim = volume["persistentVolumeClaim"]["claimName"]
        .as_str()
        .expect("the state volume is not a PersistentVolumeClaim");
    let pvc = objects.named("PersistentVolumeClaim", claim);
    assert_eq!(
        pvc["spec"]["accessModes"],
        serde_json::json!(["ReadWriteOnce"])
    );
    assert!(pvc["spec"]["resources"]["requests"]["storage"].is_string());
    assert_eq!(deployment["spec"]["replicas"], 1);
    assert_eq!(deployment["spec"]["strategy"]["type"], "Recreate");
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(
        pod["securityContext"]["fsGroup"],
        pod["securityContext"]["runAsUser"]
    );
    // The emptyDir alternative is shown, commented, in the component.
    let text = std::fs::read_to_string(
        repo_root()
            .join(DIR)
            .join("components/storage/deployment-patch.yaml"),
    )
    .unwrap();
    assert!(text.contains("#   emptyDir:"), "no emptyDir alternative");
}

/// Both components at once: each one's checks still pass.
#[test]
fn webhooks_and_storage_components_combine() {
    let Some(objects) = Objects::render(&["webhooks", "storage"]) else {
        return;
    };
    let deployment = objects.named("Deployment", "kapso-exporter");
    kube::check_probes(deployment);
    kube::check_locked_down(deployment);
    kube::check_webhook(
        deployment,
        objects.named("Service", "kapso-exporter-webhook"),
        &objects.all("Ingress"),
    );
    kube::check_storage(deployment);
    assert_eq!(objects.all("PersistentVolumeClaim").len(), 1);
}
