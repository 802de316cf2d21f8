"""The ``gu`` CLI against a real hub: apply, diff, get, describe, delete, auth, config.

Every test runs the real command in a subprocess (``run_gu``) against a real
hub process (the ``hub`` fixture), from a temporary working directory holding a
``deploy/`` folder with one manifest of each user kind, so the default apply
set is ``deploy``. The hub's state is checked through the API client, not
through the CLI under test.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from ruamel.yaml import YAML

from controller.cli.apply import hub_field_errors
from controller.client import ApiError, Client
from specs.identity import generate_key, public_key_str, save_private_key
from specs.loader import load_text
from tests.conftest import HubProcess
from tests.helpers import GU, ROOT, run_gu, wait_for

HASH = "sha3-256:" + "ab" * 32
PUBLIC_KEY = "ed25519:" + base64.b64encode(bytes(range(32))).decode()

MANIFESTS = {
    "app.yaml": f"""\
apiVersion: gu/v1
kind: App
metadata:
  name: demo
  labels:
    team: render
spec:
  publicKeys:
    - {PUBLIC_KEY}
""",
    "policy.yaml": f"""\
apiVersion: gu/v1
kind: ImagePolicy
metadata:
  name: demo-images
spec:
  apps: [demo]
  allowImages:
    - {HASH}
""",
    "priority.yaml": """\
apiVersion: gu/v1
kind: Priority
metadata:
  name: batch
spec:
  value: 100
  default: true
""",
    "network.yaml": """\
apiVersion: gu/v1
kind: VirtualNetwork
metadata:
  name: lan
spec:
  cidr: 10.77.0.0/24
""",
    "session.yaml": f"""\
apiVersion: gu/v1
kind: Session
metadata:
  name: hello
spec:
  app: demo
  priority: batch
  workload:
    runtime: native
    image:
      hash: {HASH}
    command: [echo, hello]
""",
}
OBJECTS = [
    ("App", "demo"),
    ("ImagePolicy", "demo-images"),
    ("Priority", "batch"),
    ("VirtualNetwork", "lan"),
    ("Session", "hello"),
]


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A working directory with ``deploy/`` holding one manifest of each user kind."""
    work = tmp_path / "work"
    deploy = work / "deploy"
    deploy.mkdir(parents=True)
    for name, text in MANIFESTS.items():
        (deploy / name).write_text(text)
    return work


def gu(hub: HubProcess, workdir: Path, *args: str, input: str | None = None) -> Any:
    """Run ``gu`` from ``workdir`` with the hub's client config."""
    return run_gu(*args, env=hub.env, input=input, cwd=workdir)


def object_lines(stdout: str) -> dict[str, str]:
    """``{"session/hello": "created", ...}`` from ``gu apply`` output (summary skipped)."""
    out = {}
    for line in stdout.splitlines():
        if line.startswith("apply set") or line.startswith("no apply set"):
            continue
        key, _, action = line.partition(" ")
        out[key] = action
    return out


def generations(client: Client) -> dict[tuple[str, str], int]:
    return {(k, n): client.get(k, n)["metadata"]["generation"] for k, n in OBJECTS}


def nothing_on_hub(client: Client) -> bool:
    return all(client.list(kind) == [] for kind, _ in OBJECTS)


# ------------------------------------------------------------ apply


def test_apply_creates_one_object_of_each_user_kind(hub: HubProcess, workdir: Path) -> None:
    result = gu(hub, workdir, "apply", "-f", "deploy")
    assert result.returncode == 0, result.stderr
    assert object_lines(result.stdout) == {f"{k.lower()}/{n}": "created" for k, n in OBJECTS}
    assert 'apply set "deploy": 5 created' in result.stdout
    for kind, name in OBJECTS:
        listed = gu(hub, workdir, "get", kind, "-o", "json")
        assert listed.returncode == 0, listed.stderr
        items = json.loads(listed.stdout)["items"]
        assert [o["metadata"]["name"] for o in items] == [name]
        assert items[0]["metadata"]["annotations"]["gu/apply-set"] == "deploy"


