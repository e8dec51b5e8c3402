//! Checks of Kubernetes objects shared by tests/it/kubernetes_manifests.rs (the kustomize
//! manifests) and tests/it/helm_chart.rs (the Helm chart's rendered objects): both describe the same
//! Deployment, Service, ServiceMonitor and PrometheusRule, so they are held to the same rules.
//! Objects are YAML parsed into `serde_json::Value`s.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::Deserialize as _;
use serde_json::Value;

/// The exporter's container, in every Deployment.
pub const CONTAINER: &str = "kapso-exporter";

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn parse(path: &Path) -> Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_norway::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()))
}

/// Every document of a multi-document YAML stream (`helm template`, `kubectl kustomize`), empty
/// documents left out.
pub fn parse_stream(text: &str, what: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(text)
        .map(|doc| {
            Value::deserialize(doc).unwrap_or_else(|e| panic!("{what} is not valid YAML: {e}"))
        })
        .filter(|doc| !doc.is_null())
        .collect()
}

pub fn str_at<'a>(value: &'a Value, pointer: &str) -> &'a str {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no string at {pointer}"))
}

/// The pod's container named kapso-exporter.
pub fn container(deployment: &Value) -> &Value {
    deployment
        .pointer("/spec/template/spec/containers")
        .and_then(Value::as_array)
        .unwrap()
        .iter()
        .find(|c| c["name"] == CONTAINER)
        .unwrap_or_else(|| panic!("the Deployment has no container {CONTAINER}"))
}

/// The container's arguments.
pub fn args(deployment: &Value) -> Vec<&str> {
    container(deployment)["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect()
}

/// `labels` holds every pair of `selector`.
pub fn selects(selector: &Value, labels: &Value) -> bool {
    let selector = selector.as_object().unwrap();
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The Deployment selects its own pods, probes `/-/healthy` (liveness) and `/-/ready`
/// (readiness) on the container's port, and the exporter listens on that port. Returns the
/// port's name.
pub fn check_probes(deployment: &Value) -> String {
    assert_eq!(deployment["kind"], "Deployment");
    assert!(selects(
        &deployment["spec"]["selector"]["matchLabels"],
        &deployment["spec"]["template"]["metadata"]["labels"]
    ));
    let c = container(deployment);
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
    let listen = args(deployment)
        .into_iter()
        .find_map(|a| a.strip_prefix("--web.listen-address="))
        .unwrap_or(kapso_exporter::config::DEFAULT_LISTEN_ADDRESS);
    assert_eq!(listen.rsplit(':').next().unwrap(), port_number.to_string());
    port_name.to_owned()
}

/// The container sets CPU and memory requests and limits.
pub fn check_resources(deployment: &Value) {
    let c = container(deployment);
    for kind in ["requests", "limits"] {
        for resource in ["cpu", "memory"] {
            assert!(
                c["resources"][kind][resource].is_string(),
                "no resources.{kind}.{resource}"
            );
        }
    }
}

/// Non-root as the image's numeric user, read-only root filesystem, no privilege escalation,
/// every capability dropped, RuntimeDefault seccomp, no service account token.
pub fn check_locked_down(deployment: &Value) {
    let pod = &deployment["spec"]["template"]["spec"];
    let c = container(deployment);
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

/// The `secretKeyRef` KAPSO_API_KEY is read from; the variable never has a literal value.
pub fn api_key_reference(deployment: &Value) -> &Value {
    let env = container(deployment)["env"]
        .as_array()
        .expect("the container has no env");
    let key = env
        .iter()
        .find(|e| e["name"] == "KAPSO_API_KEY")
        .expect("the container sets KAPSO_API_KEY");
    assert!(
        key.get("value").is_none(),
        "KAPSO_API_KEY has a literal value"
    );
    &key["valueFrom"]["secretKeyRef"]
}

/// The Service selects the Deployment's pods and targets its port; the ServiceMonitor selects
/// the Service, scrapes `/metrics` on that port and names the job the alerts expect.
pub fn check_service_and_monitor(deployment: &Value, service: &Value, monitor: &Value) {
    let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];
    let port_name = str_at(container(deployment), "/ports/0/name");
    assert_eq!(service["kind"], "Service");
    assert!(
        selects(&service["spec"]["selector"], pod_labels),
        "the Service's selector {} does not select the pod's labels {pod_labels}",
        service["spec"]["selector"]
    );
    let service_port = &service["spec"]["ports"][0];
    assert_eq!(service_port["targetPort"], port_name);

    assert_eq!(monitor["kind"], "ServiceMonitor");
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

/// The `*.yml` files directly in `dir`, sorted by name.
pub fn rule_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "yml"))
        .collect();
    files.sort();
    files
}

