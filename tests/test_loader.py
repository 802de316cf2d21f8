"""Loading manifests: every kind loads; every mistake is named by file:line:column.

The fixtures under tests/fixtures/manifests/ are real files a user could have
written; the line and column numbers asserted here are the ones in those files.
"""

from __future__ import annotations

import io
import textwrap
from pathlib import Path

import pytest

from specs.kinds import App, ImagePolicy, Priority, Session, VirtualNetwork
from specs.loader import Document, ManifestError, ManifestErrors, load_paths, load_text

FIXTURES = Path(__file__).parent / "fixtures" / "manifests"
GOOD = FIXTURES / "good"
BAD = FIXTURES / "bad"


def errors_of(paths: list[str | Path]) -> list[str]:
    """The error lines a load of ``paths`` reports (it must fail)."""
    with pytest.raises(ManifestErrors) as info:
        load_paths(paths)
    return [str(e) for e in info.value.errors]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


PRIORITY = """\
apiVersion: gu/v1
kind: Priority
metadata:
  name: {name}
spec:
  value: 10
"""


# ---------------------------------------------------------------- good input


def test_a_folder_of_every_user_kind_loads_in_sorted_order() -> None:
    docs = load_paths([GOOD])
    assert [(d.kind, d.name) for d in docs] == [
        ("App", "render-farm"),
        ("VirtualNetwork", "render-net"),
        ("ImagePolicy", "render-farm"),
        ("Priority", "interactive"),
        ("Session", "render-frames"),
    ]
    assert [type(d.obj) for d in docs] == [App, VirtualNetwork, ImagePolicy, Priority, Session]
    assert {d.kind for d in docs} == {"App", "ImagePolicy", "Priority", "VirtualNetwork", "Session"}


def test_documents_keep_the_path_as_given_and_where_they_start() -> None:
    docs = load_paths([str(GOOD)])
    app, _, policy, priority, session = docs
    assert app.path == str(GOOD / "app.yaml")
    assert (app.index, app.line) == (0, 2)  # line 1 is a comment
    assert (policy.path, policy.index, policy.line) == (str(GOOD / "policy.yaml"), 0, 2)
    assert (priority.path, priority.index, priority.line) == (str(GOOD / "policy.yaml"), 1, 16)
    assert session.path == str(GOOD / "sessions" / "render.yaml")