def test_reapply_reports_unchanged_and_keeps_generations(hub: HubProcess, workdir: Path) -> None:
    assert gu(hub, workdir, "apply", "-f", "deploy").returncode == 0
    with hub.client() as client:
        before = generations(client)
        again = gu(hub, workdir, "apply", "-f", "deploy")
        assert again.returncode == 0, again.stderr
        assert set(object_lines(again.stdout).values()) == {"unchanged"}
        assert len(object_lines(again.stdout)) == len(OBJECTS)
        assert generations(client) == before


def test_editing_one_spec_configures_only_it(hub: HubProcess, workdir: Path) -> None:
    assert gu(hub, workdir, "apply", "-f", "deploy").returncode == 0
    with hub.client() as client:
        before = generations(client)
        priority = workdir / "deploy" / "priority.yaml"
        priority.write_text(priority.read_text().replace("value: 100", "value: 250"))
        result = gu(hub, workdir, "apply", "-f", "deploy")
        assert result.returncode == 0, result.stderr
        lines = object_lines(result.stdout)
        assert lines.pop("priority/batch") == "configured"
        assert set(lines.values()) == {"unchanged"}
        after = generations(client)
        assert after.pop(("Priority", "batch")) == before.pop(("Priority", "batch")) + 1
        assert after == before
        assert client.get("Priority", "batch")["spec"]["value"] == 250


def test_bad_document_exits_2_names_its_line_and_writes_nothing(
    hub: HubProcess, workdir: Path
) -> None:
    (workdir / "deploy" / "zz-bad.yaml").write_text(
        "apiVersion: gu/v1\n"
        "kind: Priority\n"
        "metadata:\n"
        "  name: broken\n"
        "spec:\n"
        "  value: 5\n"
        "  preemptionPolicy: Sometimes\n"
    )
    result = gu(hub, workdir, "apply", "-f", "deploy")
    assert result.returncode == 2
    assert "deploy/zz-bad.yaml:7:" in result.stderr
    assert "preemptionPolicy" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    with hub.client() as client:
        assert nothing_on_hub(client)


def test_prune_removes_objects_gone_from_the_folder_but_not_other_sets(
    hub: HubProcess, workdir: Path
) -> None:
    other = workdir / "other"
    other.mkdir()
    (other / "priority.yaml").write_text(
        MANIFESTS["priority.yaml"]
        .replace("name: batch", "name: interactive")
        .replace("default: true", "default: false")  # one default only
    )
    assert gu(hub, workdir, "apply", "-f", "deploy").returncode == 0
    assert gu(hub, workdir, "apply", "-f", "other").returncode == 0
    (workdir / "deploy" / "network.yaml").unlink()

    result = gu(hub, workdir, "apply", "-f", "deploy", "--prune")

    assert result.returncode == 0, result.stderr
    assert object_lines(result.stdout)["virtualnetwork/lan"] == "pruned"
    with hub.client() as client:
        assert client.list("VirtualNetwork") == []
        assert client.get("Priority", "interactive")["metadata"]["annotations"] == {
            "gu/apply-set": "other"
        }
        assert client.get("Priority", "batch")


