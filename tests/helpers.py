"""Helpers shared by the test suites: run the real `gu` command, wait with deadlines."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import psutil

ROOT = Path(__file__).resolve().parent.parent
GU = [sys.executable, "-m", "controller.cli.main"]
T = TypeVar("T")


def kinds_listed(store: Any) -> list[str]:
    """From now on, the kind of every ``store.list`` call, in order (the store still
    answers): for tests that an operation reads no whole kind."""
    listed: list[str] = []
    real = store.list

    def counting(kind: str, *args: Any, **kwargs: Any) -> Any:
        listed.append(kind)
        return real(kind, *args, **kwargs)

    store.list = counting
    return listed


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_gu(
    *args: str,
    env: dict[str, str] | None = None,
    input: str | None = None,
    timeout: float = 60,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run the real ``gu`` CLI in a subprocess and capture its output."""
    return subprocess.run(
        [*GU, *args],
        env=env if env is not None else dict(os.environ),
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd or ROOT,
    )


def condition_of(obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
    """The condition of ``type_`` in an object's ``status.conditions``, or None."""
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond["type"] == type_:
            return dict(cond)
    return None


def process_running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (dead, waiting for its parent to reap it)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_for(
    check: Callable[[], T], timeout: float = 10.0, interval: float = 0.05, what: str = "condition"
) -> T:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except Exception as exc:  # the thing may not be up yet
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def start_hub_subprocess(
    tmp: Path,
    node_grace: float = 30.0,
    store: str | None = None,
    log: bool = False,
    all_cpus: bool = False,
    engine_process: bool | None = None,
) -> tuple[subprocess.Popen[bytes], str, Path]:
    """A quiet hub process on a free loopback port with its state under ``tmp``, for the
    benchmark scripts: (process, URL, path of its admin client config). Waits until
    ``/healthz`` answers (at most about 10 s). ``store``: a ``postgresql://`` URL to share;
    ``log``: INFO lines to ``tmp/hub.log``; ``all_cpus``: as ``gu hub --all-cpus``;
    ``engine_process``: as ``gu hub --engine-process`` / ``--one-process`` (None: the default)."""
    import httpx

    port = free_port()
    state = tmp / "hub"
    tmp.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, GU_CONFIG=str(state / "admin-config.yaml"),
               GU_LOG_LEVEL="INFO" if log else "WARNING")  # fmt: skip
    code = (
        "import sys; from pathlib import Path; from controller.hub import run_hub; "
        "run_hub(Path(sys.argv[1]), sys.argv[2], float(sys.argv[3]), None, sys.argv[4] or None, "
        f"all_cpus={all_cpus}, engine_process={engine_process})"
    )
    out = open(tmp / "hub.log", "ab") if log else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(state), f"127.0.0.1:{port}", str(node_grace),
         store or ""],
        env=env,
        cwd=ROOT,
        stdout=out,
        stderr=subprocess.STDOUT if log else subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.05)
    return proc, url, state / "admin-config.yaml"


def engine_pid(hub_pid: int) -> int | None:
    """The engine process of the hub ``hub_pid`` (``gu hub --engine-process``), if one runs."""
    try:
        children = psutil.Process(hub_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return None
    for child in children:
        try:
            if "controller.enginehost" in " ".join(child.cmdline()) and process_running(child.pid):
                return int(child.pid)
        except psutil.NoSuchProcess:
            continue
    return None


def metric_samples(client: Any) -> list[Any]:
    """Every sample of the hub's ``/metrics`` (read with ``client``'s token)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = client.http.get("/metrics", headers={"Authorization": f"Bearer {client.token()}"}).text
    return [s for f in text_string_to_metric_families(text) for s in f.samples]


def reconcile_settled(client: Any, limit: float) -> float:
    """Wait (at most ``limit`` s) until the hub's reconcile engine has read every change,
    its queue is empty, nothing is in flight and no reconcile ran for half a second (read
    from its ``/metrics`` with ``client``'s token: right after a write the queue may still
    be empty, its keys not yet read from the change log); how long that took."""
    start = time.perf_counter()
    last: float | None = None
    while time.perf_counter() - start < limit:
        samples = metric_samples(client)
        busy = any(
            s.value
            for s in samples
            if s.name
            in ("gu_reconcile_queue_depth", "gu_reconcile_in_flight", "gu_reconcile_feed_behind")
        )
        ran = sum(s.value for s in samples if s.name == "gu_reconciles_total")
        if not busy and ran == last:
            break
        last = None if busy else ran
        time.sleep(0.5)
    return time.perf_counter() - start
