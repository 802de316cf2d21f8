#!/usr/bin/env bash
# `make bench`: every benchmark script, each printing one JSON line per figure.
# Sizes are the issues' (10,000 objects, 1,000 agents, 512 MiB); pass smaller ones
# through the environment for a quick look, e.g. BENCH_QUICK=1 make bench.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=.venv/bin/python
if [ "${BENCH_QUICK:-}" = 1 ]; then
  $PY tests/bench/bench_core.py --objects 2000
  $PY tests/bench/bench_startup.py --sessions 10
  $PY tests/bench/bench_pool.py --agents 100 --sessions 100 --count 5 --heartbeat-seconds 6
  $PY tests/bench/bench_scheduler.py --providers 200 --placements 2000
  $PY tests/bench/bench_image_verify.py --size-mib 64
  $PY tests/bench/bench_security.py --size-mib 64
  $PY tests/bench/bench_vm.py --runs 3
  $PY tests/bench/bench_docker.py --sessions 5 --size-mib 10
  $PY tests/bench/bench_preempt.py --runs 5 --providers 200 --urgent 20
  $PY tests/bench/bench_io.py --mib 64 --runs 2
  $PY tests/bench/bench_ui.py --agents 200 --runs 3 --beats 5 --cpu-seconds 5
  if [ "$(id -u)" = 0 ]; then $PY tests/bench/bench_vnet.py --frames 5000 --pings 200 --vm-runs 0; fi
else
  $PY tests/bench/bench_core.py
  $PY tests/bench/bench_startup.py
  $PY tests/bench/bench_pool.py
  $PY tests/bench/bench_scheduler.py
  $PY tests/bench/bench_image_verify.py
  $PY tests/bench/bench_security.py
  $PY tests/bench/bench_vm.py
  $PY tests/bench/bench_docker.py
  $PY tests/bench/bench_preempt.py
  $PY tests/bench/bench_io.py
  $PY tests/bench/bench_ui.py
  # (root: it makes network namespaces)
  if [ "$(id -u)" = 0 ]; then $PY tests/bench/bench_vnet.py; fi
fi