/// The `groups` of every `alerts/*.yml`, in file name order.
pub fn alert_groups() -> Vec<Value> {
    let files = rule_files(&repo_root().join("alerts"));
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

/// The PrometheusRule's `spec.groups` are exactly the groups of `alerts/*.yml`; `fix` says how
/// to regenerate it.
pub fn check_rule_groups(rule: &Value, fix: &str) {
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
        "the PrometheusRule is out of date: {fix}"
    );
    for (got, want) in groups.iter().zip(&expected) {
        assert_eq!(
            got, want,
            "group {} of the PrometheusRule differs from alerts/: {fix}",
            want["name"]
        );
    }
}

/// The outside-program rule: a failure under `CI=true`, a visible skip elsewhere.
pub fn missing(what: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{what}; CI=true requires it");
    }
    // Written to the process's stderr, not through eprintln!, which the test harness captures
    // and hides for passing tests: a skip must stay visible.
    let _ = writeln!(std::io::stderr(), "SKIPPED: {what}");
}

/// `$VAR` if set, else `name` on the PATH; `None` (after the outside-program rule) if neither.
pub fn program(var: &str, name: &str) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(var).filter(|v| !v.is_empty()) {
        let path = PathBuf::from(path);
        assert!(path.is_file(), "{var}={} is not a file", path.display());
        return Some(path);
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    });
    if found.is_none() {
        missing(&format!(
            "{name} is not on PATH and {var} is not set (tools/install-helm.sh installs it)"
        ));
    }
    found
}

/// `kubectl kustomize deploy/kubernetes` with the given components of
/// deploy/kubernetes/components/ (none: the base alone). The components go in a throwaway
/// overlay under the target directory, which names the base by a relative path (kustomize
/// refuses absolute ones). `home` is an empty directory for HOME and KUBECONFIG.
pub fn kustomize(kubectl: &Path, components: &[&str], home: &Path) -> Vec<Value> {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let base = repo_root().join("deploy/kubernetes");
    let dir = if components.is_empty() {
        base.clone()
    } else {
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("kx-kustomize-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let dir = dir.canonicalize().unwrap();
        // From `dir` up to the root, then down to `base`.
        let up = "../".repeat(dir.components().count() - 1);
        let to = |p: &Path| {
            let p = p.canonicalize().unwrap();
            format!("{up}{}", p.strip_prefix("/").unwrap().display())
        };
        let mut text = format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - {}\ncomponents:\n",
            to(&base)
        );
        for component in components {
            text.push_str(&format!(
                "  - {}\n",
                to(&base.join("components").join(component))
            ));
        }
        std::fs::write(dir.join("kustomization.yaml"), text).unwrap();
        dir
    };
    let out = std::process::Command::new(kubectl)
        .arg("kustomize")
        .arg(&dir)
        .env("KUBECONFIG", home.join("kubeconfig"))
        .env("HOME", home)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    if dir != base {
        let _ = std::fs::remove_dir_all(&dir);
    }
    assert!(
        out.status.success(),
        "kubectl kustomize with {components:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse_stream(
        &String::from_utf8(out.stdout).unwrap(),
        "kubectl kustomize's output",
    )
}

/// The container's environment variable `name`, if set.
pub fn env_var<'a>(deployment: &'a Value, name: &str) -> Option<&'a Value> {
    container(deployment)["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
}

/// The container's port named `name`: its number.
pub fn container_port(deployment: &Value, name: &str) -> Option<u64> {
    container(deployment)["ports"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == name)
        .map(|p| p["containerPort"].as_u64().unwrap())
}

/// A Service port targets the container port `name` (by name or number).
fn targets(service_port: &Value, name: &str, number: u64) -> bool {
    service_port["targetPort"] == name || service_port["targetPort"].as_u64() == Some(number)
}

