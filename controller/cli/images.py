"""``gu image``: build, hash, push and list images (one file each, named by its sha3-256).

``build`` packs a folder reproducibly (sorted entries, fixed times and owners),
so the same folder always gives the same hash and a manifest can name it.
``push`` streams the file to the hub with a progress bar on stderr, hashing it
on the way, and fails if the hub's hash of what it received differs from ours.
"""

from __future__ import annotations

import json
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

from controller.cli.errors import BadInputError, HubError
from controller.cli.output import age, dump_json, format_table, human_bytes
from controller.cli.state import CliState, pass_state
from controller.client import Client
from specs import gvmi
from specs.identity import KeyFileError, load_private_key
from specs.images import Hasher, PackError, hash_file, pack_native
from specs.signing import SignatureFormatError, parse_signature, sign_image, verify_image

CHUNK = 1 << 20


@click.group("image")
def image_group() -> None:
    """Images: build, hash, push, list, sign, verify."""


@image_group.command("build")
@click.option(
    "--runtime",
    type=click.Choice(["native", "docker", "vm"]),
    default="native",
    show_default=True,
    help="What the image is for: native (SOURCE is a folder), docker (SOURCE is an image "
    "on the local engine, saved with `docker save`) or vm (a .gvmi from --from-dir, "
    "--from-docker-archive or --from-docker).",
)
@click.argument("source", required=False)
@click.option(
    "-o",
    "--out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="FILE.tar.gz (native), FILE.tar (docker) or FILE.gvmi (vm)",
)
@click.option(
    "--docker-host",
    envvar="DOCKER_HOST",
    metavar="URL",
    help="The engine holding a docker SOURCE (default: DOCKER_HOST or the usual socket).",
)
@click.option(
    "--from-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="vm: the guest's root filesystem, a folder.",
)
@click.option(
    "--from-docker-archive",
    type=click.Path(dir_okay=False, path_type=Path),
    help="vm: a `docker save` tarball (layers applied with whiteouts; no engine needed).",
)
@click.option("--from-docker", metavar="IMAGE_REF", help="vm: an image on the local engine.")
@click.option(
    "--entrypoint", multiple=True, metavar="ARG", help="vm: the entrypoint, a word per option."
)
@click.option("--cmd", "cmd", multiple=True, metavar="ARG", help="vm: the default arguments.")
@click.option("--env", "env", multiple=True, metavar="K=V", help="vm: an environment variable.")
@click.option("--workdir", metavar="PATH", help="vm: the entrypoint's working directory.")
@click.option("--user", metavar="USER[:GROUP]", help="vm: the user the entrypoint runs as.")
def build_command(
    runtime: str,
    source: str | None,
    out: Path,
    docker_host: str | None,
    from_dir: Path | None,
    from_docker_archive: Path | None,
    from_docker: str | None,
    entrypoint: tuple[str, ...],
    cmd: tuple[str, ...],
    env: tuple[str, ...],
    workdir: str | None,
    user: str | None,
) -> None:
    """Pack SOURCE into OUT reproducibly and print its hash.

    native: SOURCE is a program folder, packed as a .tar.gz with sorted
    entries and fixed times and owners. docker: SOURCE is an image reference
    on the local engine (``busybox:latest``, an id), written as the ``docker
    save`` tarball of that image by id, without tags, so the same image always
    gives the same file and hash. vm: a ``.gvmi`` (a squashfs root, its run
    metadata and a footer) from a folder or a Docker image; the same input
    gives byte-identical output.
    """
    if runtime == "vm":
        click.echo(
            build_vm_image(
                out,
                from_dir,
                from_docker_archive,
                from_docker,
                docker_host,
                _vm_overrides(entrypoint, cmd, env, workdir, user),
            )
        )
        return
    if not source:
        raise BadInputError(f"--runtime {runtime} needs a SOURCE (see gu image build --help)")
    if runtime == "docker":
        click.echo(save_docker_image(source, out, docker_host))
        return
    folder = Path(source)
    if not folder.is_dir():
        raise BadInputError(f"{source}: not a folder (a native image is built from a folder)")
    try:
        digest = pack_native(folder, out)
    except PackError as exc:
        raise BadInputError(f"{folder}: {exc}") from None
    click.echo(digest)


