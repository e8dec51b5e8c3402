#![allow(clippy::unwrap_used)]
//! The Helm chart in deploy/helm/kapso-exporter/, proven offline: `helm lint --strict` passes for
//! the default values and for ci/all-on-values.yaml (every option on), and `helm template`
//! renders objects that pass the same checks as deploy/kubernetes/ (probes, security context,
//! the key's Secret reference, Service and ServiceMonitor selecting the pod, the PrometheusRule
//! holding exactly `alerts/*.yml`), dashboards equal to `dashboards/*.json`, the config mounted
//! and passed, and a default Deployment equal to the kustomize one. The rendered config, web
//! config and args load in the exporter's own `Config::load`; NOTES.txt tells how to reach
//! `/metrics`. The chart's version is the crate's, every value is commented, and its copies of
//! the alerts and dashboards are byte copies.
//!
//! `webhook.enabled` adds the listener on its own port with its secret from a Secret, its own
//! Service (which the ServiceMonitor leaves alone) and an optional Ingress for `/webhooks/kapso`
//! only; `storage.enabled` mounts a writable volume (a claim or an emptyDir) where
//! `--storage.path` points, the root filesystem still read-only. Both are checked with the
//! shared rules of tests/kube/mod.rs, as the kustomize Components are.
//!
//! helm and kubectl come from `HELM`/`KUBECTL` or the PATH (`tools/install-helm.sh` installs
//! both); without them the tests that need them fail under `CI=true` and otherwise print
//! `SKIPPED: ...` and pass. Helm's cache, config and data directories are temporary ones.

use crate::kube;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::kube::{container, parse, parse_stream, program, repo_root};
use crate::support::TempDir;
use base64::Engine as _;
use serde_json::{Value, json};

const CHART: &str = "deploy/helm/kapso-exporter";
const RELEASE: &str = "kx";
const NAMESPACE: &str = "monitoring";

fn chart() -> PathBuf {
    repo_root().join(CHART)
}

/// helm with its own empty cache, config and data directories and no kubeconfig, so that
/// nothing outside a temporary directory is read or written.
struct Helm {
    bin: PathBuf,
    home: TempDir,
}

impl Helm {
    fn find() -> Option<Helm> {
        Some(Helm {
            bin: program("HELM", "helm")?,
            home: TempDir::new("kx-helm"),
        })
    }

    fn run(&self, args: &[OsString]) -> Output {
        let home = &self.home.0;
        let mut command = Command::new(&self.bin);
        command
            .args(args)
            .env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_DATA_HOME", home.join("data"))
            .env("KUBECONFIG", home.join("kubeconfig"))
            .env("HOME", home)
            .env_remove("HELM_KUBECONTEXT")
            .env_remove("HELM_NAMESPACE")
            .stdin(Stdio::null());
        command
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.bin.display()))
    }

    /// `values` written to a file for `-f` (JSON is YAML).
    fn values_file(&self, values: &Value) -> PathBuf {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.home
            .write(&format!("values-{n}.json"), &values.to_string())
    }

    fn args(&self, command: &[&str], values: &[&Path]) -> Vec<OsString> {
        let mut args: Vec<OsString> = command.iter().map(OsString::from).collect();
        for file in values {
            args.push("-f".into());
            args.push(file.as_os_str().to_owned());
        }
        args
    }

    fn lint(&self, values: &[&Path]) {
        let mut args = self.args(&["lint", "--strict", "--namespace", NAMESPACE], values);
        args.push(chart().into_os_string());
        let out = self.run(&args);
        assert!(
            out.status.success(),
            "helm lint --strict {values:?} failed\n--- stdout\n{}\n--- stderr\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `helm template` with the values files, in order: the objects, or helm's stderr.
    fn try_template(&self, values: &[&Path]) -> Result<Vec<Value>, String> {
        let mut args = self.args(&["template", RELEASE, "--namespace", NAMESPACE], values);
        args.push(chart().into_os_string());
        let out = self.run(&args);
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(parse_stream(
            &String::from_utf8(out.stdout).unwrap(),
            "helm template's output",
        ))
    }

    fn template(&self, values: &Value) -> Rendered {
        let file = self.values_file(values);
        Rendered(
            self.try_template(&[&file])
                .unwrap_or_else(|e| panic!("helm template failed with {values}:\n{e}")),
        )
    }

    fn template_all_on(&self) -> Rendered {
        Rendered(
            self.try_template(&[&all_on_values()])
                .unwrap_or_else(|e| panic!("helm template -f ci/all-on-values.yaml failed:\n{e}")),
        )
    }
}

fn all_on_values() -> PathBuf {
    chart().join("ci/all-on-values.yaml")
}

/// The objects of one render.
struct Rendered(Vec<Value>);

impl Rendered {
    fn all(&self, kind: &str) -> Vec<&Value> {
        self.0.iter().filter(|o| o["kind"] == kind).collect()
    }

    fn one(&self, kind: &str) -> &Value {
        let all = self.all(kind);
        assert_eq!(
            all.len(),
            1,
            "expected one {kind}, the chart renders {}",
            all.len()
        );
        all[0]
    }

    fn named(&self, kind: &str, name: &str) -> &Value {
        self.0
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name} in the render"))
    }

    fn kinds(&self) -> Vec<&str> {
        let mut kinds: Vec<&str> = self.0.iter().map(|o| o["kind"].as_str().unwrap()).collect();
        kinds.sort();
        kinds
    }
}

/// The Secret name and API key's key of deploy/kubernetes/secret.example.yaml, which the
/// kustomize Deployment reads: the default render uses the same ones.
fn example_secret() -> (String, String) {
    let secret = parse(&repo_root().join("deploy/kubernetes/secret.example.yaml"));
    let data = secret["stringData"].as_object().unwrap();
    let deployment = parse(&repo_root().join("deploy/kubernetes/deployment.yaml"));
    let reference = kube::api_key_reference(&deployment);
    assert_eq!(reference["name"], secret["metadata"]["name"]);
    let key = reference["key"].as_str().unwrap();
    assert!(data.contains_key(key), "the example Secret has no {key}");
    (
        secret["metadata"]["name"].as_str().unwrap().to_owned(),
        key.to_owned(),
    )
}

fn default_values() -> Value {
    let (name, key) = example_secret();
    json!({"existingSecret": {"name": name, "key": key}})
}

