#!/usr/bin/env bash
# The ingress path on a real cluster: kind + the AWS emulator. For users' CI (GitHub Actions,
# .github/workflows/e2e-kind.yml) or any machine with Docker and kind; it cannot run on the
# project's own machines (no Docker engine there), which run the same steps in-process instead
# (tests/tests/e2e_ingress.rs): the same emulator harness (localstack/up), the same Terraform
# example through terraform/tf, the same provisioner CLI and the same Helm chart with the same
# values (tests/kind/values.yaml), which ./run-tests renders and validates offline
# (charts/check). Only cluster creation, image loading, helm and kubectl are kind-only.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
# shellcheck source=scripts/common.sh
source scripts/common.sh

CLUSTER=${GATEHOUSE_KIND_CLUSTER:-gatehouse-e2e}
NAME=gatehouse-kind
WORK=.run/kind
HOST=api.example.com

require_tools
for tool in docker kind kubectl helm; do
  command -v "$tool" >/dev/null || fail "'$tool' is needed for the kind e2e (it runs where Docker does)"
done
mkdir -p "$WORK"

# Stop what this script created, in reverse order, then the emulator (common.sh's trap).
CREATED_CLUSTER="" APPLIED=""
cleanup() {
  local status=$?
  if [[ -n $APPLIED ]]; then
    terraform/tf -chdir=terraform/examples/local destroy -auto-approve -input=false -var "name=$NAME" >/dev/null || true
  fi
  [[ -z $CREATED_CLUSTER ]] || kind delete cluster --name "$CLUSTER" || true
  (exit "$status")
  stop_started_emulators
}
trap cleanup EXIT

step "kind cluster $CLUSTER"
kind create cluster --name "$CLUSTER" --config tests/kind/cluster.yaml --wait 180s
CREATED_CLUSTER=1
export KUBECONFIG=$ROOT/$WORK/kubeconfig
kind get kubeconfig --name "$CLUSTER" >"$KUBECONFIG"

step "image gatehouse:dev"
docker build -t gatehouse:dev .
kind load docker-image gatehouse:dev --name "$CLUSTER"

step "AWS emulator and the Terraform example (the same as the local e2e test)"
start_emulator ministack 4566
export AWS_ENDPOINT_URL=http://127.0.0.1:4566 AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1 \
  AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test
terraform/tf -chdir=terraform/examples/local init -input=false
APPLIED=1
terraform/tf -chdir=terraform/examples/local apply -auto-approve -input=false -var "name=$NAME"
terraform/tf -chdir=terraform/examples/local output -json gatehouse >"$WORK/handshake.json"

step "the chart (as the README installs it), and two convention-named services"
kubectl create namespace gatehouse
kubectl label namespace gatehouse pod-security.kubernetes.io/enforce=restricted
# In-cluster, the provisioner could not reach the emulator on the host's loopback: the values
# give it no replica, and it runs from the host below, against the same cluster. No --wait: the
# proxies are Ready only once that provisioner has set their readiness gate (waited for below).
helm install gatehouse charts/gatehouse --namespace gatehouse -f tests/kind/values.yaml \
  --set-file handshake="$WORK/handshake.json" --timeout 180s
# The platform team grants the demo services' namespace the right to publish.
kubectl label namespace default gatehouse.dev/publish=true
kubectl apply -f tests/kind/demo-services.yaml
# The proxies' readiness gate (gatehouse.dev/target-healthy) waits for the provisioner, which
# registers a node once its proxy's own probe passes: wait for that, sync, then for the rollout.
for _ in $(seq 90); do
  [[ -n $(kubectl -n gatehouse get pods -l app.kubernetes.io/name=gatehouse-proxy -o name) ]] && break
  sleep 2
done
kubectl -n gatehouse wait pod -l app.kubernetes.io/name=gatehouse-proxy --for=condition=ContainersReady --timeout=180s
kubectl rollout status deployment/service-api-hello deployment/service-api-echo --timeout=180s

step "the admission policy: a convention-named Service is refused where publishing is not granted"
kubectl create namespace ungranted
refused=""
for _ in $(seq 30); do # the API server applies a new policy within seconds
  if out=$(kubectl -n ungranted create service clusterip service-api-rogue --tcp=80:8080 2>&1); then
    kubectl -n ungranted delete service service-api-rogue >/dev/null
    sleep 1
  else
    refused=$out
    break
  fi
done
[[ $refused == *"is not labelled gatehouse.dev/publish=true"* ]] ||
  fail "service-api-rogue in an ungranted namespace should be refused by the policy, got: ${refused:-created}"
printf '  refused: %s\n' "$refused"
kubectl -n ungranted create service clusterip payments --tcp=80:8080 >/dev/null ||
  fail "a Service no edge routes must be allowed anywhere"

step "gatehouse-provisioner: plan, sync, plan (ip targets: the kind nodes' InternalIPs)"
cargo build --locked --bins -p gatehouse-provisioner
provisioner=$CARGO_TARGET_DIR/debug/gatehouse-provisioner
args=(--handshake "$WORK/handshake.json" --kubeconfig "$KUBECONFIG" --proxy-service gatehouse/gatehouse-proxy)
set +e; "$provisioner" plan "${args[@]}"; code=$?; set -e
[[ $code == 2 ]] || fail "plan should report pending registrations (exit 2), got $code"
"$provisioner" sync "${args[@]}"
"$provisioner" plan "${args[@]}" || fail "plan after sync should have nothing to do"
# sync set each proxy pod's gate from the ALB's health (the emulator's targets are healthy at once).
kubectl -n gatehouse rollout status daemonset/gatehouse-proxy --timeout=120s

step "requests through each worker's NodePort and through the emulated ALB"
expect() { # description expected-substring curl-args...
  local what=$1 want=$2 got
  shift 2
  for _ in $(seq 30); do
    got=$(curl -fsS -m 5 -H "Host: $HOST" "$@" 2>/dev/null) && [[ $got == *"$want"* ]] && {
      printf '  %-44s -> %s\n' "$what" "$got"
      return 0
    }
    sleep 2
  done
  fail "$what: expected '$want', got '${got:-no answer}'"
}
for port in 30081 30082; do
  expect "node :$port /hello/hostname" service-api-hello "http://127.0.0.1:$port/hello/hostname"
  expect "node :$port /echo/echo?msg=gatehouse" gatehouse "http://127.0.0.1:$port/echo/echo?msg=gatehouse"
done
expect "ALB /hello/hostname" service-api-hello "$AWS_ENDPOINT_URL/_alb/$NAME/hello/hostname"
code=$(curl -s -o /dev/null -w '%{http_code}' -H "Host: $HOST" "http://127.0.0.1:30081/nobody/x")
[[ $code == 404 ]] || fail "an undeployed service should be 404, got $code"
step "kind e2e passed"