def _vm_overrides(
    entrypoint: tuple[str, ...],
    cmd: tuple[str, ...],
    env: tuple[str, ...],
    workdir: str | None,
    user: str | None,
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if entrypoint:
        out["entrypoint"] = list(entrypoint)
    if cmd:
        out["cmd"] = list(cmd)
    if env:
        pairs = {}
        for item in env:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise BadInputError(f"--env {item!r}: expected KEY=VALUE")
            pairs[key] = value
        out["env"] = pairs
    if workdir:
        out["workingDir"] = workdir
    if user is not None:
        out["user"] = user
    return out


def build_vm_image(
    out: Path,
    from_dir: Path | None,
    from_docker_archive: Path | None,
    from_docker: str | None,
    docker_host: str | None,
    overrides: dict[str, Any],
) -> str:
    """Build a ``.gvmi`` from exactly one source; return its hash."""
    given = [x for x in (from_dir, from_docker_archive, from_docker) if x]
    if len(given) != 1:
        raise BadInputError(
            "--runtime vm needs exactly one of --from-dir DIR, --from-docker-archive FILE "
            "or --from-docker IMAGE_REF"
        )
    try:
        if from_dir is not None:
            return gvmi.build_from_dir(from_dir, out, gvmi.Metadata(**overrides))
        if from_docker_archive is not None:
            if not from_docker_archive.is_file():
                raise BadInputError(f"{from_docker_archive}: no such file")
            return gvmi.build_from_docker_archive(from_docker_archive, out, overrides)
        assert from_docker is not None
        with tempfile.TemporaryDirectory(prefix="gu-docker-save-") as tmp:
            archive = Path(tmp) / "image.tar"
            save_docker_image(from_docker, archive, docker_host)
            return gvmi.build_from_docker_archive(archive, out, overrides)
    except gvmi.GvmiError as exc:
        raise BadInputError(str(exc)) from None


@image_group.command("inspect")
@click.argument("file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
def inspect_command(file: Path) -> None:
    """Print an image file's kind, sizes, hash and run metadata (JSON), for every kind:
    .gvmi (vm), docker save tarball (docker), .tar.gz (native)."""
    click.echo(json.dumps({**describe_image(file), "hash": hash_file(file)}, indent=2))


def describe_image(file: Path) -> dict[str, Any]:
    """What ``gu image inspect`` says about ``file`` (BadInputError if it is none of them)."""
    with open(file, "rb") as f:
        head = f.read(4)
        f.seek(max(0, file.stat().st_size - gvmi.FOOTER_SIZE))
        tail = f.read(8)
    if tail == gvmi.MAGIC or head == gvmi.SQUASHFS_MAGIC:
        try:
            return gvmi.read(file).describe()
        except gvmi.GvmiError as exc:
            raise BadInputError(str(exc)) from None
    try:
        with tarfile.open(file, mode="r:*") as tar:
            names = tar.getnames()
            if "manifest.json" in names:
                entry, config = gvmi.docker_image(tar, str(file))
                run = config.get("config") or {}
                return {
                    "kind": "docker",
                    "size": file.stat().st_size,
                    "layers": len(entry.get("Layers") or []),
                    "tags": entry.get("RepoTags") or [],
                    "entrypoint": run.get("Entrypoint") or [],
                    "cmd": run.get("Cmd") or [],
                    "env": run.get("Env") or [],
                    "workingDir": run.get("WorkingDir") or "",
                    "user": run.get("User") or "",
                }
            files = [m for m in tar.getmembers() if m.isfile()]
            return {
                "kind": "native",
                "size": file.stat().st_size,
                "files": len(files),
                "unpackedBytes": sum(m.size for m in files),
                "entries": names[:50],
            }
    except gvmi.GvmiError as exc:
        raise BadInputError(str(exc)) from None
    except (tarfile.TarError, OSError, ValueError, KeyError) as exc:
        raise BadInputError(
            f"{file}: not a gu image (.gvmi, docker save tarball or native .tar.gz): {exc}"
        ) from None


def save_docker_image(ref: str, out: Path, docker_host: str | None = None) -> str:
    """``docker save`` of image ``ref`` (by its id, untagged) into ``out``; returns its hash."""
    try:
        import docker
        from docker.errors import DockerException, ImageNotFound
    except ImportError:  # pragma: no cover - docker is a dependency of gu
        raise BadInputError("the docker SDK is not installed: pip install docker") from None
    try:
        client = docker.DockerClient(base_url=docker_host) if docker_host else docker.from_env()
    except DockerException as exc:
        raise BadInputError(
            f"no Docker engine answers ({exc}); start dockerd or pass --docker-host"
        ) from None
    try:
        image = client.images.get(ref)
    except ImageNotFound:
        raise BadInputError(
            f"image {ref!r} is not on this engine (docker images lists what is); "
            "build or pull it first"
        ) from None
    tmp = out.with_name(out.name + ".part")
    try:
        with open(tmp, "wb") as f:
            # by id and unnamed: tags differ between machines, the image does not
            for chunk in client.images.get(image.id).save(named=False):
                f.write(chunk)
        tmp.replace(out)
    except (OSError, DockerException) as exc:
        tmp.unlink(missing_ok=True)
        raise BadInputError(f"cannot save image {ref!r} to {out}: {exc}") from None
    finally:
        client.close()
    return hash_file(out)


@image_group.command("hash")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def hash_command(file: Path) -> None:
    """Print FILE's image hash (sha3-256:<hex>), as the hub and agents compute it."""
    click.echo(hash_file(file))


def _chunks(path: Path, hasher: Hasher, progress: Progress, task: object) -> Iterator[bytes]:
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            hasher.update(chunk)
            progress.update(task, advance=len(chunk))  # type: ignore[arg-type]
            yield chunk


def progress_bar() -> Progress:
    """The transfer progress bar on stderr (none when stderr is no terminal)."""
    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        transient=True,
        console=Console(stderr=True),
        redirect_stdout=False,
        disable=not sys.stderr.isatty(),
    )


def upload(
    client: Client, file: Path, route: str, label: str, params: dict[str, str] | None = None
) -> dict[str, Any]:
    """Stream ``file`` to ``route`` with a progress bar, hashing it on the way; the hub's
    answer, once it names the same hash."""
    hasher = Hasher()
    with progress_bar() as progress:
        task = progress.add_task(label, total=file.stat().st_size)
        answer: dict[str, Any] = client.call(
            "POST",
            route,
            content=_chunks(file, hasher, progress, task),
            headers={"Content-Type": "application/octet-stream"},
            params=params or {},
            timeout=None,
        )
    if answer["hash"] != hasher.hash:
        raise HubError(f"the hub stored {answer['hash']} but we sent {hasher.hash}; push again")
    return answer


@image_group.command("push")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@pass_state
def push_command(state: CliState, file: Path) -> None:
    """Upload FILE to the hub's image store; print its hash."""
    client = state.client()
    answer = upload(client, file, "/v1/images", f"push {file.name}")
    sig = file.with_name(file.name + ".sig")
    if sig.exists():
        client.call(
            "PUT",
            f"/v1/images/{answer['hash']}/signatures",
            content=sig.read_bytes(),
            headers={"Content-Type": "application/json"},
        )
        click.echo(f"signature {sig.name} pushed", err=True)
    click.echo(answer["hash"])


@image_group.command("ls")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
@pass_state
def ls_command(state: CliState, output: str) -> None:
    """List the images on the hub."""
    items = state.client().call("GET", "/v1/images")["items"]
    if output == "json":
        click.echo(dump_json({"items": items}))
        return
    rows = [[i["hash"], human_bytes(i["size"]), age(i["created"])] for i in items]
    click.echo(format_table(["HASH", "SIZE", "AGE"], rows))


@image_group.command("sign")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--key",
    "key_file",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The signer's private key file.",
)
@click.option("--push", is_flag=True, help="Also upload the signature to the hub.")
@pass_state
def sign_command(state: CliState, file: Path, key_file: Path, push: bool) -> None:
    """Sign FILE's hash and size; write FILE.sig (and upload it with --push)."""
    try:
        key = load_private_key(key_file)
    except KeyFileError as exc:
        raise BadInputError(str(exc)) from None
    digest, size = hash_file(file), file.stat().st_size
    doc = sign_image(key, digest, size)
    sig = file.with_name(file.name + ".sig")
    sig.write_text(json.dumps(doc, indent=2) + "\n")
    click.echo(f"{sig}: signed {digest} by {doc['publicKey']}", err=True)
    if push:
        state.client().call(
            "PUT",
            f"/v1/images/{digest}/signatures",
            content=sig.read_bytes(),
            headers={"Content-Type": "application/json"},
        )
        click.echo("signature pushed to the hub", err=True)
    click.echo(str(sig))


@image_group.command("verify")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--pubkey", required=True, multiple=True, help="A trusted ed25519:<base64> key.")
@click.option(
    "--sig",
    "sig_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Signature file (default FILE.sig).",
)
def verify_command(file: Path, pubkey: tuple[str, ...], sig_file: Path | None) -> None:
    """Check FILE.sig against FILE's bytes and the trusted key(s); exit 1 if it fails."""
    sig = sig_file or file.with_name(file.name + ".sig")
    if not sig.exists():
        raise BadInputError(f"no signature file {sig}; make one with `gu image sign {file}`")
    try:
        doc = parse_signature(sig.read_bytes())
    except SignatureFormatError as exc:
        raise BadInputError(f"{sig}: {exc}") from None
    digest, size = hash_file(file), file.stat().st_size
    signer = verify_image(doc, digest, size, list(pubkey))
    if signer is None:
        click.echo(
            f"INVALID: {sig} is not a valid signature of {digest} by a trusted key", err=True
        )
        raise SystemExit(1)
    click.echo(f"OK: {digest} signed by {signer}")