/// Every object carries the chart's labels, with the release's name and instance.
fn check_labels(rendered: &Rendered, name: &str) {
    for object in &rendered.0 {
        let labels = &object["metadata"]["labels"];
        let what = format!("{} {}", object["kind"], object["metadata"]["name"]);
        assert_eq!(labels["app.kubernetes.io/name"], name, "{what}");
        assert_eq!(labels["app.kubernetes.io/instance"], RELEASE, "{what}");
        assert_eq!(labels["app.kubernetes.io/managed-by"], "Helm", "{what}");
        assert_eq!(labels["app.kubernetes.io/part-of"], name, "{what}");
        for label in ["app.kubernetes.io/version", "app.kubernetes.io/component"] {
            assert!(
                labels[label].as_str().is_some_and(|v| !v.is_empty()),
                "{what} has no {label}"
            );
        }
        assert_eq!(
            labels["helm.sh/chart"],
            format!("kapso-exporter-{}", env!("CARGO_PKG_VERSION")),
            "{what}"
        );
    }
}

/// The container's environment by variable name.
fn env(deployment: &Value) -> BTreeMap<String, Value> {
    container(deployment)["env"]
        .as_array()
        .map(|env| {
            env.iter()
                .map(|e| (e["name"].as_str().unwrap().to_owned(), e.clone()))
                .collect()
        })
        .unwrap_or_default()
}

// ------------------------------------------------------------------------------------------------
// Without helm
// ------------------------------------------------------------------------------------------------

#[test]
fn chart_version_and_app_version_are_the_crate_version() {
    let chart = parse(&chart().join("Chart.yaml"));
    assert_eq!(chart["apiVersion"], "v2");
    assert_eq!(chart["name"], "kapso-exporter");
    assert_eq!(
        chart["version"],
        env!("CARGO_PKG_VERSION"),
        "Chart.yaml version"
    );
    assert_eq!(
        chart["appVersion"],
        env!("CARGO_PKG_VERSION"),
        "Chart.yaml appVersion"
    );
}

/// files/alerts/ and files/dashboards/ hold byte copies of alerts/*.yml and dashboards/*.json,
/// no more, no less.
#[test]
fn chart_files_are_byte_copies_of_the_alerts_and_dashboards() {
    for (source, ext) in [("alerts", "yml"), ("dashboards", "json")] {
        let list = |dir: &Path| -> BTreeMap<String, Vec<u8>> {
            std::fs::read_dir(dir)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
                .map(|e| e.unwrap().path())
                .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == ext))
                .map(|p| {
                    (
                        p.file_name().unwrap().to_string_lossy().into_owned(),
                        std::fs::read(&p).unwrap(),
                    )
                })
                .collect()
        };
        let want = list(&repo_root().join(source));
        let got = list(&chart().join("files").join(source));
        assert!(!want.is_empty(), "no {source}/*.{ext}");
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>(),
            "{CHART}/files/{source}/ lists other files than {source}/: run deploy/helm/sync-chart-files.sh"
        );
        for (name, bytes) in &want {
            assert!(
                &got[name] == bytes,
                "{CHART}/files/{source}/{name} differs from {source}/{name}: run deploy/helm/sync-chart-files.sh"
            );
        }
    }
}

