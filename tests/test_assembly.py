"""A snapshot derived from the previous one by what changed equals one assembled from
nothing: the resources, the duplicate warnings, the kind index, the version, the change
set and the cross-check findings, under random edits, deletions, duplicates across files,
touches (a new modification time) and mesh configs."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import example, given, settings
from hypothesis import strategies as st

from translators import model
from xds_server.config.assembly import assemble, assemble_after
from xds_server.config.cross_checks import CrossChecks, cross_check
from xds_server.config.loader import ParsedFile, parse_file
from xds_server.config.store import change_set

ENTRY = """apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {name: entry-%(name)d, namespace: default}
spec:
  hosts: [ext-%(name)d.example.com]
  ports: [{number: %(port)d, name: %(protocol)s, protocol: %(protocol)s}]
  resolution: DNS
"""
ROUTES = """apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: routes-%(name)d, namespace: default}
spec:
  hosts: [ext-%(host)d.example.com]
  http: [{route: [{destination: {host: ext-%(host)d.example.com}}]}]
"""
MESH = """apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |
    connectTimeout: %(port)ds
"""
FILES = 12


def _file(path: str, kind: str, name: int, port: int, mtime: int) -> ParsedFile:
    template = {"entry": ENTRY, "routes": ROUTES, "mesh": MESH}[kind]
    values = {"name": name, "host": (name + port) % 4, "port": port, "protocol": "HTTP"}
    if port % 3 == 0:
        values["protocol"] = "TCP"
    parsed = parse_file(path, template % values, mtime)
    assert parsed.ok, [str(i) for i in parsed.issues]
    return parsed


step = st.one_of(
    st.tuples(
        st.just("write"),
        st.integers(0, FILES - 1),
        st.sampled_from(["entry", "entry", "routes", "mesh"]),
        st.integers(0, 5),  # names collide across files: duplicates
        st.integers(80, 83),
    ),
    st.tuples(st.just("delete"), st.integers(0, FILES - 1), st.just(""), st.just(0), st.just(0)),
    st.tuples(st.just("touch"), st.integers(0, FILES - 1), st.just(""), st.just(0), st.just(0)),
)


def _same(derived, fresh) -> None:
    a, b = derived.snapshot, fresh.snapshot
    assert [id(r) for r in a.resources] == [id(r) for r in b.resources]
    assert a.mesh == b.mesh
    assert a.version == b.version
    kinds = {r.kind for r in b.resources} | {r.kind for r in a.resources}
    for kind in kinds:
        assert [id(r) for r in a.of_kind(kind)] == [id(r) for r in b.of_kind(kind)]
    assert derived.duplicates == fresh.duplicates


@settings(max_examples=60, deadline=None)
@given(st.lists(step, min_size=1, max_size=12))
# Found by this test: a file written again with the same content brought new objects
# that no change reported, and a TCP port warning then outlived its cause.
@example(
    [
        ("write", 0, "entry", 0, 80),
        ("write", 0, "entry", 1, 81),
        ("write", 1, "entry", 0, 81),
        ("write", 1, "entry", 0, 81),
        ("delete", 1, "", 0, 0),
    ]
)
def test_a_derived_assembly_equals_one_from_nothing(steps) -> None:
    files: dict[str, ParsedFile] = {
        f"f{i}.yaml": _file(f"f{i}.yaml", "entry", i, 80, i) for i in range(4)
    }
    assembly = assemble(dict(files))
    _ = assembly.snapshot.version, assembly.snapshot.of_kind(model.SERVICE_ENTRY)
    checks = CrossChecks().after(assembly.snapshot, None)
    clock = 100
    for what, index, kind, name, port in steps:
        clock += 1
        path = f"f{index}.yaml"
        if what == "write":
            files[path] = _file(path, kind, name, port, clock)
        elif what == "delete":
            files.pop(path, None)
        elif path in files:
            files[path] = replace(files[path], mtime_ns=clock)
        previous = assembly
        assembly = assemble_after(previous, dict(files))
        fresh = assemble(dict(files))
        _same(assembly, fresh)
        assert change_set(previous.snapshot, assembly.snapshot) == change_set(
            previous.snapshot, fresh.snapshot
        )
        checks = checks.after(assembly.snapshot, change_set(previous.snapshot, assembly.snapshot))
        assert checks.findings == cross_check(fresh.snapshot)


def test_a_snapshot_remembers_what_it_was_derived_from() -> None:
    files = {f"f{i}.yaml": _file(f"f{i}.yaml", "entry", i, 80, i) for i in range(100)}
    first = assemble(files)
    second = assemble_after(first, {**files, "f3.yaml": _file("f3.yaml", "entry", 3, 81, 200)})
    third = assemble_after(
        second, {**second.files, "new.yaml": _file("new.yaml", "entry", 500, 80, 201)}
    )
    removed, added = third.snapshot.changes_since(first.snapshot)
    assert [r.name for r in removed] == ["entry-3"]
    assert sorted(r.name for r in added) == ["entry-3", "entry-500"]
    assert third.snapshot.changes_since(model.MeshConfig()) is None
