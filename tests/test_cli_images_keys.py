"""The `gu image`, `gu keys`, `gu login` and `gu hub token` commands, against a real hub."""

from __future__ import annotations

import json
import stat
from pathlib import Path

from ruamel.yaml import YAML

from specs.images import hash_file
from tests.conftest import HubProcess
from tests.helpers import ROOT, run_gu

QUICKSTART = ROOT / "examples" / "quickstart"


def test_image_build_is_reproducible_and_matches_the_quickstart_manifest(tmp_path: Path) -> None:
    first = run_gu(
        "image",
        "build",
        "--runtime",
        "native",
        str(QUICKSTART / "hello"),
        "-o",
        str(tmp_path / "a.tar.gz"),
    )
    assert first.returncode == 0, first.stderr
    (QUICKSTART / "hello" / "run.sh").touch()  # a new mtime must not change the hash
    second = run_gu(
        "image",
        "build",
        "--runtime",
        "native",
        str(QUICKSTART / "hello"),
        "-o",
        str(tmp_path / "b.tar.gz"),
    )
    assert first.stdout == second.stdout
    assert (tmp_path / "a.tar.gz").read_bytes() == (tmp_path / "b.tar.gz").read_bytes()
    session = YAML(typ="safe").load((QUICKSTART / "session.yaml").read_text())
    assert session["spec"]["workload"]["image"]["hash"] == first.stdout.strip()
    hashed = run_gu("image", "hash", str(tmp_path / "a.tar.gz"))
    assert hashed.stdout.strip() == first.stdout.strip() == hash_file(tmp_path / "a.tar.gz")


def test_image_push_prints_the_hash_and_ls_lists_it(hub: HubProcess, tmp_path: Path) -> None:
    image = tmp_path / "hello.tar.gz"
    run_gu("image", "build", str(QUICKSTART / "hello"), "-o", str(image))
    pushed = run_gu("image", "push", str(image), env=hub.env)
    assert pushed.returncode == 0, pushed.stderr
    assert pushed.stdout.strip() == hash_file(image)
    listed = run_gu("image", "ls", "-o", "json", env=hub.env)
    items = json.loads(listed.stdout)["items"]
    assert [(i["hash"], i["size"]) for i in items] == [(hash_file(image), image.stat().st_size)]


def test_keys_new_writes_a_0600_key_and_pub_prints_it_again(tmp_path: Path) -> None:
    key = tmp_path / "app.key"
    made = run_gu("keys", "new", "--out", str(key))
    assert made.returncode == 0
    assert made.stdout.startswith("ed25519:")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert run_gu("keys", "pub", str(key)).stdout == made.stdout
    again = run_gu("keys", "new", "--out", str(key))
    assert again.returncode == 2 and "--force" in again.stderr


def test_sign_and_verify_detect_a_flipped_byte_and_a_wrong_key(tmp_path: Path) -> None:
    image = tmp_path / "img.tar.gz"
    run_gu("image", "build", str(QUICKSTART / "hello"), "-o", str(image))
    signer = run_gu("keys", "new", "--out", str(tmp_path / "signer.key")).stdout.strip()
    other = run_gu("keys", "new", "--out", str(tmp_path / "other.key")).stdout.strip()
    signed = run_gu("image", "sign", str(image), "--key", str(tmp_path / "signer.key"))
    assert signed.returncode == 0, signed.stderr
    assert json.loads((tmp_path / "img.tar.gz.sig").read_text())["hash"] == hash_file(image)
    ok = run_gu("image", "verify", str(image), "--pubkey", signer)
    assert ok.returncode == 0 and "OK" in ok.stdout
    assert run_gu("image", "verify", str(image), "--pubkey", other).returncode == 1
    doc = json.loads((tmp_path / "img.tar.gz.sig").read_text())
    sig = bytearray(doc["signature"].encode())
    sig[5] = ord("A") if sig[5] != ord("A") else ord("B")
    doc["signature"] = sig.decode()
    (tmp_path / "img.tar.gz.sig").write_text(json.dumps(doc))
    assert run_gu("image", "verify", str(image), "--pubkey", signer).returncode == 1


def test_login_as_an_app_writes_a_current_context(hub: HubProcess, tmp_path: Path) -> None:
    pub = run_gu("keys", "new", "--out", str(tmp_path / "app.key")).stdout.strip()
    app = {
        "apiVersion": "gu/v1",
        "kind": "App",
        "metadata": {"name": "a"},
        "spec": {"publicKeys": [pub]},
    }
    hub.client().apply([app])
    cfg = tmp_path / "app-config.yaml"
    env = {**hub.env, "GU_CONFIG": str(cfg)}
    login = run_gu(
        "login", "--app", "a", "--key", str(tmp_path / "app.key"), "--hub", hub.url, env=env
    )
    assert login.returncode == 0, login.stderr
    token = run_gu("auth", "token", env=env)
    assert token.returncode == 0 and token.stdout.startswith("gu1.")
    wrong = run_gu(
        "login", "--app", "b", "--key", str(tmp_path / "app.key"), "--hub", hub.url, env=env
    )
    assert wrong.returncode == 2 and "not as app 'b'" in wrong.stderr


def test_hub_token_create_prints_a_join_token(hub: HubProcess) -> None:
    made = run_gu("hub", "token", "create", "--ttl", "10m", env=hub.env)
    assert made.returncode == 0, made.stderr
    assert made.stdout.startswith("gujt1_")
    bad = run_gu("hub", "token", "create", "--ttl", "soon", env=hub.env)
    assert bad.returncode == 2