/// The webhook listener is on: `--webhook.listen-address` on the container's port `webhook`,
/// KAPSO_WEBHOOK_SECRET from a Secret (never a literal, never a flag), the Service `service`
/// selects the pod and forwards only to the webhook port, and every Ingress routes only
/// `/webhooks/kapso` prefixes to that Service, so /metrics is never exposed. The probes stay on
/// the metrics port. Returns the `secretKeyRef` of KAPSO_WEBHOOK_SECRET, or `Value::Null` when the
/// secrets come from elsewhere (the config file's webhook_secret_*).
pub fn check_webhook<'a>(
    deployment: &'a Value,
    service: &Value,
    ingresses: &[&Value],
) -> &'a Value {
    let port = container_port(deployment, "webhook").expect("no container port named webhook");
    let args = args(deployment);
    let listen: Vec<&str> = args
        .iter()
        .filter_map(|a| a.strip_prefix("--webhook.listen-address="))
        .collect();
    assert_eq!(listen.len(), 1, "{args:?}");
    assert_eq!(
        listen[0].rsplit(':').next().unwrap(),
        port.to_string(),
        "the listener and the container port differ"
    );
    assert!(
        !args.iter().any(|a| a.starts_with("--webhook.secret=")),
        "the secret is a flag value: {args:?}"
    );
    let c = container(deployment);
    for probe in ["livenessProbe", "readinessProbe"] {
        assert_eq!(c[probe]["httpGet"]["port"], "http-metrics", "{probe}");
    }
    let reference = match env_var(deployment, "KAPSO_WEBHOOK_SECRET") {
        Some(var) => {
            assert!(
                var.get("value").is_none(),
                "KAPSO_WEBHOOK_SECRET has a literal value"
            );
            let reference = &var["valueFrom"]["secretKeyRef"];
            assert!(reference["name"].is_string() && reference["key"].is_string());
            reference
        }
        None => &Value::Null,
    };

    // The Service: the pod, the webhook port and nothing else.
    assert_eq!(service["kind"], "Service");
    let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];
    assert!(selects(&service["spec"]["selector"], pod_labels));
    let ports = service["spec"]["ports"].as_array().unwrap();
    assert_eq!(
        ports.len(),
        1,
        "the webhook Service has other ports: {ports:?}"
    );
    assert!(
        targets(&ports[0], "webhook", port),
        "the webhook Service targets {}",
        ports[0]["targetPort"]
    );
    let metrics = container_port(deployment, "http-metrics").unwrap();
    assert!(!targets(&ports[0], "http-metrics", metrics));

    // Every Ingress (none is fine: nothing is exposed): only /webhooks/kapso, only to the
    // webhook Service's port.
    for ingress in ingresses {
        assert_eq!(ingress["kind"], "Ingress");
        assert!(
            ingress["spec"].get("defaultBackend").is_none(),
            "the Ingress has a default backend"
        );
        let rules = ingress["spec"]["rules"].as_array().unwrap();
        assert!(!rules.is_empty());
        for rule in rules {
            let paths = rule["http"]["paths"].as_array().unwrap();
            assert!(!paths.is_empty());
            for path in paths {
                let p = path["path"].as_str().unwrap();
                assert!(
                    p == "/webhooks/kapso" || p.starts_with("/webhooks/kapso/"),
                    "the Ingress routes {p}"
                );
                assert_eq!(path["pathType"], "Prefix", "{p}");
                let backend = &path["backend"]["service"];
                assert_eq!(backend["name"], service["metadata"]["name"], "{p}");
                assert!(
                    backend["port"]["name"] == ports[0]["name"]
                        || backend["port"]["number"] == ports[0]["port"],
                    "{p} goes to port {}",
                    backend["port"]
                );
            }
        }
    }
    reference
}

/// `--storage.path` names a writable mount of a pod volume (the root filesystem stays read-only);
/// returns that volume.
pub fn check_storage(deployment: &Value) -> &Value {
    let args = args(deployment);
    let paths: Vec<&str> = args
        .iter()
        .filter_map(|a| a.strip_prefix("--storage.path="))
        .collect();
    assert_eq!(paths.len(), 1, "{args:?}");
    let c = container(deployment);
    let mount = c["volumeMounts"]
        .as_array()
        .expect("no volumeMounts")
        .iter()
        .find(|m| m["mountPath"] == paths[0])
        .unwrap_or_else(|| panic!("nothing is mounted at --storage.path={}", paths[0]));
    assert_ne!(mount["readOnly"], true, "the storage mount is read-only");
    assert!(mount.get("subPath").is_none());
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    deployment["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .expect("no volumes")
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap_or_else(|| panic!("no volume {}", mount["name"]))
}

/// The ServiceMonitor selects the metrics Service and not the webhook Service.
pub fn monitor_skips(monitor: &Value, webhook_service: &Value) {
    assert!(
        !selects(
            &monitor["spec"]["selector"]["matchLabels"],
            &webhook_service["metadata"]["labels"]
        ),
        "the ServiceMonitor selects the webhook Service"
    );
}