/// Every value in values.yaml is described, in helm-docs' convention: a comment block starting
/// with `# --` right above it, or above the map value holding it (podSecurityContext). A plain
/// comment above a section (serviceMonitor:) does not count for the values inside.
#[test]
fn every_value_is_commented() {
    let text = std::fs::read_to_string(chart().join("values.yaml")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    // (indent, documented) of the enclosing keys.
    let mut stack: Vec<(usize, bool)> = Vec::new();
    // Whether the comment block right above (no blank line between) has a `# --` line.
    let mut described = false;
    let mut undocumented = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.is_empty() {
            described = false;
            continue;
        }
        if trimmed.starts_with('#') {
            described |= trimmed.starts_with("# --");
            continue;
        }
        if trimmed.starts_with('-') {
            continue;
        }
        let indent = line.len() - trimmed.len();
        let (key, value) = trimmed
            .split_once(':')
            .unwrap_or_else(|| panic!("values.yaml:{}: not a key: {line}", i + 1));
        while stack.last().is_some_and(|&(d, _)| d >= indent) {
            stack.pop();
        }
        let documented = described || stack.last().is_some_and(|&(_, d)| d);
        // A section: no value of its own, keys below.
        let section = value.trim().is_empty()
            && lines[i + 1..]
                .iter()
                .find(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
                .is_some_and(|next| {
                    let next_indent = next.len() - next.trim_start().len();
                    next_indent > indent && !next.trim_start().starts_with('-')
                });
        if !documented && !section {
            undocumented.push(format!("values.yaml:{}: {key}", i + 1));
        }
        stack.push((indent, documented));
        described = false;
    }
    assert!(
        undocumented.is_empty(),
        "values without a `# --` comment: {undocumented:#?}"
    );
}

// ------------------------------------------------------------------------------------------------
// With helm
// ------------------------------------------------------------------------------------------------

#[test]
fn lint_strict_passes_for_the_default_and_the_all_on_values() {
    let Some(helm) = Helm::find() else { return };
    helm.lint(&[]);
    helm.lint(&[&helm.values_file(&default_values())]);
    helm.lint(&[&all_on_values()]);
}

#[test]
fn default_render_is_the_exporter_alone_reading_the_existing_secret() {
    let Some(helm) = Helm::find() else { return };
    let rendered = helm.template(&default_values());
    assert_eq!(rendered.kinds(), ["Deployment", "Service"]);
    check_labels(&rendered, "kapso-exporter");

    let deployment = rendered.one("Deployment");
    assert_eq!(deployment["spec"]["replicas"], 1);
    assert_eq!(deployment["spec"]["strategy"]["type"], "Recreate");
    kube::check_probes(deployment);
    kube::check_locked_down(deployment);
    assert!(
        container(deployment).get("resources").is_none(),
        "resources are set by default"
    );
    let (name, key) = example_secret();
    let reference = kube::api_key_reference(deployment);
    assert_eq!(reference["name"], name.as_str());
    assert_eq!(reference["key"], key.as_str());
    assert_eq!(
        container(deployment)["image"],
        format!("kapso-exporter:{}", env!("CARGO_PKG_VERSION"))
    );
    let args = kube::args(deployment);
    assert!(
        !args.iter().any(|a| a.starts_with("--config.file")),
        "{args:?}"
    );

    // The ServiceMonitor alone, turned on.
    let mut values = default_values();
    values["serviceMonitor"] = json!({"enabled": true});
    let rendered = helm.template(&values);
    kube::check_service_and_monitor(
        rendered.one("Deployment"),
        rendered.one("Service"),
        rendered.one("ServiceMonitor"),
    );
}

/// `helm template` with the default values (and the example Secret) describes the Deployment,
/// Service and ServiceMonitor that `kubectl kustomize deploy/kubernetes` does. The differences,
/// stated here: the chart leaves resources unset, and its objects carry Helm's labels.
#[test]
fn default_render_matches_the_kustomize_manifests() {
    let Some(helm) = Helm::find() else { return };
    let Some(kubectl) = program("KUBECTL", "kubectl") else {
        return;
    };
    let kustomized = Rendered(kube::kustomize(&kubectl, &[], &helm.home.0));
    let mut values = default_values();
    values["serviceMonitor"] = json!({"enabled": true});
    values["prometheusRule"] = json!({"enabled": true});
    let rendered = helm.template(&values);

    // The Deployment: the same pod but for labels and resources.
    let (chart, kust) = (rendered.one("Deployment"), kustomized.one("Deployment"));
    for field in ["replicas", "strategy"] {
        assert_eq!(chart["spec"][field], kust["spec"][field], "spec.{field}");
    }
    let mut chart_pod = chart["spec"]["template"]["spec"].clone();
    let mut kust_pod = kust["spec"]["template"]["spec"].clone();
    let kust_resources = kust_pod["containers"][0]
        .as_object_mut()
        .unwrap()
        .remove("resources");
    assert!(
        kust_resources.is_some(),
        "the kustomize Deployment sets resources"
    );
    assert!(
        chart_pod["containers"][0].get("resources").is_none(),
        "the chart sets resources by default"
    );
    // Compared field by field first, for readable failures, then as a whole.
    for field in [
        "args",
        "env",
        "ports",
        "livenessProbe",
        "readinessProbe",
        "securityContext",
        "image",
        "imagePullPolicy",
    ] {
        assert_eq!(
            chart_pod["containers"][0][field], kust_pod["containers"][0][field],
            "container {field}"
        );
    }
    for field in [
        "securityContext",
        "automountServiceAccountToken",
        "enableServiceLinks",
    ] {
        assert_eq!(chart_pod[field], kust_pod[field], "pod {field}");
    }
    chart_pod.as_object_mut().unwrap().remove("containers");
    kust_pod.as_object_mut().unwrap().remove("containers");
    assert_eq!(chart_pod, kust_pod, "the pod specs differ");
    // Helm's labels are a superset of the kustomize ones, but for the release's name.
    let kust_labels = kust["spec"]["template"]["metadata"]["labels"]
        .as_object()
        .unwrap();
    let chart_labels = &chart["spec"]["template"]["metadata"]["labels"];
    for (label, value) in kust_labels {
        assert_eq!(&chart_labels[label], value, "pod label {label}");
    }

    // The Service: the same spec but for the selector, which adds the release.
    let (chart, kust) = (rendered.one("Service"), kustomized.one("Service"));
    let strip = |s: &Value| {
        let mut s = s["spec"].clone();
        s.as_object_mut().unwrap().remove("selector");
        s
    };
    assert_eq!(strip(chart), strip(kust), "Service spec");
    assert!(kube::selects(
        &kust["spec"]["selector"],
        &chart["spec"]["selector"]
    ));

    // The ServiceMonitor: the same endpoint (port, path, interval, timeout, job name).
    let (chart, kust) = (
        rendered.one("ServiceMonitor"),
        kustomized.one("ServiceMonitor"),
    );
    assert_eq!(
        chart["spec"]["endpoints"], kust["spec"]["endpoints"],
        "ServiceMonitor endpoints"
    );
    // The PrometheusRule: the same groups.
    assert_eq!(
        rendered.one("PrometheusRule")["spec"],
        kustomized.one("PrometheusRule")["spec"]
    );
}

#[test]
fn all_on_render_passes_every_check() {
    let Some(helm) = Helm::find() else { return };
    let values = parse(&all_on_values());
    let rendered = helm.template_all_on();
    check_labels(&rendered, "kapso");
    let fullname = values["fullnameOverride"].as_str().unwrap();
    for object in &rendered.0 {
        assert_eq!(object["metadata"]["namespace"], values["namespaceOverride"]);
        assert_eq!(object["metadata"]["labels"]["team"], "messaging");
    }

    let deployment = rendered.one("Deployment");
    kube::check_probes(deployment);
    kube::check_locked_down(deployment);
    kube::check_resources(deployment);
    assert_eq!(container(deployment)["resources"], values["resources"]);
    let c = container(deployment);
    assert_eq!(
        c["image"],
        "registry.example.com/monitoring/kapso-exporter:0.1.0-test"
    );
    assert_eq!(c["imagePullPolicy"], "Always");
    for probe in ["livenessProbe", "readinessProbe"] {
        // webConfig turns TLS on: the probes follow, with the configured headers and timing.
        assert_eq!(c[probe]["httpGet"]["scheme"], "HTTPS", "{probe}");
        assert_eq!(
            c[probe]["httpGet"]["httpHeaders"],
            values["probes"]["httpHeaders"]
        );
        for field in ["periodSeconds", "timeoutSeconds", "failureThreshold"] {
            assert_eq!(c[probe][field], values["probes"][field], "{probe}.{field}");
        }
    }
    let pod = &deployment["spec"]["template"];
    for (field, value) in [
        ("imagePullSecrets", "imagePullSecrets"),
        ("nodeSelector", "nodeSelector"),
        ("tolerations", "tolerations"),
        ("affinity", "affinity"),
        ("priorityClassName", "priorityClassName"),
    ] {
        assert_eq!(pod["spec"][field], values[value], "pod {field}");
    }
    assert_eq!(
        pod["metadata"]["annotations"]["example.com/owner"],
        "messaging"
    );
    assert_eq!(pod["metadata"]["labels"]["example.com/tier"], "monitoring");
    for checksum in ["checksum/config", "checksum/secret"] {
        let sum = pod["metadata"]["annotations"][checksum]
            .as_str()
            .unwrap_or("");
        assert_eq!(sum.len(), 64, "{checksum}: {sum:?}");
    }

    // Args: the chart's, the two files, the webhook listener and its file, the storage, then
    // extraArgs in order.
    let args = kube::args(deployment);
    let config_file = "/etc/kapso-exporter/config/config.yml";
    let web_config_file = "/etc/kapso-exporter/web/web-config.yml";
    let webhook_web_config_file = "/etc/kapso-exporter/webhook-web/web-config.yml";
    let extra: Vec<&str> = values["extraArgs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(
        args,
        [
            "--web.listen-address=:9853",
            "--log.format=logfmt",
            &format!("--config.file={config_file}"),
            &format!("--web.config.file={web_config_file}"),
            &format!("--webhook.listen-address=:{}", values["webhook"]["port"]),
            &format!("--webhook.config.file={webhook_web_config_file}"),
            "--storage.path=/var/lib/kapso-exporter",
        ]
        .into_iter()
        .chain(extra)
        .collect::<Vec<_>>()
    );

    // The config and web config, each in its object, mounted where the flags say.
    let mounted = |file: &str| -> (String, String) {
        let path = Path::new(file);
        let dir = path.parent().unwrap().to_str().unwrap();
        let mount = c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["mountPath"] == dir)
            .unwrap_or_else(|| panic!("nothing is mounted at {dir}"));
        assert_eq!(mount["readOnly"], true);
        let volume = deployment["spec"]["template"]["spec"]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == mount["name"])
            .unwrap();
        let file_name = path.file_name().unwrap().to_str().unwrap().to_owned();
        if let Some(name) = volume["configMap"]["name"].as_str() {
            let map = rendered.named("ConfigMap", name);
            (
                map["data"][&file_name].as_str().unwrap().to_owned(),
                name.into(),
            )
        } else {
            let name = volume["secret"]["secretName"].as_str().unwrap();
            let secret = rendered.named("Secret", name);
            let data = base64::engine::general_purpose::STANDARD
                .decode(secret["data"][&file_name].as_str().unwrap())
                .unwrap();
            (String::from_utf8(data).unwrap(), name.into())
        }
    };
    let (config, config_map) = mounted(config_file);
    assert_eq!(config_map, format!("{fullname}-config"));
    let config: Value = serde_norway::from_str(&config).unwrap();
    assert_eq!(config, values["config"]);
    let (web_config, web_secret) = mounted(web_config_file);
    assert_eq!(web_secret, format!("{fullname}-web-config"));
    let web_config: Value = serde_norway::from_str(&web_config).unwrap();
    assert_eq!(web_config, values["webConfig"]);
    assert_eq!(
        rendered.named("Secret", &web_secret)["type"],
        "Opaque",
        "the web config is a Secret"
    );
    let (webhook_web, webhook_web_secret) = mounted(webhook_web_config_file);
    assert_eq!(webhook_web_secret, format!("{fullname}-webhook-web-config"));
    let webhook_web: Value = serde_norway::from_str(&webhook_web).unwrap();
    assert_eq!(webhook_web, values["webhook"]["webConfig"]);

    // The chart-created Secret holds apiKey, under the key the env reads.
    let reference = kube::api_key_reference(deployment);
    assert_eq!(reference["name"], fullname);
    let secret = rendered.named("Secret", fullname);
    let key = base64::engine::general_purpose::STANDARD
        .decode(
            secret["data"][reference["key"].as_str().unwrap()]
                .as_str()
                .unwrap(),
        )
        .unwrap();
    assert_eq!(key, values["apiKey"].as_str().unwrap().as_bytes());
    // extraEnv, extraVolumes and extraVolumeMounts are appended after the chart's.
    let env = env(deployment);
    assert_eq!(
        env["KAPSO_MARKETING_KEY"], values["extraEnv"][0],
        "extraEnv"
    );
    let pod_volumes = deployment["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap();
    assert_eq!(
        pod_volumes[pod_volumes.len() - 2..],
        values["extraVolumes"].as_array().unwrap()[..]
    );
    let mounts = c["volumeMounts"].as_array().unwrap();
    assert_eq!(
        mounts[mounts.len() - 2..],
        values["extraVolumeMounts"].as_array().unwrap()[..]
    );

    // Service and ServiceMonitor.
    let service = rendered.named("Service", fullname);
    let monitor = rendered.one("ServiceMonitor");
    kube::check_service_and_monitor(deployment, service, monitor);
    check_all_on_webhook(&rendered, &values);
    check_all_on_storage(&rendered, &values);
    assert_eq!(
        service["spec"]["ports"][0]["port"],
        values["service"]["port"]
    );
    assert_eq!(
        service["metadata"]["annotations"],
        values["service"]["annotations"]
    );
    assert_eq!(
        service["metadata"]["labels"]["example.com/exposed"],
        "internal"
    );
    let sm = &values["serviceMonitor"];
    let endpoint = &monitor["spec"]["endpoints"][0];
    assert_eq!(
        monitor["metadata"]["labels"]["release"],
        sm["labels"]["release"]
    );
    assert_eq!(endpoint["scheme"], "https", "TLS is on, the scrape follows");
    for field in [
        "interval",
        "scrapeTimeout",
        "tlsConfig",
        "basicAuth",
        "metricRelabelings",
    ] {
        assert_eq!(
            endpoint[field], sm[field],
            "ServiceMonitor endpoint {field}"
        );
    }
    let relabelings = endpoint["relabelings"].as_array().unwrap();
    assert_eq!(relabelings.last().unwrap(), &sm["relabelings"][0]);

    // PrometheusRule and dashboards.
    let rule = rendered.one("PrometheusRule");
    kube::check_rule_groups(rule, "run deploy/helm/sync-chart-files.sh");
    assert_eq!(
        rule["metadata"]["labels"]["release"],
        "kube-prometheus-stack"
    );
    check_dashboards(&rendered, &values);
}