def test_dry_run_writes_nothing(hub: HubProcess, workdir: Path) -> None:
    result = gu(hub, workdir, "apply", "-f", "deploy", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert set(object_lines(result.stdout).values()) == {"created (dry run)"}
    assert "nothing was written" in result.stdout
    with hub.client() as client:
        assert nothing_on_hub(client)


def test_apply_reads_stdin_with_a_named_set(hub: HubProcess, workdir: Path) -> None:
    result = gu(
        hub, workdir, "apply", "-f", "-", "--set", "piped", input=MANIFESTS["priority.yaml"]
    )
    assert result.returncode == 0, result.stderr
    assert "priority/batch created" in result.stdout
    with hub.client() as client:
        annotations = client.get("Priority", "batch")["metadata"]["annotations"]
        assert annotations["gu/apply-set"] == "piped"


def test_prune_from_stdin_without_a_set_is_a_usage_error(hub: HubProcess, workdir: Path) -> None:
    result = gu(hub, workdir, "apply", "-f", "-", "--prune", input=MANIFESTS["priority.yaml"])
    assert result.returncode == 2
    assert "--set" in result.stderr


def test_an_empty_folder_is_refused_rather_than_pruning_the_set(
    hub: HubProcess, workdir: Path
) -> None:
    assert gu(hub, workdir, "apply", "-f", "deploy").returncode == 0
    (workdir / "empty").mkdir()
    result = gu(hub, workdir, "apply", "-f", "empty", "--set", "deploy", "--prune")
    assert result.returncode == 2
    assert "no manifests" in result.stderr
    with hub.client() as client:
        assert generations(client)  # every object still there


def test_quickstart_example_applies(hub: HubProcess) -> None:
    result = run_gu("apply", "-f", "examples/quickstart", "--dry-run", env=hub.env, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    lines = object_lines(result.stdout)
    assert lines and set(lines.values()) == {"created (dry run)"}
    assert 'apply set "examples/quickstart"' in result.stdout


def test_a_session_refused_by_image_policy_exits_3_naming_its_file(
    hub: HubProcess, workdir: Path
) -> None:
    (workdir / "deploy" / "policy.yaml").unlink()
    result = gu(hub, workdir, "apply", "-f", "deploy")
    assert result.returncode == 3
    assert "deploy/session.yaml:1: spec.workload.image.hash: refused by image policy" in (
        result.stderr
    )
    assert "Error: the hub refused the request (HTTP 403)" in result.stderr
    with hub.client() as client:
        assert nothing_on_hub(client)


def test_hub_field_errors_name_the_document_file_and_line() -> None:
    docs = load_text(MANIFESTS["network.yaml"] + "---\n" + MANIFESTS["priority.yaml"], "a.yaml")
    error = ApiError(
        422,
        "1 invalid object(s); nothing was applied",
        [{"index": 1, "path": "spec.value", "message": "too big"}],
    )
    assert hub_field_errors(error, docs) == ["a.yaml:8: spec.value: too big"]


# ------------------------------------------------------------ diff


def test_diff_exits_0_when_equal_and_1_after_an_edit(hub: HubProcess, workdir: Path) -> None:
    assert gu(hub, workdir, "apply", "-f", "deploy").returncode == 0
    same = gu(hub, workdir, "diff", "-f", "deploy")
    assert same.returncode == 0, same.stderr
    assert same.stdout == ""

    priority = workdir / "deploy" / "priority.yaml"
    priority.write_text(priority.read_text().replace("value: 100", "value: 250"))
    changed = gu(hub, workdir, "diff", "-f", "deploy")

    assert changed.returncode == 1, changed.stderr
    assert "--- hub/Priority/batch" in changed.stdout
    assert "+++ deploy/priority.yaml" in changed.stdout
    assert "-  value: 100" in changed.stdout
    assert "+  value: 250" in changed.stdout
    assert "hub/Session/hello" not in changed.stdout


def test_diff_of_an_object_missing_on_the_hub_is_all_added(hub: HubProcess, workdir: Path) -> None:
    result = gu(hub, workdir, "diff", "-f", "deploy/network.yaml")
    assert result.returncode == 1, result.stderr
    assert "--- hub/VirtualNetwork/lan" in result.stdout
    assert "+  cidr: 10.77.0.0/24" in result.stdout
    assert not any(
        line.startswith("-") and not line.startswith("---") for line in result.stdout.splitlines()
    )


def test_diff_of_invalid_manifests_exits_2(hub: HubProcess, workdir: Path) -> None:
    (workdir / "deploy" / "bad.yaml").write_text("kind: Priority\n")
    result = gu(hub, workdir, "diff", "-f", "deploy")
    assert result.returncode == 2
    assert "deploy/bad.yaml:1:" in result.stderr


# ------------------------------------------------------------ get


def test_get_missing_object_exits_1_not_found(hub: HubProcess, workdir: Path) -> None:
    result = gu(hub, workdir, "get", "session", "nope")
    assert result.returncode == 1
    assert result.stderr.strip() == 'Error: session "nope" not found'


def test_get_unknown_kind_exits_2(hub: HubProcess, workdir: Path) -> None:
    result = gu(hub, workdir, "get", "gadgets")
    assert result.returncode == 2
    assert "unknown kind 'gadgets'" in result.stderr


def test_get_output_formats(hub: HubProcess, workdir: Path) -> None:
    assert gu(hub, workdir, "apply", "-f", "deploy").returncode == 0

    as_yaml = gu(hub, workdir, "get", "app", "demo", "-o", "yaml")
    assert as_yaml.returncode == 0, as_yaml.stderr
    doc = YAML(typ="safe").load(as_yaml.stdout)
    assert (doc["kind"], doc["metadata"]["name"]) == ("App", "demo")

    as_json = gu(hub, workdir, "get", "app", "demo", "-o", "json")
    assert json.loads(as_json.stdout)["spec"]["publicKeys"] == [PUBLIC_KEY]

    listed_yaml = YAML(typ="safe").load(gu(hub, workdir, "get", "apps", "-o", "yaml").stdout)
    assert [o["metadata"]["name"] for o in listed_yaml["items"]] == ["demo"]

    table = gu(hub, workdir, "get", "priorities").stdout.splitlines()
    assert table[0].split() == ["NAME", "VALUE", "DEFAULT", "AGE"]
    assert table[1].split()[:3] == ["batch", "100", "true"]

    wide = gu(hub, workdir, "get", "app", "-o", "wide").stdout.splitlines()
    header = wide[0].split()
    for column in ("NAME", "READY", "REASON", "AGE", "GENERATION", "RESOURCE-VERSION", "LABELS"):
        assert column in header
    assert "team=render" in wide[1]


def test_get_sessions_table_has_session_columns(hub: HubProcess, workdir: Path) -> None:
    assert gu(hub, workdir, "apply", "-f", "deploy").returncode == 0
    lines = gu(hub, workdir, "get", "sessions").stdout.splitlines()
    assert lines[0].split() == ["NAME", "APP", "PRIORITY", "PHASE", "READY", "PLACEMENTS", "AGE"]
    assert lines[1].split()[:2] == ["hello", "demo"]
    # once reconciled: the default class of the folder (batch, 100)
    row = wait_for(
        lambda: (
            (r := gu(hub, workdir, "get", "sessions").stdout.splitlines()[1].split())[2] == "100"
            and r
        ),
        timeout=10,
        what="the session's priority in the table",
    )
    assert row[:4] == ["hello", "demo", "100", "(batch)"]


def test_kind_aliases_name_the_same_objects(hub: HubProcess, workdir: Path) -> None:
    assert gu(hub, workdir, "apply", "-f", "deploy").returncode == 0
    outputs = {
        spelling: gu(hub, workdir, "get", spelling, "-o", "json")
        for spelling in ("sessions", "session", "Session", "SESSIONS")
    }
    names = {
        spelling: [o["metadata"]["name"] for o in json.loads(r.stdout)["items"]]
        for spelling, r in outputs.items()
    }
    assert names == {spelling: ["hello"] for spelling in outputs}


def test_get_watch_prints_a_row_per_change_until_ctrl_c(hub: HubProcess, workdir: Path) -> None:
    assert gu(hub, workdir, "apply", "-f", "deploy/priority.yaml").returncode == 0
    proc = subprocess.Popen(
        [*GU, "get", "priorities", "-w"],
        env=hub.env,
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # a shell's background job may inherit SIGINT ignored; Ctrl-C is what we test
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        assert proc.stdout is not None
        header = proc.stdout.readline()
        assert header.split()[:2] == ["EVENT", "NAME"]
        assert proc.stdout.readline().split()[:2] == ["ADDED", "batch"]
        with hub.client() as client:
            client.delete("Priority", "batch")
        deadline = time.monotonic() + 10
        line = ""
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if line.startswith("DELETED"):
                break
        assert line.split()[:2] == ["DELETED", "batch"]
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert "Traceback" not in err


# ------------------------------------------------------------ describe


def test_describe_shows_conditions_and_events(hub: HubProcess, workdir: Path) -> None:
    # the session's priority does not exist: the hub marks it Stalled and records a Warning
    session = workdir / "deploy" / "session.yaml"
    session.write_text(session.read_text().replace("priority: batch", "priority: missing"))
    (workdir / "deploy" / "priority.yaml").unlink()
    applied = gu(hub, workdir, "apply", "-f", "deploy")
    assert applied.returncode == 0, applied.stderr

    def stalled_with_event() -> str | None:
        result = gu(hub, workdir, "describe", "session", "hello")
        events = result.stdout.partition("\nEvents:")[2]
        return result.stdout if "MissingReference" in events else None

    page = wait_for(stalled_with_event, timeout=15, what="a MissingReference event")
    assert "Name:             hello" in page
    assert "Kind:             Session" in page
    spec = page.partition("\nSpec:\n")[2].partition("\nStatus:")[0]
    assert "priority: missing" in spec
    conditions = page.partition("\nConditions:\n")[2].partition("\nEvents:")[0]
    assert conditions.split("\n")[0].split() == ["TYPE", "STATUS", "REASON", "MESSAGE", "AGE"]
    assert any(
        line.split()[:3] == ["Stalled", "True", "MissingReference"]
        for line in conditions.splitlines()
    )
    events = page.partition("\nEvents:\n")[2]
    assert events.split("\n")[0].split() == ["TIME", "TYPE", "REASON", "MESSAGE"]
    assert "Warning" in events
    assert 'Priority "missing" not found' in events


def test_describe_missing_object_exits_1(hub: HubProcess, workdir: Path) -> None:
    result = gu(hub, workdir, "describe", "priority", "nope")
    assert result.returncode == 1
    assert 'priority "nope" not found' in result.stderr


# ------------------------------------------------------------ delete


def test_delete_by_files_deletes_the_named_objects(hub: HubProcess, workdir: Path) -> None:
    assert gu(hub, workdir, "apply", "-f", "deploy").returncode == 0
    result = gu(hub, workdir, "delete", "-f", "deploy/priority.yaml", "-f", "deploy/network.yaml")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["priority/batch deleted", "virtualnetwork/lan deleted"]
    with hub.client() as client:
        assert client.list("Priority") == []
        assert client.list("VirtualNetwork") == []
        assert client.get("App", "demo")


def test_delete_by_files_continues_past_missing_objects_and_exits_1(
    hub: HubProcess, workdir: Path
) -> None:
    assert gu(hub, workdir, "apply", "-f", "deploy/network.yaml").returncode == 0
    result = gu(hub, workdir, "delete", "-f", "deploy/priority.yaml", "-f", "deploy/network.yaml")
    assert result.returncode == 1
    assert 'priority "batch" not found' in result.stderr
    assert "virtualnetwork/lan deleted" in result.stdout
    with hub.client() as client:
        assert client.list("VirtualNetwork") == []


def test_delete_by_kind_and_name(hub: HubProcess, workdir: Path) -> None:
    assert gu(hub, workdir, "apply", "-f", "deploy").returncode == 0
    result = gu(hub, workdir, "delete", "vnet", "lan")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "virtualnetwork/lan deleted"
    missing = gu(hub, workdir, "delete", "vnet", "lan")
    assert missing.returncode == 1
    assert 'virtualnetwork "lan" not found' in missing.stderr


# ------------------------------------------------------------ auth, config, hub errors


def test_auth_token_works_as_a_bearer_token(hub: HubProcess, workdir: Path) -> None:
    assert gu(hub, workdir, "apply", "-f", "deploy").returncode == 0
    result = gu(hub, workdir, "auth", "token")
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert token and "\n" not in token
    answer = httpx.get(
        hub.url + "/v1/sessions", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    assert answer.status_code == 200
    assert [o["metadata"]["name"] for o in answer.json()["items"]] == ["hello"]
    assert httpx.get(hub.url + "/v1/sessions", timeout=10).status_code == 401


def test_config_view_lists_contexts_without_key_material(hub: HubProcess, workdir: Path) -> None:
    result = gu(hub, workdir, "config")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["CURRENT", "NAME", "HUB", "PRINCIPAL", "KEY"]
    assert lines[1].split()[0] == "*"
    assert hub.url in lines[1]
    assert str(hub.state_dir / "admin.key") in lines[1]
    key_text = (hub.state_dir / "admin.key").read_text()
    assert key_text.strip() not in result.stdout
    assert gu(hub, workdir, "config", "view").stdout == result.stdout


def test_config_use_switches_the_current_context(hub: HubProcess, workdir: Path) -> None:
    yaml = YAML(typ="safe")
    data = yaml.load(hub.config.read_text())
    dead = dict(data["contexts"][0], name="dead", hub="http://127.0.0.1:9")
    data["contexts"].append(dead)
    config = workdir / "config.yaml"
    with config.open("w") as fh:
        yaml.dump(data, fh)
    env = dict(hub.env, GU_CONFIG=str(config))

    switched = run_gu("config", "use", "dead", env=env, cwd=workdir)
    assert switched.returncode == 0, switched.stderr
    unreachable = run_gu("get", "sessions", env=env, cwd=workdir)
    assert unreachable.returncode == 3
    assert "cannot reach the hub at http://127.0.0.1:9" in unreachable.stderr
    assert "Traceback" not in unreachable.stderr

    explicit = run_gu(
        "--context", data["contexts"][0]["name"], "get", "sessions", env=env, cwd=workdir
    )
    assert explicit.returncode == 0, explicit.stderr

    unknown = run_gu("config", "use", "nope", env=env, cwd=workdir)
    assert unknown.returncode == 2
    assert "context 'nope'" in unknown.stderr


def test_missing_client_config_exits_2_and_says_what_to_do(tmp_path: Path) -> None:
    env = dict(os.environ, GU_CONFIG=str(tmp_path / "none.yaml"))
    result = run_gu("get", "sessions", env=env, cwd=tmp_path)
    assert result.returncode == 2
    assert "gu hub" in result.stderr
    assert "Traceback" not in result.stderr


def _config_with_key(hub: HubProcess, workdir: Path, key_path: Path) -> dict[str, str]:
    """An env whose client config is the hub's, but logging in with ``key_path``."""
    yaml = YAML(typ="safe")
    data = yaml.load(hub.config.read_text())
    data["contexts"][0]["key"] = str(key_path)
    config = workdir / f"{key_path.stem}-config.yaml"
    with config.open("w") as fh:
        yaml.dump(data, fh)
    return dict(hub.env, GU_CONFIG=str(config))


def test_hub_refusal_exits_3_with_the_hubs_message(hub: HubProcess, workdir: Path) -> None:
    app_key = generate_key()
    save_private_key(app_key, workdir / "app.key")
    (workdir / "app.yaml").write_text(
        MANIFESTS["app.yaml"].replace(PUBLIC_KEY, public_key_str(app_key))
    )
    assert gu(hub, workdir, "apply", "-f", "app.yaml").returncode == 0
    as_app = _config_with_key(hub, workdir, workdir / "app.key")

    refused = run_gu("apply", "-f", "deploy/priority.yaml", env=as_app, cwd=workdir)

    assert refused.returncode == 3
    assert refused.stderr.startswith("Error: the hub refused the request (HTTP 403)")
    assert "lacks permission to apply Priority" in refused.stderr
    assert "Traceback" not in refused.stderr
    with hub.client() as client:
        assert client.list("Priority") == []


def test_unknown_key_exits_3(hub: HubProcess, workdir: Path) -> None:
    save_private_key(generate_key(), workdir / "stranger.key")
    env = _config_with_key(hub, workdir, workdir / "stranger.key")
    result = run_gu("get", "sessions", env=env, cwd=workdir)
    assert result.returncode == 3
    assert "HTTP 401" in result.stderr
    assert "Traceback" not in result.stderr


def test_schema_writes_json_schemas(tmp_path: Path) -> None:
    result = run_gu("schema", "-o", str(tmp_path / "schemas"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    written = [Path(line) for line in result.stdout.splitlines()]
    assert tmp_path / "schemas" / "session.json" in written
    for path in written:
        assert json.loads(path.read_text())
