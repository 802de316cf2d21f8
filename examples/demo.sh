#!/usr/bin/env bash
# `make demo`: a hub with its embedded SQLite store, one local agent, the quickstart
# manifests, and the session converging to Succeeded; then, where this machine has
# Docker (an engine that answers, or dockerd to start as root), a docker Session too,
# and where it has QEMU and the guest assets (make vmkit), a VM Session (gVMkit).
# Everything lives under .demo/ and everything started here is stopped on exit (also on
# Ctrl-C or an error).
set -euo pipefail
cd "$(dirname "$0")/.."
GU=.venv/bin/gu
PY=.venv/bin/python
DEMO=.demo
rm -rf "$DEMO"
mkdir -p "$DEMO"
export GU_CONFIG="$DEMO/hub/admin-config.yaml"
PORT=$($PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
HUB="http://127.0.0.1:$PORT"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  if [ -n "${DOCKERD_EXEC_ROOT:-}" ]; then rm -rf "$DOCKERD_EXEC_ROOT" 2>/dev/null || true; fi
}
trap cleanup EXIT
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
wait_until() {  # wait_until SECONDS DESCRIPTION COMMAND...
  local limit=$1 what=$2; shift 2
  for _ in $(seq 1 $((limit * 5))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  echo "demo: timed out after ${limit}s waiting for $what" >&2
  echo "--- hub log"; tail -n 20 "$DEMO/hub.log" >&2 || true
  echo "--- agent log"; tail -n 20 "$DEMO/agent.log" >&2 || true
  return 1
}

step "start the hub on $HUB (state in $DEMO/hub)"
$GU hub --state-dir "$DEMO/hub" --listen "127.0.0.1:$PORT" >"$DEMO/hub.log" 2>&1 &
pids+=($!)
wait_until 20 "the hub" $PY -c "import httpx,sys; sys.exit(httpx.get('$HUB/healthz').status_code != 200)"
head -n 2 "$DEMO/hub.log"
if [ "$(nproc)" -ge 2 ]; then  # (gu hub's default there: the engine in a process of its own)
  wait_until 20 "the hub's engine process" grep -q event=engine_process_started "$DEMO/hub.log"
  echo "reconcile engine: $(grep -o 'event=engine_process_started.*' "$DEMO/hub.log" | head -n 1)"
fi

docker_args=()
DOCKER_ENGINE=""
if $PY -c "import docker; docker.from_env(timeout=3).ping()" >/dev/null 2>&1; then
  DOCKER_ENGINE=${DOCKER_HOST:-unix:///var/run/docker.sock}
  step "a Docker engine answers at $DOCKER_ENGINE: the agent will offer the docker runtime"
elif [ "$(id -u)" = 0 ] && command -v dockerd >/dev/null 2>&1; then
  step "start a private dockerd (vfs, socket in $DEMO/dockerd) for the docker runtime"
  mkdir -p "$DEMO/dockerd"
  DOCKER_ENGINE="unix://$PWD/$DEMO/dockerd/docker.sock"
  DOCKERD_EXEC_ROOT="/tmp/gu-demo-dockerd-$$"  # (removed again by cleanup)
  dockerd --host "$DOCKER_ENGINE" --data-root "$PWD/$DEMO/dockerd/data" \
    --exec-root "$DOCKERD_EXEC_ROOT" --pidfile "$PWD/$DEMO/dockerd/docker.pid" \
    --storage-driver vfs --bridge none --iptables=false --ip-masq=false \
    >"$DEMO/dockerd.log" 2>&1 &
  pids+=($!)
  wait_until 60 "dockerd" $PY -c "import docker; docker.DockerClient(base_url='$DOCKER_ENGINE', timeout=3).ping()"
else
  step "no Docker here (no engine answers, and dockerd cannot be started): native only"
fi
[ -n "$DOCKER_ENGINE" ] && docker_args=(--docker-host "$DOCKER_ENGINE")
VMKIT=.venv/vmkit-assets
vm_args=()
if command -v qemu-system-x86_64 >/dev/null 2>&1 && [ -f "$VMKIT/assets.json" ]; then
  step "QEMU and the guest assets are here: the agent will offer the vm runtime (accel auto: KVM if a probe boots, else TCG)"
  vm_args=(--vm-assets "$VMKIT")
else
  step "no QEMU or no guest assets (make vmkit): no vm runtime"
fi

step "enrol a local agent with a join token"
TOKEN=$($GU hub token create --ttl 1h --uses 1 --label pool=demo)
$GU agent --hub "$HUB" --join-token "$TOKEN" --state-dir "$DEMO/agent" --name demo-agent \
  --heartbeat 2 "${docker_args[@]}" "${vm_args[@]}" >"$DEMO/agent.log" 2>&1 &
pids+=($!)
wait_until 30 "the agent to be Ready" bash -c "$GU peers -o json | $PY -c 'import json,sys; sys.exit(not any(p[\"ready\"] for p in json.load(sys.stdin)))'"
$GU peers

step "build the quickstart program reproducibly and push it"
$GU image build --runtime native examples/quickstart/hello -o "$DEMO/hello.tar.gz"
$GU image push "$DEMO/hello.tar.gz"

step "apply the quickstart manifests (App, ImagePolicy, Priority, VirtualNetwork, Session)"
$GU apply -f examples/quickstart
$GU diff -f examples/quickstart && echo "gu diff: the hub matches the files"

step "watch the session converge"
last=""
for _ in $(seq 1 300); do
  phase=$($GU get session hello -o json | $PY -c 'import json,sys; print(json.load(sys.stdin)["status"].get("phase","Pending"))')
  if [ "$phase" != "$last" ]; then
    $GU get sessions
    last=$phase
  fi
  case "$phase" in Succeeded|Failed) break ;; esac
  sleep 0.2
done
[ "$phase" = Succeeded ] || { echo "demo: the session ended $phase" >&2; exit 1; }

step "what happened"
for kind in apps imagepolicies priorities virtualnetworks sessions placements providers; do
  $GU get "$kind"
  echo
done
$GU describe session hello
step "the workload's output (gu logs hello)"
$GU logs hello
step "the provider (gu peer)"
$GU peer demo-agent

step "priorities: a batch job takes the whole provider; an urgent one suspends it; it resumes after"
CORES=$($GU get providers -o json | $PY -c 'import json,sys; print(json.load(sys.stdin)["items"][0]["status"]["inventory"]["cpu"]["cores"])')
mkdir -p "$DEMO/priorities"
for f in examples/priorities/*.yaml; do
  sed "s/cpu: 2$/cpu: $CORES/" "$f" >"$DEMO/priorities/$(basename "$f")"
done
$GU apply -f "$DEMO/priorities/priorities.yaml" -f "$DEMO/priorities/batch.yaml"
wait_until 60 "batch-job to run" bash -c "$GU get session batch-job -o json | $PY -c 'import json,sys; sys.exit(json.load(sys.stdin)[\"status\"].get(\"phase\") != \"Running\")'"
$GU get sessions
$GU apply -f "$DEMO/priorities/priorities.yaml" -f "$DEMO/priorities/render.yaml"
wait_until 30 "batch-job to be suspended" bash -c "$GU get session batch-job -o json | $PY -c 'import json,sys; sys.exit(json.load(sys.stdin)[\"status\"].get(\"phase\") != \"Suspended\")'"
$GU get sessions
$GU get placements
wait_until 60 "render to succeed" bash -c "$GU get session render -o json | $PY -c 'import json,sys; sys.exit(json.load(sys.stdin)[\"status\"].get(\"phase\") != \"Succeeded\")'"
wait_until 30 "batch-job to resume" bash -c "$GU get session batch-job -o json | $PY -c 'import json,sys; sys.exit(json.load(sys.stdin)[\"status\"].get(\"phase\") != \"Running\")'"
$GU get sessions
$GU describe session batch-job | sed -n '/Events/,$p'
$GU delete session batch-job render >/dev/null

if [ -n "$DOCKER_ENGINE" ]; then
  step "docker: a busybox image (docker import), saved with gu image build --runtime docker"
  IMAGE_ID=$($PY -m tests.dockerd import gu-demo/busybox:latest --host "$DOCKER_ENGINE")
  DOCKER_HASH=$($GU image build --runtime docker "$IMAGE_ID" -o "$DEMO/busybox.tar" --docker-host "$DOCKER_ENGINE")
  $GU image push "$DEMO/busybox.tar"
  mkdir -p "$DEMO/docker"
  sed "s/sha3-256:IMAGE_HASH/$DOCKER_HASH/" examples/docker/session.yaml >"$DEMO/docker/session.yaml"
  cat >"$DEMO/docker/imagepolicy.yaml" <<YAML
apiVersion: gu/v1
kind: ImagePolicy
metadata:
  name: demo-docker-images
spec:
  apps: [demo]
  allowImages: ["$DOCKER_HASH"]
YAML
  $GU apply -f "$DEMO/docker"
  last=""
  for _ in $(seq 1 300); do
    phase=$($GU get session hello-docker -o json | $PY -c 'import json,sys; print(json.load(sys.stdin)["status"].get("phase","Pending"))')
    if [ "$phase" != "$last" ]; then
      $GU get sessions
      last=$phase
    fi
    case "$phase" in Succeeded|Failed) break ;; esac
    sleep 0.2
  done
  [ "$phase" = Succeeded ] || { echo "demo: the docker session ended $phase" >&2; exit 1; }
  step "the container's output (gu logs hello-docker): one network interface, lo"
  $GU logs hello-docker
fi
if [ ${#vm_args[@]} -gt 0 ]; then
  step "vm: a busybox root built into a .gvmi with gu image build --runtime vm, and pushed"
  grep -o 'event=vm_accel.*' "$DEMO/agent.log" | head -n 1 || true
  mkdir -p "$DEMO/vmroot/bin" "$DEMO/vm"
  cp /bin/busybox "$DEMO/vmroot/bin/busybox"
  ln -sf busybox "$DEMO/vmroot/bin/sh"
  VM_HASH=$($GU image build --runtime vm --from-dir "$DEMO/vmroot" --entrypoint /bin/sh -o "$DEMO/hello.gvmi")
  $GU image inspect "$DEMO/hello.gvmi"
  $GU image push "$DEMO/hello.gvmi"
  sed "s/sha3-256:IMAGE_HASH/$VM_HASH/" examples/vm/session.yaml >"$DEMO/vm/session.yaml"
  cat >"$DEMO/vm/imagepolicy.yaml" <<YAML
apiVersion: gu/v1
kind: ImagePolicy
metadata:
  name: demo-vm-images
spec:
  apps: [demo]
  allowImages: ["$VM_HASH"]
YAML
  $GU apply -f "$DEMO/vm"
  last=""
  for _ in $(seq 1 600); do
    phase=$($GU get session hello-vm -o json | $PY -c 'import json,sys; print(json.load(sys.stdin)["status"].get("phase","Pending"))')
    if [ "$phase" != "$last" ]; then
      $GU get sessions
      last=$phase
    fi
    case "$phase" in Succeeded|Failed) break ;; esac
    sleep 0.2
  done
  [ "$phase" = Succeeded ] || { echo "demo: the vm session ended $phase" >&2; exit 1; }
  step "the VM's output (gu logs hello-vm): the guest kernel, one network interface (lo)"
  $GU logs hello-vm
  $GU peer demo-agent | grep Runtimes

  step "virtual network: two VMs on VirtualNetwork lan (examples/vnet/) ping each other"
  sed "s/sha3-256:IMAGE_HASH/$VM_HASH/" examples/vnet/pair.yaml >"$DEMO/vm/pair.yaml"
  $GU apply -f "$DEMO/vm/pair.yaml"
  phase_of() { $GU get session "$1" -o json | $PY -c 'import json,sys; print(json.load(sys.stdin)["status"].get("phase","Pending"))'; }
  both_running() { [ "$(phase_of ping-a)" = Running ] && [ "$(phase_of ping-b)" = Running ]; }
  wait_until 180 "both VMs running" both_running
  $GU get vnet lan -o wide
  both_done() {
    for s in ping-a ping-b; do case "$(phase_of $s)" in Succeeded|Failed) ;; *) return 1 ;; esac; done
  }
  wait_until 180 "both pings to end" both_done
  $GU get sessions
  for s in ping-a ping-b; do
    $GU logs "$s" | grep -E 'eth0|reached|packets' || true
    [ "$(phase_of $s)" = Succeeded ] || { echo "demo: $s did not reach its peer" >&2; exit 1; }
  done
fi
step "inputs and outputs: three parts of one picture from one shared input (examples/render/)"
R_HASH=$($GU image build --runtime native examples/render/renderer -o "$DEMO/renderer.tar.gz")
$GU image push "$DEMO/renderer.tar.gz" >/dev/null
S_HASH=$($GU blob push examples/render/scene --app demo)
echo "scene (a folder, pushed as a tar blob): $S_HASH"
mkdir -p "$DEMO/render"
sed "s/sha3-256:RENDERER/$R_HASH/; s/sha3-256:SCENE/$S_HASH/" examples/render/render.yaml >"$DEMO/render/render.yaml"
$GU apply -f "$DEMO/render/render.yaml"
rendered() {
  for s in render-0 render-1 render-2; do
    $GU get session "$s" -o json | $PY -c 'import json,sys; sys.exit(json.load(sys.stdin)["status"].get("phase") != "Succeeded")' || return 1
  done
}
wait_until 120 "the three parts to succeed" rendered
$GU get sessions
rm -rf "$DEMO/results"
for s in render-0 render-1 render-2; do $GU outputs "$s" -o "$DEMO/results"; done
sh examples/render/combine.sh "$DEMO/results" "$DEMO/picture.pgm"

step "the web UI (gu ui) and Prometheus metrics"
LINK=$($GU ui --no-open 2>/dev/null)
echo "a one-time log-in link (works once, within 60 s): $LINK"
if command -v chromium >/dev/null 2>&1 && $PY -c 'import playwright' 2>/dev/null; then
  $PY - "$LINK" "$DEMO/providers.png" <<'PYEOF'
import sys
from playwright.sync_api import sync_playwright
link, shot = sys.argv[1], sys.argv[2]
with sync_playwright() as p:
    b = p.chromium.launch(executable_path="/usr/bin/chromium", args=[
        "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"])
    page = b.new_page(viewport={"width": 1400, "height": 500})
    page.goto(link)
    page.locator("tr[data-node]").first.wait_for(timeout=15000)
    print("providers page:", " | ".join(page.locator("tr[data-node]").first.inner_text().split("\t")))
    page.screenshot(path=shot)
    b.close()
print(f"screenshot of the providers page (headless chromium): {shot}")
PYEOF
fi
$GU hub metrics-token -o "$DEMO/metrics.token"
curl -fsS -H "Authorization: Bearer $(cat "$DEMO/metrics.token")" "$HUB/metrics" \
  | grep -E '^gu_(providers|placements)\{|^gu_reconciles_total\{kind="Session",outcome="ok"\}'

step "done: everything is stopped; the state stays in $DEMO/ to look at"