/// The all-on webhook listener: its port, the chart-created Secret with webhook.secret, its own
/// Service as configured, the Ingress with the configured class, annotations, hosts (the second
/// one with the default path) and TLS.
fn check_all_on_webhook(rendered: &Rendered, values: &Value) {
    let fullname = values["fullnameOverride"].as_str().unwrap();
    let w = &values["webhook"];
    let deployment = rendered.one("Deployment");
    let webhook_service = rendered.named("Service", &format!("{fullname}-webhook"));
    let reference = kube::check_webhook(deployment, webhook_service, &rendered.all("Ingress"));
    assert_eq!(
        kube::container_port(deployment, "webhook"),
        w["port"].as_u64()
    );
    assert_eq!(reference["name"], format!("{fullname}-webhook"));
    assert_eq!(reference["key"], "webhook-secret");
    let secret = rendered.named("Secret", &format!("{fullname}-webhook"));
    let data = base64::engine::general_purpose::STANDARD
        .decode(secret["data"]["webhook-secret"].as_str().unwrap())
        .unwrap();
    assert_eq!(data, w["secret"].as_str().unwrap().as_bytes());
    assert!(
        !serde_json::to_string(deployment)
            .unwrap()
            .contains(w["secret"].as_str().unwrap()),
        "the webhook secret is in the Deployment"
    );
    assert_eq!(webhook_service["spec"]["type"], w["service"]["type"]);
    assert_eq!(
        webhook_service["spec"]["ports"][0]["port"],
        w["service"]["port"]
    );
    assert_eq!(
        webhook_service["metadata"]["annotations"],
        w["service"]["annotations"]
    );
    assert_eq!(
        webhook_service["metadata"]["labels"]["example.com/exposed"],
        "internet"
    );
    assert_eq!(
        webhook_service["metadata"]["labels"]["app.kubernetes.io/component"],
        "webhook"
    );
    kube::monitor_skips(rendered.one("ServiceMonitor"), webhook_service);

    let ingress = rendered.one("Ingress");
    let i = &w["ingress"];
    assert_eq!(ingress["spec"]["ingressClassName"], i["className"]);
    assert_eq!(ingress["metadata"]["annotations"], i["annotations"]);
    assert_eq!(ingress["spec"]["tls"], i["tls"]);
    let rules = ingress["spec"]["rules"].as_array().unwrap();
    let hosts: Vec<&str> = rules.iter().map(|r| r["host"].as_str().unwrap()).collect();
    assert_eq!(
        hosts,
        [
            "kapso-webhooks.example.com",
            "kapso-webhooks-sales.example.com"
        ]
    );
    for rule in rules {
        let paths = rule["http"]["paths"].as_array().unwrap();
        assert_eq!(paths.len(), 1);
        assert_eq!(paths[0]["path"], "/webhooks/kapso");
        assert_eq!(paths[0]["pathType"], "Prefix");
    }
}

