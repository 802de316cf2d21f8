"""GitOps mode (``gu watch``): the hub follows the files, drift is put back, broken
files never reach the hub.

Most tests run the real ``gu watch DIR --interval 2`` as a subprocess against a
real hub and watch both sides: the hub through the API client, the command
through its output. A few drive ``GitOpsWatcher`` in-process to check one pass
at a time.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from controller.cli.gitops import GitOpsWatcher
from tests.conftest import HubProcess
from tests.helpers import GU, wait_for

INTERVAL = 2.0

PRIORITY = """\
apiVersion: gu/v1
kind: Priority
metadata:
  name: batch
spec:
  value: {value}
"""
NETWORK = """\
apiVersion: gu/v1
kind: VirtualNetwork
metadata:
  name: lan
spec:
  cidr: 10.77.0.0/24
"""


class WatchProcess:
    """A running ``gu watch`` whose combined output is collected line by line."""

    def __init__(self, hub: HubProcess, cwd: Path, *args: str) -> None:
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self.proc = subprocess.Popen(
            [*GU, "watch", *args],
            env=hub.env,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            # a shell's background job may inherit SIGINT ignored; restore Ctrl-C
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._lock:
                self.lines.append(line.rstrip("\n"))

    def output(self) -> str:
        with self._lock:
            return "\n".join(self.lines)

    def wait_for_line(self, predicate: Callable[[str], bool], timeout: float, what: str) -> str:
        def found() -> str | None:
            with self._lock:
                return next((line for line in self.lines if predicate(line)), None)

        try:
            return wait_for(found, timeout=timeout, what=what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- gu watch output:\n{self.output()}") from None

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Signal the process and return its exit code (it must stop within 10 s)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=10)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._reader.join(timeout=5)
        return code


@pytest.fixture
def deploy(tmp_path: Path) -> Path:
    """``work/deploy/`` with a Priority and a VirtualNetwork."""
    folder = tmp_path / "work" / "deploy"
    folder.mkdir(parents=True)
    (folder / "priority.yaml").write_text(PRIORITY.format(value=100))
    (folder / "network.yaml").write_text(NETWORK)
    return folder


@pytest.fixture
def watching(hub: HubProcess, deploy: Path) -> Iterator[WatchProcess]:
    """``gu watch deploy --interval 2 --prune`` running, its first apply done."""
    watch = WatchProcess(hub, deploy.parent, "deploy", "--interval", str(INTERVAL), "--prune")
    try:
        watch.wait_for_line(
            lambda line: line.startswith('apply set "deploy"'), timeout=20, what="the first apply"
        )
        yield watch
    finally:
        if watch.proc.poll() is None:  # a test that failed before stopping it
            watch.stop(signal.SIGKILL)


def priority_value(hub: HubProcess) -> int | None:
    with hub.client() as client:
        try:
            return int(client.get("Priority", "batch")["spec"]["value"])
        except Exception:
            return None


def test_applies_on_start(hub: HubProcess, watching: WatchProcess) -> None:
    assert "priority/batch created" in watching.output()
    assert "virtualnetwork/lan created" in watching.output()
    assert priority_value(hub) == 100
    assert watching.stop() == 0


def test_an_edited_file_is_on_the_hub_within_two_seconds(
    hub: HubProcess, deploy: Path, watching: WatchProcess, record_property: Callable[..., None]
) -> None:
    started = time.monotonic()
    (deploy / "priority.yaml").write_text(PRIORITY.format(value=250))

    wait_for(lambda: priority_value(hub) == 250, timeout=15, interval=0.02, what="the edit")
    latency = time.monotonic() - started

    record_property("edit_to_hub_seconds", round(latency, 3))
    print(f"edit reached the hub after {latency:.2f}s")
    assert latency < 5
    watching.wait_for_line(
        lambda line: line == "priority/batch configured", timeout=15, what="the configured line"
    )
    assert watching.stop() == 0


def test_an_object_deleted_on_the_hub_is_restored_within_one_interval(
    hub: HubProcess, watching: WatchProcess
) -> None:
    with hub.client() as client:
        client.delete("VirtualNetwork", "lan")
        wait_for(
            lambda: client.list("VirtualNetwork"),
            timeout=INTERVAL + 8,
            interval=0.05,
            what="the deleted network to come back",
        )
    watching.wait_for_line(
        lambda line: line == "drift corrected: virtualnetwork/lan created",
        timeout=15,
        what="the drift report",
    )
    assert watching.stop() == 0


def test_an_object_edited_on_the_hub_is_put_back(hub: HubProcess, watching: WatchProcess) -> None:
    with hub.client() as client:
        changed = {
            "apiVersion": "gu/v1",
            "kind": "Priority",
            "metadata": {"name": "batch"},
            "spec": {"value": 7},
        }
        client.apply([changed])  # no apply set: someone else's hand edit
    assert priority_value(hub) == 7
    wait_for(lambda: priority_value(hub) == 100, timeout=INTERVAL + 8, what="the value put back")
    watching.wait_for_line(
        lambda line: line == "drift corrected: priority/batch configured",
        timeout=15,
        what="the drift report",
    )
    assert watching.stop() == 0


def test_a_broken_file_is_reported_and_the_previous_object_stays(
    hub: HubProcess, deploy: Path, watching: WatchProcess
) -> None:
    (deploy / "priority.yaml").write_text(PRIORITY.format(value="lots"))

    report = watching.wait_for_line(
        lambda line: "deploy/priority.yaml:6:" in line, timeout=15, what="the error report"
    )
    assert "spec.value" in report
    # a few periodic passes later the last good state is still there
    time.sleep(INTERVAL * 1.5)
    assert priority_value(hub) == 100
    with hub.client() as client:
        assert client.list("VirtualNetwork"), "a broken load must not prune"

    (deploy / "priority.yaml").write_text(PRIORITY.format(value=300))
    wait_for(lambda: priority_value(hub) == 300, timeout=15, what="the fixed file applied")
    assert "Traceback" not in watching.output()
    assert watching.stop() == 0


def test_a_deleted_file_is_pruned(hub: HubProcess, deploy: Path, watching: WatchProcess) -> None:
    (deploy / "network.yaml").unlink()
    with hub.client() as client:
        wait_for(lambda: client.list("VirtualNetwork") == [], timeout=15, what="the network pruned")
    watching.wait_for_line(
        lambda line: line == "virtualnetwork/lan pruned", timeout=15, what="the prune line"
    )
    assert watching.stop() == 0


def test_ctrl_c_stops_cleanly(watching: WatchProcess) -> None:
    assert watching.stop(signal.SIGINT) == 0
    assert "stopped watching" in watching.output()
    assert "Traceback" not in watching.output()


def test_sigterm_stops_cleanly(watching: WatchProcess) -> None:
    started = time.monotonic()
    assert watching.stop(signal.SIGTERM) == 0
    assert time.monotonic() - started < 5
    assert "stopped watching" in watching.output()
    assert "Traceback" not in watching.output()


# ------------------------------------------------------------ in-process passes


def test_a_broken_pass_applies_nothing_and_keeps_the_last_good_set(
    hub: HubProcess, deploy: Path
) -> None:
    with hub.client() as client:
        watcher = GitOpsWatcher(client, [str(deploy)], apply_set="deploy", prune=True)
        first = watcher.apply_once("start")
        assert first.applied and not first.errors
        assert {(r["kind"], r["action"]) for r in first.results} == {
            ("Priority", "created"),
            ("VirtualNetwork", "created"),
        }

        (deploy / "network.yaml").unlink()
        (deploy / "priority.yaml").write_text(PRIORITY.format(value=-5) + "  bogus: 1\n")
        broken = watcher.apply_once("change")
        assert broken.manifests_broken and not broken.applied
        assert any("priority.yaml:7:" in e for e in broken.errors)
        assert client.list("VirtualNetwork"), "nothing pruned on a broken load"

        # drift correction keeps working on the last good set while the files are broken
        client.delete("Priority", "batch")
        periodic = watcher.apply_once("periodic")
        assert periodic.from_last_good and periodic.applied
        assert [(r["kind"], r["action"]) for r in periodic.changed] == [("Priority", "created")]
        assert client.get("Priority", "batch")["spec"]["value"] == 100


def test_run_stops_when_the_stop_event_is_set(hub: HubProcess, deploy: Path) -> None:
    printed: list[str] = []
    with hub.client() as client:
        watcher = GitOpsWatcher(
            client,
            [str(deploy)],
            apply_set="deploy",
            interval=INTERVAL,
            echo=printed.append,
            echo_err=printed.append,
        )
        stop = threading.Event()
        thread = threading.Thread(target=watcher.run, args=(stop,))
        thread.start()
        try:
            wait_for(lambda: "priority/batch created" in printed, timeout=10, what="first pass")
            (deploy / "priority.yaml").write_text(PRIORITY.format(value=42))
            wait_for(lambda: priority_value(hub) == 42, timeout=15, what="the edit applied")
        finally:
            stop.set()
            thread.join(timeout=5)
        assert not thread.is_alive()


def test_a_folder_emptied_mid_checkout_prunes_nothing(hub: HubProcess, deploy: Path) -> None:
    with hub.client() as client:
        watcher = GitOpsWatcher(client, [str(deploy)], apply_set="deploy", prune=True)
        assert watcher.apply_once("start").applied
        for manifest in deploy.iterdir():
            manifest.unlink()
        emptied = watcher.apply_once("change")
        assert emptied.manifests_broken and not emptied.applied
        assert "no manifests" in emptied.errors[0]
        assert client.list("Priority") and client.list("VirtualNetwork")
