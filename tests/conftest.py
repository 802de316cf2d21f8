"""Fixtures: a real hub process on a free loopback port, with its own state dir."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from controller.client import Client
from controller.store import Store
from tests.dockerd import Engine, find_or_start
from tests.helpers import GU, ROOT, free_port, wait_for
from tests.pgcluster import PgCluster, why_not


@dataclass
class HubProcess:
    """A running ``gu hub`` subprocess."""

    state_dir: Path
    port: int
    log_path: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    extra_args: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def config(self) -> Path:
        return self.state_dir / "admin-config.yaml"

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                *GU,
                "hub",
                "--state-dir",
                str(self.state_dir),
                "--listen",
                f"127.0.0.1:{self.port}",
                *self.extra_args,
            ],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        wait_for(self._healthy, timeout=20, what=f"hub on {self.url} (log {self.log_path})")

    def _healthy(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"hub exited: {self.log_path.read_text()[-2000:]}")
        return httpx.get(self.url + "/healthz", timeout=1).status_code == 200

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout=5)

    def kill(self) -> None:
        """``kill -9``: no chance to clean up."""
        self.stop(signal.SIGKILL)

    def client(self) -> Client:
        return Client.from_config(self.config)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")


def make_hub(tmp_path: Path, *extra_args: str) -> HubProcess:
    """A hub (not started) whose state, config and logs live under ``tmp_path``."""
    state = tmp_path / "hub"
    tmp_path.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["GU_CONFIG"] = str(state / "admin-config.yaml")
    env.setdefault("GU_LOG_LEVEL", "INFO")
    return HubProcess(
        state_dir=state,
        port=free_port(),
        log_path=tmp_path / "hub.log",
        env=env,
        extra_args=list(extra_args),
    )


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[HubProcess]:
    """A started hub; stopped (SIGTERM, then SIGKILL) after the test."""
    h = make_hub(tmp_path)
    h.start()
    try:
        yield h
    finally:
        h.stop()


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[Engine]:
    """A real Docker engine: the one that answers, or a private dockerd we start and stop.

    CI installs docker.io (``.ci/system.sh``): there, no engine is a failure, not a skip.
    """
    engine = find_or_start()
    if engine is None:
        message = "no Docker engine answers and dockerd cannot be started (install docker.io)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    try:
        yield engine
    finally:
        engine.stop()


@pytest.fixture(scope="session")
def pg() -> Iterator[PgCluster]:
    """A throwaway PostgreSQL cluster for the whole run (``tests.pgcluster``); tests make
    their own databases in it. Skipped where PostgreSQL is not installed, except in CI
    (``make test`` installs it)."""
    reason = why_not()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    cluster = PgCluster()
    try:
        yield cluster
    finally:
        cluster.close()


# Every backend behind the Store Protocol runs the same tests: a test that takes ``store``
# (or ``backend``) runs once on SQLite and once on PostgreSQL.
@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> Iterator[Callable[..., Store]]:
    """``backend(folder, **options)`` → a store of this backend, the same one again for
    the same folder (a SQLite file in it, or a PostgreSQL database of its own)."""
    made: list[Store] = []
    if request.param == "sqlite":

        def make(path: Path, **kw: Any) -> Store:
            from controller.store import SQLiteStore

            made.append(SQLiteStore(path / "hub.db", **kw))
            return made[-1]
    else:
        from controller.store.postgres import PostgresStore

        cluster = request.getfixturevalue("pg")
        urls: dict[Path, str] = {}

        def make(path: Path, **kw: Any) -> Store:
            url = urls.get(path) or urls.setdefault(path, cluster.database())
            made.append(PostgresStore(url, **kw))
            return made[-1]

    try:
        yield make
    finally:
        for s in made:
            with contextlib.suppress(Exception):
                s.close()


@pytest.fixture
def store(backend: Callable[..., Store], tmp_path: Path) -> Store:
    return backend(tmp_path)