/// The all-on storage: the chart's claim as configured, mounted where --storage.path points,
/// writable by the image's group.
fn check_all_on_storage(rendered: &Rendered, values: &Value) {
    let fullname = values["fullnameOverride"].as_str().unwrap();
    let pvc_values = &values["storage"]["persistentVolumeClaim"];
    let deployment = rendered.one("Deployment");
    let volume = kube::check_storage(deployment);
    assert_eq!(
        volume["persistentVolumeClaim"]["claimName"],
        format!("{fullname}-storage")
    );
    let pvc = rendered.named("PersistentVolumeClaim", &format!("{fullname}-storage"));
    assert_eq!(pvc["spec"]["accessModes"], pvc_values["accessModes"]);
    assert_eq!(
        pvc["spec"]["storageClassName"],
        pvc_values["storageClassName"]
    );
    assert_eq!(
        pvc["spec"]["resources"]["requests"]["storage"],
        pvc_values["size"]
    );
    assert_eq!(pvc["metadata"]["annotations"], pvc_values["annotations"]);
    assert_eq!(
        deployment["spec"]["template"]["spec"]["securityContext"]["fsGroup"],
        65532
    );
}

/// One ConfigMap per dashboards/*.json, labelled for the Grafana sidecar, holding the file byte
/// for byte.
fn check_dashboards(rendered: &Rendered, values: &Value) {
    let dir = repo_root().join("dashboards");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    let label = values["dashboards"]["label"].as_str().unwrap();
    let maps: Vec<&Value> = rendered
        .all("ConfigMap")
        .into_iter()
        .filter(|m| m["metadata"]["labels"].get(label).is_some())
        .collect();
    assert_eq!(maps.len(), files.len(), "one ConfigMap per dashboard");
    for file in &files {
        let name = file.file_name().unwrap().to_str().unwrap();
        let map = maps
            .iter()
            .find(|m| m["data"].get(name).is_some())
            .unwrap_or_else(|| panic!("no ConfigMap holds {name}"));
        assert_eq!(
            map["metadata"]["labels"][label],
            values["dashboards"]["labelValue"]
        );
        assert_eq!(
            map["metadata"]["labels"]["app.kubernetes.io/component"],
            "dashboards"
        );
        assert_eq!(
            map["metadata"]["annotations"],
            values["dashboards"]["annotations"]
        );
        assert_eq!(map["data"].as_object().unwrap().len(), 1);
        let text = std::fs::read_to_string(file).unwrap();
        let got = map["data"][name].as_str().unwrap();
        let want: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(got).unwrap(),
            want,
            "the ConfigMap of {name} differs from dashboards/{name} as JSON"
        );
        assert_eq!(
            got,
            text.trim_end_matches('\n'),
            "the ConfigMap of {name} differs from dashboards/{name} byte for byte"
        );
    }
}