def test_a_relative_path_stays_relative(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(FIXTURES)
    docs = load_paths(["good/policy.yaml"])
    assert [d.path for d in docs] == ["good/policy.yaml", "good/policy.yaml"]


def test_data_is_plain_python_as_written() -> None:
    session = load_paths([GOOD / "sessions" / "render.yaml"])[0]
    assert type(session.data) is dict
    workload = session.data["spec"]["workload"]
    assert type(workload) is dict and type(workload["args"]) is list
    assert workload["args"] == ["-b", "scene.blend", "-a"]
    assert workload["resources"] == {"cpu": 2.5, "memoryMiB": 2048}
    assert "status" not in session.data  # no defaults filled into data
    assert isinstance(session.obj, Session)
    assert session.obj.spec.providers.count == 2


def test_multi_document_text_skips_empty_documents() -> None:
    text = (
        "---\n"
        + PRIORITY.format(name="a")
        + "---\n# nothing here\n---\n"
        + PRIORITY.format(name="b")
    )
    docs = load_text(text, "stream.yaml")
    assert [(d.name, d.index) for d in docs] == [("a", 0), ("b", 2)]
    assert all(d.path == "stream.yaml" for d in docs)


def test_load_text_names_stdin_by_default() -> None:
    with pytest.raises(ManifestErrors) as info:
        load_text("kind: App\n")
    assert str(info.value.errors[0]).startswith("<stdin>:1:1: apiVersion: ")


def test_dash_reads_standard_input(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(PRIORITY.format(name="piped")))
    docs = load_paths(["-", GOOD / "app.yaml"])
    assert [(d.path, d.name) for d in docs] == [
        ("<stdin>", "piped"),
        (str(GOOD / "app.yaml"), "render-farm"),
    ]


def test_folder_recursion_ignores_other_files_and_hidden_folders(tmp_path: Path) -> None:
    write(tmp_path / "b.yaml", PRIORITY.format(name="b"))
    write(tmp_path / "a" / "deep" / "c.yml", PRIORITY.format(name="c"))
    write(tmp_path / "a.yaml", PRIORITY.format(name="a"))
    write(tmp_path / "README.md", "not: [yaml")
    write(tmp_path / "notes.txt", "kind: Nonsense")
    write(tmp_path / ".git" / "config.yaml", "this: is: not: valid")
    write(tmp_path / ".hidden.yaml", "kind: Nonsense")
    docs = load_paths([tmp_path])
    assert [d.name for d in docs] == ["c", "a", "b"]  # a/deep/c.yml, a.yaml, b.yaml
    assert docs[0].path == str(tmp_path / "a" / "deep" / "c.yml")


def test_an_explicit_file_loads_whatever_its_suffix(tmp_path: Path) -> None:
    path = write(tmp_path / "priority.txt", PRIORITY.format(name="p"))
    assert [d.name for d in load_paths([path])] == ["p"]


def test_a_file_named_twice_is_loaded_once(tmp_path: Path) -> None:
    path = write(tmp_path / "p.yaml", PRIORITY.format(name="p"))
    assert len(load_paths([tmp_path, path])) == 1


def test_a_lone_path_is_accepted_as_well_as_a_list() -> None:
    assert len(load_paths(GOOD / "app.yaml")) == 1  # type: ignore[arg-type]


def test_document_is_frozen() -> None:
    doc: Document = load_paths([GOOD / "app.yaml"])[0]
    with pytest.raises(AttributeError):
        doc.name = "other"  # type: ignore[misc]


# ---------------------------------------------------------------- bad input


def test_a_bad_value_is_reported_at_its_line_and_column() -> None:
    path = str(BAD / "cpu.yaml")
    assert errors_of([path]) == [
        f"{path}:11:22: spec.workload.args[2]: must be a string (got 3); put it in quotes",
        f"{path}:13:12: spec.workload.resources.cpu: must be > 0",
    ]


def test_manifest_error_formats_path_line_column_field_message() -> None:
    err = ManifestError("examples/bad.yaml", 7, 5, "spec.workload.resources.cpu", "must be > 0")
    assert str(err) == "examples/bad.yaml:7:5: spec.workload.resources.cpu: must be > 0"
    assert str(ManifestError("a.yaml", 1, 1, "", "oops")) == "a.yaml:1:1: oops"
    assert str(ManifestError("a.yaml", 0, 0, "", "no such file or folder")) == (
        "a.yaml: no such file or folder"
    )


def test_an_unknown_field_is_reported_at_its_key_with_a_suggestion() -> None:
    path = str(BAD / "unknown-field.yaml")
    assert errors_of([path]) == [
        f"{path}:8:3: spec.onPreemted: unknown field 'onPreemted'; did you mean 'onPreempted'?"
    ]


def test_an_unknown_field_far_from_any_name_gets_no_suggestion() -> None:
    text = PRIORITY.format(name="p") + "  zzzzzz: 1\n"
    with pytest.raises(ManifestErrors) as info:
        load_text(text, "p.yaml")
    assert str(info.value) == "p.yaml:7:3: spec.zzzzzz: unknown field 'zzzzzz'"


def test_an_unknown_kind_lists_the_known_ones() -> None:
    path = str(BAD / "unknown-kind.yaml")
    assert errors_of([path]) == [
        f"{path}:2:7: kind: unknown kind 'Sesion'; known kinds: App, ImagePolicy, Priority, "
        "Session, VirtualNetwork; did you mean 'Session'?"
    ]


def test_a_system_kind_cannot_be_applied() -> None:
    path = str(BAD / "system-kind.yaml")
    assert errors_of([path]) == [
        f"{path}:2:7: kind: Provider is written by the hub and cannot be applied"
    ]


def test_api_version_must_be_gu_v1() -> None:
    text = PRIORITY.format(name="p").replace("gu/v1", "v1")
    with pytest.raises(ManifestErrors) as info:
        load_text(text, "p.yaml")
    assert str(info.value) == "p.yaml:1:13: apiVersion: must be gu/v1 (got 'v1')"


def test_missing_required_fields_point_at_their_mapping() -> None:
    text = "apiVersion: gu/v1\nkind: Session\nmetadata:\n  name: s\nspec:\n  app: a\n"
    with pytest.raises(ManifestErrors) as info:
        load_text(text, "s.yaml")
    assert str(info.value) == "s.yaml:6:3: spec.workload: required field is missing"


def test_a_document_that_is_not_a_mapping_is_refused() -> None:
    with pytest.raises(ManifestErrors) as info:
        load_text("---\n- a\n- b\n", "list.yaml")
    assert str(info.value) == "list.yaml:2:1: a manifest must be a mapping, not a list"


def test_humane_messages_for_common_mistakes() -> None:
    text = textwrap.dedent(
        """\
        apiVersion: gu/v1
        kind: Session
        metadata:
          name: Bad_Name
        spec:
          app: demo
          providers:
            count: many
            nodes: []
          suspend: maybe
          workload:
            runtime: podman
            image:
              hash: sha3-256:abc
            resources:
              memoryMiB: -1
        """
    )
    with pytest.raises(ManifestErrors) as info:
        load_text(text, "s.yaml")
    assert str(info.value).splitlines() == [
        "s.yaml:4:9: metadata.name: must be 1-63 lower-case letters, digits, '-' or '.', "
        "starting and ending with a letter or digit",
        "s.yaml:8:12: spec.providers.count: must be an integer (got 'many')",
        "s.yaml:9:12: spec.providers.nodes: give at least one node id, or leave nodes out",
        "s.yaml:10:12: spec.suspend: must be true or false (got 'maybe')",
        "s.yaml:12:14: spec.workload.runtime: must be one of: native, docker, vm (got 'podman')",
        "s.yaml:14:13: spec.workload.image.hash: must be 'sha3-256:' followed by 64 lower-case "
        "hex digits",
        "s.yaml:16:18: spec.workload.resources.memoryMiB: must be > 0",
    ]


def test_a_validator_message_comes_without_pydantic_prefix_at_the_field() -> None:
    text = textwrap.dedent(
        """\
        apiVersion: gu/v1
        kind: VirtualNetwork
        metadata: {name: net}
        spec:
          cidr: 10.0.0.0/24
          multicast: {group: 10.0.0.1, port: 5000}
        """
    )
    with pytest.raises(ManifestErrors) as info:
        load_text(text, "n.yaml")
    assert str(info.value) == (
        "n.yaml:6:22: spec.multicast.group: 10.0.0.1 is not a multicast address (224.0.0.0/4)"
    )


def test_too_short_and_bounds_messages() -> None:
    text = textwrap.dedent(
        """\
        apiVersion: gu/v1
        kind: ImagePolicy
        metadata: {name: p}
        spec:
          apps: []
        ---
        apiVersion: gu/v1
        kind: Priority
        metadata: {name: p}
        spec: {value: 2000000000}
        """
    )
    with pytest.raises(ManifestErrors) as info:
        load_text(text, "x.yaml")
    assert str(info.value).splitlines() == [
        "x.yaml:5:9: spec.apps: must have at least 1 item",
        "x.yaml:10:15: spec.value: must be <= 1000000000",
    ]


def test_hub_owned_fields_are_refused() -> None:
    path = str(BAD / "hub-owned.yaml")
    assert errors_of([path]) == [
        f"{path}:5:3: metadata.resourceVersion: is set by the hub; remove it",
        f"{path}:7:1: status: is set by the hub; remove it",
    ]


@pytest.mark.parametrize(
    "field", ["uid", "generation", "resourceVersion", "creationTimestamp", "deletionTimestamp"]
)
def test_every_store_owned_metadata_field_is_refused(field: str) -> None:
    text = PRIORITY.format(name="p").replace("  name: p\n", f"  name: p\n  {field}: '1'\n")
    with pytest.raises(ManifestErrors) as info:
        load_text(text, "p.yaml")
    assert str(info.value) == f"p.yaml:5:3: metadata.{field}: is set by the hub; remove it"


def test_a_duplicate_key_is_reported_where_it_repeats() -> None:
    path = str(BAD / "duplicate-key.yaml")
    assert errors_of([path]) == [f"{path}:7:3: spec.value: duplicate key 'value'"]


def test_the_same_kind_and_name_in_two_files_names_both_places() -> None:
    first = str(FIXTURES / "duplicate" / "first.yaml")
    second = str(FIXTURES / "duplicate" / "second.yaml")
    assert errors_of([FIXTURES / "duplicate"]) == [
        f"{second}:11:9: metadata.name: Priority/batch is defined twice; "
        f"the first is at {first}:4:9"
    ]


def test_the_same_name_in_two_kinds_is_fine() -> None:
    docs = load_paths([GOOD])
    assert {d.name for d in docs if d.kind in ("App", "ImagePolicy")} == {"render-farm"}


def test_a_yaml_syntax_error_has_a_line_and_column() -> None:
    path = str(BAD / "syntax.yaml")
    [error] = errors_of([path])
    assert error.startswith(f"{path}:7:6: invalid YAML: ")


def test_a_bad_timestamp_is_reported_not_raised() -> None:
    text = PRIORITY.format(name="p") + "  description: 2024-13-45\n"
    with pytest.raises(ManifestErrors) as info:
        load_text(text, "p.yaml")
    assert str(info.value) == "p.yaml:7:16: invalid value: month must be in 1..12"


def test_an_unknown_yaml_tag_is_reported() -> None:
    with pytest.raises(ManifestErrors) as info:
        load_text("apiVersion: !vault gu/v1\n", "t.yaml")
    assert str(info.value).startswith("t.yaml:1:13: invalid YAML: ")
    assert "'!vault'" in str(info.value)


def test_a_missing_path_is_an_error_not_an_exception(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope")
    assert errors_of([missing]) == [f"{missing}: no such file or folder"]


def test_text_that_is_not_utf8_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"apiVersion: gu/v1\nkind: App\nmetadata: {name: caf\xe9}\n")
    [error] = errors_of([path])
    assert error.startswith(f"{path}:3:21: not UTF-8 text")


def test_all_errors_of_all_files_come_in_one_exception() -> None:
    errors = errors_of([BAD, GOOD])
    files = {e.split(":")[0] for e in errors}
    assert files == {str(p) for p in BAD.iterdir()}
    assert len(errors) == 9
    # sorted by file, then by position
    assert errors == sorted(errors, key=lambda e: (e.split(":")[0], *map(int, e.split(":")[1:3])))


def test_one_bad_document_fails_the_whole_load(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", PRIORITY.format(name="fine"))
    write(tmp_path / "b.yaml", PRIORITY.format(name="Not-Fine"))
    with pytest.raises(ManifestErrors) as info:
        load_paths([tmp_path])
    assert len(info.value.errors) == 1
    assert str(info.value).startswith(f"{tmp_path / 'b.yaml'}:4:9: metadata.name: ")


def test_errors_after_a_bad_document_in_the_same_file_are_still_found() -> None:
    text = (
        PRIORITY.format(name="p").replace("value: 10", "value: x")
        + "---\n"
        + PRIORITY.format(name="q").replace("value: 10", "value: y")
    )
    with pytest.raises(ManifestErrors) as info:
        load_text(text, "p.yaml")
    assert [(e.line, e.field) for e in info.value.errors] == [(6, "spec.value"), (13, "spec.value")]


def test_a_yaml_version_directive_is_accepted() -> None:
    docs = load_text("%YAML 1.2\n---\n" + PRIORITY.format(name="p"), "p.yaml")
    assert [(d.name, d.line) for d in docs] == [("p", 3)]


def test_a_mapping_key_that_is_not_a_string_is_reported_at_the_key() -> None:
    text = textwrap.dedent(
        """\
        apiVersion: gu/v1
        kind: Session
        metadata: {name: s}
        spec:
          app: a
          workload:
            runtime: native
            image: {hash: "sha3-256:%s"}
            env:
              8080: http
        """
        % ("0" * 64)
    )
    with pytest.raises(ManifestErrors) as info:
        load_text(text, "s.yaml")
    assert str(info.value) == (
        "s.yaml:10:7: spec.workload.env[8080]: keys must be strings (got 8080); put it in quotes"
    )


@pytest.mark.parametrize("runtime", ["native", "docker"])
def test_a_session_that_is_not_a_vm_naming_a_network_is_refused_at_its_line(
    runtime: str,
) -> None:
    text = textwrap.dedent(
        f"""\
        apiVersion: gu/v1
        kind: Session
        metadata:
          name: s
        spec:
          app: demo
          workload:
            runtime: {runtime}
            image:
              hash: sha3-256:{"ab" * 32}
          network: lab
        """
    )
    with pytest.raises(ManifestErrors) as caught:
        load_text(text, "s.yaml")
    said = str(caught.value)
    assert said.startswith("s.yaml:11:12: spec.network: only runtime: vm workloads"), said
    assert f"runtime {runtime} has no network device yet" in said
    vm = text.replace(f"runtime: {runtime}", "runtime: vm")
    assert load_text(vm, "s.yaml")[0].data["spec"]["network"] == "lab"