/// Where the key comes from: existingSecret, apiKey, or config projects with their own keys;
/// nothing at all, or two sources at once, is a clear failure.
#[test]
fn api_key_sources_and_their_failures() {
    let Some(helm) = Helm::find() else { return };
    let fail = |values: Value| -> String {
        let file = helm.values_file(&values);
        match helm.try_template(&[&file]) {
            Ok(_) => panic!("helm template succeeded with {values}"),
            Err(stderr) => stderr,
        }
    };
    let no_key = fail(json!({}));
    for word in [
        "existingSecret.name",
        "apiKey",
        "api_key_file",
        "api_key_env",
    ] {
        assert!(
            no_key.contains(word),
            "the no-key failure does not say {word}: {no_key}"
        );
    }
    let both = fail(json!({"apiKey": "k", "existingSecret": {"name": "s"}}));
    assert!(both.contains("not both"), "{both}");
    // A project without a key of its own, next to one with: still no key for it.
    let partial = fail(json!({"config": {"projects": [
        {"name": "a", "api_key_file": "/k/a"}, {"name": "b"}
    ]}}));
    assert!(partial.contains("no Kapso API key"), "{partial}");

    // apiKey: a chart-created Secret, read by the env, never a literal value.
    let rendered = helm.template(&json!({"apiKey": "sk-placeholder"}));
    let deployment = rendered.one("Deployment");
    let reference = kube::api_key_reference(deployment);
    let secret = rendered.one("Secret");
    assert_eq!(reference["name"], secret["metadata"]["name"]);
    assert_eq!(reference["key"], "api-key");
    assert_eq!(secret["data"]["api-key"], "c2stcGxhY2Vob2xkZXI=");
    assert!(
        !serde_json::to_string(deployment)
            .unwrap()
            .contains("sk-placeholder")
    );

    // existingSecret with another key name.
    let rendered = helm.template(&json!({"existingSecret": {"name": "mine", "key": "token"}}));
    let reference = kube::api_key_reference(rendered.one("Deployment"));
    assert_eq!(
        (reference["name"].as_str(), reference["key"].as_str()),
        (Some("mine"), Some("token"))
    );
    assert!(rendered.all("Secret").is_empty());

    // Projects that each name their key: no KAPSO_API_KEY, no Secret; given as a map or a string.
    let projects = json!({"projects": [
        {"name": "a", "api_key_file": "/etc/kapso-exporter/keys/a/api-key"},
        {"name": "b", "api_key_env": "KAPSO_B_KEY"}
    ]});
    for config in [
        projects.clone(),
        Value::String(serde_norway::to_string(&projects).unwrap()),
    ] {
        let rendered = helm.template(&json!({"config": config}));
        let deployment = rendered.one("Deployment");
        assert!(!env(deployment).contains_key("KAPSO_API_KEY"));
        assert!(rendered.all("Secret").is_empty());
        let map = rendered.one("ConfigMap");
        let text = map["data"]["config.yml"].as_str().unwrap();
        assert_eq!(serde_norway::from_str::<Value>(text).unwrap(), projects);
        assert!(
            kube::args(deployment).contains(&"--config.file=/etc/kapso-exporter/config/config.yml")
        );
    }
    // extraArgs are flags.
    let bad = fail(json!({"existingSecret": {"name": "s"}, "extraArgs": ["poll.interval=2m"]}));
    assert!(bad.contains("--flag=value"), "{bad}");
    // A key file for every project through the defaults, or the demo: no key needed either.
    helm.template(&json!({"config": {"kapso": {"api_key_file": "/k"}}}));
    helm.template(&json!({"extraArgs": ["--demo"]}));
}

/// A change of the config (or of a chart-created Secret) changes the pod template, so the
/// Deployment rolls.
#[test]
fn config_changes_roll_the_pod() {
    let Some(helm) = Helm::find() else { return };
    let annotations = |values: Value| -> Value {
        let rendered = helm.template(&values);
        rendered.one("Deployment")["spec"]["template"]["metadata"]["annotations"].clone()
    };
    let config = |interval: &str| json!({"existingSecret": {"name": "s"}, "config": {"poll": {"interval": interval}}});
    let a = annotations(config("60s"));
    let b = annotations(config("2m"));
    assert!(a["checksum/config"].is_string(), "{a}");
    assert_ne!(a["checksum/config"], b["checksum/config"]);
    let web = |user: &str| json!({"existingSecret": {"name": "s"}, "webConfig": {"basic_auth_users": {user: "$2y$10$x"}}});
    assert_ne!(
        annotations(web("a"))["checksum/secret"],
        annotations(web("b"))["checksum/secret"]
    );
    let webhook = |secret: &str| json!({"existingSecret": {"name": "s"}, "webhook": {"enabled": true, "secret": secret}});
    assert_ne!(
        annotations(webhook("a"))["checksum/secret"],
        annotations(webhook("b"))["checksum/secret"]
    );
    // Nothing to check without either: no annotations at all, as in the kustomize pod.
    assert!(annotations(default_values()).is_null());
}

/// The rendered config and web config files, and the container's arguments, are what the
/// exporter accepts: `Config::load` (what `--config.check` runs) loads them, every project with
/// its key.
#[test]
fn the_exporter_accepts_the_rendered_config_and_args() {
    let Some(helm) = Helm::find() else { return };
    let dir = TempDir::new("kx-helm-config");
    let key_file = dir.write("sales.key", "sk-sales-placeholder\n");
    let values = json!({
        "existingSecret": {"name": "kapso-exporter"},
        "config": {
            "poll": {"interval": "90s"},
            "metrics": {"max_conversations": 5000, "stall_thresholds": ["1m", "1h"]},
            "kapso": {"timeout": "5s"},
            "projects": [
                {"name": "support", "api_key_env": "KAPSO_API_KEY", "rate_limit": 400},
                {"name": "sales", "api_key_file": key_file},
                {"name": "marketing", "api_key_env": "KAPSO_MARKETING_KEY", "conversation_ids": ["c-1"]}
            ]
        },
        "webConfig": {
            "basic_auth_users": {
                "prometheus": "$2y$10$X0h1gDsPszWURQaxFh.zoubFi6DXncSjhoQNJgRrnGs7EsimhC7zG"
            },
            "http_server_config": {"headers": {"X-Content-Type-Options": "nosniff"}}
        },
        "extraArgs": ["--log.level=debug", "--metrics.max-conversations=6000"]
    });
    let rendered = helm.template(&values);
    let deployment = rendered.one("Deployment");
    let config = rendered.one("ConfigMap")["data"]["config.yml"]
        .as_str()
        .unwrap()
        .to_owned();
    let web = rendered.one("Secret")["data"]["web-config.yml"]
        .as_str()
        .unwrap();
    let web = base64::engine::general_purpose::STANDARD
        .decode(web)
        .unwrap();
    let config_path = dir.write("config.yml", &config);
    let web_path = dir.write("web-config.yml", &String::from_utf8(web).unwrap());
    // The container's arguments, with the mounted files' paths swapped for the local copies.
    let mut args = vec!["kapso-exporter".to_owned()];
    for arg in kube::args(deployment) {
        args.push(if arg.starts_with("--config.file=") {
            format!("--config.file={}", config_path.display())
        } else if arg.starts_with("--web.config.file=") {
            format!("--web.config.file={}", web_path.display())
        } else {
            arg.to_owned()
        });
    }
    let cli = <kapso_exporter::config::Cli as clap::Parser>::try_parse_from(&args)
        .unwrap_or_else(|e| panic!("the exporter rejects the chart's args {args:?}: {e}"));
    let env = |name: &str| match name {
        "KAPSO_API_KEY" => Some("sk-support-placeholder".to_owned()),
        "KAPSO_MARKETING_KEY" => Some("sk-marketing-placeholder".to_owned()),
        _ => None,
    };
    let loaded = kapso_exporter::config::Config::load(&cli, &env)
        .unwrap_or_else(|e| panic!("the exporter rejects the rendered config: {e}\n{config}"));
    let projects: Vec<(&str, &str)> = loaded
        .projects
        .iter()
        .map(|p| (p.name.as_str(), p.api_key().unwrap().expose()))
        .collect();
    assert_eq!(
        projects,
        [
            ("support", "sk-support-placeholder"),
            ("sales", "sk-sales-placeholder"),
            ("marketing", "sk-marketing-placeholder")
        ]
    );
    // Flags win over the file.
    assert_eq!(loaded.max_conversations, 6000);
    assert_eq!(loaded.listen_address.port(), 9853);
}

/// NOTES.txt tells how to reach /metrics and what to check first.
#[test]
fn notes_show_the_port_forward_and_the_first_checks() {
    let Some(helm) = Helm::find() else { return };
    let values = helm.values_file(&default_values());
    let mut args = helm.args(
        &[
            "install",
            RELEASE,
            "--dry-run=client",
            "--namespace",
            NAMESPACE,
        ],
        &[&values],
    );
    args.push(chart().into_os_string());
    let out = helm.run(&args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "helm install --dry-run=client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let notes = stdout
        .split_once("\nNOTES:\n")
        .unwrap_or_else(|| panic!("no NOTES in {stdout}"))
        .1;
    for want in [
        "kubectl -n monitoring port-forward svc/kx-kapso-exporter 9853:9853",
        "http://127.0.0.1:9853/metrics",
        "kapso_up",
        "/-/ready",
        "kubectl -n monitoring logs deploy/kx-kapso-exporter",
    ] {
        assert!(notes.contains(want), "NOTES lack {want:?}:\n{notes}");
    }
}

/// `template` that must fail: helm's stderr.
fn template_fails(helm: &Helm, values: &Value) -> String {
    let file = helm.values_file(values);
    match helm.try_template(&[&file]) {
        Ok(_) => panic!("helm template succeeded with {values}"),
        Err(stderr) => stderr,
    }
}

/// webhook.*: off by default; on, the secret from webhook.existingSecret (key webhook-secret by
/// default), webhook.secret or the config's webhook_secret_*, else a clear failure; the Ingress
/// only when asked, hosts without paths get /webhooks/kapso, and anything outside it fails. The
/// exporter accepts the rendered arguments and web config.
#[test]
fn webhook_listener_values_and_their_failures() {
    let Some(helm) = Helm::find() else { return };
    let with = |webhook: Value| -> Value {
        let mut values = default_values();
        values["webhook"] = webhook;
        values
    };

    // Off: nothing of it, even with the Ingress asked for.
    let rendered = helm.template(&with(json!({"ingress": {"enabled": true}})));
    assert_eq!(rendered.kinds(), ["Deployment", "Service"]);
    assert_eq!(
        kube::container_port(rendered.one("Deployment"), "webhook"),
        None
    );

    // No secret anywhere, or two.
    let none = template_fails(&helm, &with(json!({"enabled": true})));
    for word in [
        "webhook.existingSecret.name",
        "webhook.secret",
        "webhook_secret_file",
        "webhook_secret_env",
    ] {
        assert!(
            none.contains(word),
            "the no-secret failure does not say {word}: {none}"
        );
    }
    let both = template_fails(
        &helm,
        &with(json!({"enabled": true, "secret": "x", "existingSecret": {"name": "s"}})),
    );
    assert!(both.contains("not both"), "{both}");

    // An existing Secret, the default key; no Ingress unless asked.
    let rendered = helm.template(&with(
        json!({"enabled": true, "existingSecret": {"name": "hooks"}}),
    ));
    assert_eq!(rendered.kinds(), ["Deployment", "Service", "Service"]);
    let deployment = rendered.one("Deployment");
    kube::check_probes(deployment);
    kube::check_locked_down(deployment);
    let service = rendered.named("Service", "kx-kapso-exporter-webhook");
    let metrics_service = rendered.named("Service", "kx-kapso-exporter");
    let reference = kube::check_webhook(deployment, service, &[]).clone();
    assert_eq!(reference, json!({"name": "hooks", "key": "webhook-secret"}));
    assert!(kube::args(deployment).contains(&"--webhook.listen-address=:9854"));
    assert_eq!(service["spec"]["ports"][0]["port"], 9854);
    assert_eq!(
        metrics_service["spec"]["ports"].as_array().unwrap().len(),
        1
    );
    assert!(rendered.all("Secret").is_empty());

    // The ServiceMonitor scrapes the metrics Service, not the webhook one.
    let mut values = with(json!({"enabled": true, "existingSecret": {"name": "hooks"}}));
    values["serviceMonitor"] = json!({"enabled": true});
    let rendered = helm.template(&values);
    let monitor = rendered.one("ServiceMonitor");
    kube::check_service_and_monitor(
        rendered.one("Deployment"),
        rendered.named("Service", "kx-kapso-exporter"),
        monitor,
    );
    kube::monitor_skips(
        monitor,
        rendered.named("Service", "kx-kapso-exporter-webhook"),
    );

    // Per-project secrets in the config: no KAPSO_WEBHOOK_SECRET, no Secret.
    let mut values = json!({"config": {"projects": [
        {"name": "a", "api_key_file": "/k/a", "webhook_secret_file": "/k/a-hook"},
        {"name": "b", "api_key_env": "KAPSO_B_KEY", "webhook_secret_env": "KAPSO_B_HOOK"}
    ]}});
    values["webhook"] = json!({"enabled": true});
    let rendered = helm.template(&values);
    assert!(kube::env_var(rendered.one("Deployment"), "KAPSO_WEBHOOK_SECRET").is_none());
    assert!(rendered.all("Secret").is_empty());
    // One project without: the chart cannot know, so it asks.
    values["config"]["projects"][1]
        .as_object_mut()
        .unwrap()
        .remove("webhook_secret_env");
    let partial = template_fails(&helm, &values);
    assert!(partial.contains("no webhook secret"), "{partial}");
    // --webhook.secret-file in extraArgs is a source too.
    let mut values = with(json!({"enabled": true}));
    values["extraArgs"] = json!(["--webhook.secret-file=/k/hook"]);
    helm.template(&values);

    // The Ingress: a host without paths gets /webhooks/kapso Prefix; nothing else is accepted.
    let ingress = |hosts: Value| {
        with(json!({"enabled": true, "secret": "x", "ingress": {"enabled": true, "hosts": hosts}}))
    };
    let rendered = helm.template(&ingress(json!([{"host": "h.example.com"}])));
    let webhook_service = rendered.named("Service", "kx-kapso-exporter-webhook");
    let ing = rendered.one("Ingress");
    kube::check_webhook(rendered.one("Deployment"), webhook_service, &[ing]);
    assert_eq!(
        ing["spec"]["rules"][0]["http"]["paths"][0]["path"],
        "/webhooks/kapso"
    );
    assert!(ing["spec"].get("ingressClassName").is_none());
    for (path, path_type) in [
        ("/", "Prefix"),
        ("/metrics", "Prefix"),
        ("/webhooks/kapsox", "Prefix"),
        ("/webhooks/kapso", "ImplementationSpecific"),
    ] {
        let err = template_fails(
            &helm,
            &ingress(json!([{"host": "h", "paths": [{"path": path, "pathType": path_type}]}])),
        );
        assert!(err.contains("webhook.ingress"), "{path} {path_type}: {err}");
    }

    // The exporter accepts the rendered arguments and webhook web config.
    let dir = TempDir::new("kx-helm-webhook");
    let rendered = helm.template(&with(json!({
        "enabled": true,
        "secret": "whsec-placeholder",
        "webConfig": {"basic_auth_users": {
            "kapso": "$2y$10$X0h1gDsPszWURQaxFh.zoubFi6DXncSjhoQNJgRrnGs7EsimhC7zG"
        }}
    })));
    let web =
        rendered.named("Secret", "kx-kapso-exporter-webhook-web-config")["data"]["web-config.yml"]
            .as_str()
            .unwrap();
    let web = base64::engine::general_purpose::STANDARD
        .decode(web)
        .unwrap();
    let web_path = dir.write("webhook-web-config.yml", &String::from_utf8(web).unwrap());
    let mut args = vec!["kapso-exporter".to_owned()];
    for arg in kube::args(rendered.one("Deployment")) {
        args.push(if arg.starts_with("--webhook.config.file=") {
            format!("--webhook.config.file={}", web_path.display())
        } else {
            arg.to_owned()
        });
    }
    let cli = <kapso_exporter::config::Cli as clap::Parser>::try_parse_from(&args)
        .unwrap_or_else(|e| panic!("the exporter rejects the chart's args {args:?}: {e}"));
    let env = |name: &str| match name {
        "KAPSO_API_KEY" => Some("sk-placeholder".to_owned()),
        "KAPSO_WEBHOOK_SECRET" => Some("whsec-placeholder".to_owned()),
        _ => None,
    };
    let loaded = kapso_exporter::config::Config::load(&cli, &env)
        .unwrap_or_else(|e| panic!("the exporter rejects the rendered webhook settings: {e}"));
    assert_eq!(loaded.webhook.unwrap().address.port(), 9854);
}

/// storage.*: off by default; on, an emptyDir (sizeLimit), an existing claim or the chart's
/// claim, never two claims; always writable at --storage.path, the root filesystem read-only,
/// the pod's fsGroup set unless given.
#[test]
fn storage_values_and_their_failures() {
    let Some(helm) = Helm::find() else { return };
    let with = |storage: Value| -> Value {
        let mut values = default_values();
        values["storage"] = storage;
        values
    };
    let rendered = helm.template(&with(json!({"persistentVolumeClaim": {"enabled": true}})));
    assert_eq!(
        rendered.kinds(),
        ["Deployment", "Service"],
        "storage is off"
    );

    // emptyDir.
    let rendered = helm.template(&with(json!({"enabled": true})));
    assert_eq!(rendered.kinds(), ["Deployment", "Service"]);
    let deployment = rendered.one("Deployment");
    kube::check_locked_down(deployment);
    kube::check_probes(deployment);
    assert!(kube::args(deployment).contains(&"--storage.path=/var/lib/kapso-exporter"));
    assert_eq!(
        kube::check_storage(deployment)["emptyDir"],
        json!({"sizeLimit": "64Mi"})
    );
    assert_eq!(
        deployment["spec"]["template"]["spec"]["securityContext"]["fsGroup"],
        65532
    );

    // An existing claim, and a podSecurityContext.fsGroup of the user's, kept.
    let mut values = with(json!({"enabled": true, "existingClaim": "state"}));
    values["podSecurityContext"] = json!({"runAsNonRoot": true, "runAsUser": 65532, "fsGroup": 1000, "seccompProfile": {"type": "RuntimeDefault"}});
    let rendered = helm.template(&values);
    assert!(rendered.all("PersistentVolumeClaim").is_empty());
    let deployment = rendered.one("Deployment");
    kube::check_locked_down(deployment);
    assert_eq!(
        kube::check_storage(deployment)["persistentVolumeClaim"]["claimName"],
        "state"
    );
    assert_eq!(
        deployment["spec"]["template"]["spec"]["securityContext"]["fsGroup"],
        1000
    );

    // The chart's claim, with the defaults.
    let rendered = helm.template(&with(
        json!({"enabled": true, "persistentVolumeClaim": {"enabled": true}}),
    ));
    let deployment = rendered.one("Deployment");
    let claim = kube::check_storage(deployment)["persistentVolumeClaim"]["claimName"]
        .as_str()
        .unwrap()
        .to_owned();
    let pvc = rendered.named("PersistentVolumeClaim", &claim);
    assert_eq!(pvc["spec"]["accessModes"], json!(["ReadWriteOnce"]));
    assert_eq!(pvc["spec"]["resources"]["requests"]["storage"], "1Gi");
    assert!(pvc["spec"].get("storageClassName").is_none());

    let both = template_fails(
        &helm,
        &with(
            json!({"enabled": true, "existingClaim": "state", "persistentVolumeClaim": {"enabled": true}}),
        ),
    );
    assert!(both.contains("not both"), "{both}");
}
