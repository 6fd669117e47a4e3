"""A decision that looks only at the files read (and those with a reason of their own:
rejected, settling, held back) gives what looking at every file gives: the versions in
force, the snapshot, every issue, the index kept for a restart. Random edits: valid,
broken, blank, duplicated, routes to subsets no rule defines, deletions, and rollbacks of
what Envoy refused."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers import plain_service_yaml
from tests.helpers import routes_to as vs
from tests.helpers import subsets_rule as dr
from xds_server.config.memory import ConfigMemory
from xds_server.config.store import ConfigStore

TEXTS = [
    dr("v1", "v2"),
    dr("v1"),
    vs("v1"),
    vs("v2"),
    vs("v3"),  # no rule defines v3: held back after the first load
    vs("v1", name="other"),
    plain_service_yaml("ratings"),
    "kind: [",  # broken
    "",  # blank
]
FILES = ["a.yaml", "b.yaml", "c.yaml", "d.yaml"]

step = st.one_of(
    st.tuples(st.just("write"), st.sampled_from(FILES), st.integers(0, len(TEXTS) - 1)),
    st.tuples(st.just("delete"), st.sampled_from(FILES), st.just(0)),
    st.tuples(st.just("rollback"), st.just(""), st.just(0)),
    st.tuples(st.just("release"), st.just(""), st.just(0)),
)


def _every_file(store: ConfigStore) -> ConfigStore:
    """A store that considers every file at every decision."""
    decide = store._decide
    store._decide = lambda latest, read=None: decide(latest, None)
    return store


def _state(store: ConfigStore) -> tuple:
    return (
        store.snapshot.version,
        {n: p.digest for n, p in store.accepted.items()},
        [str(i) for i in store.all_issues()],
        sorted(store.rejected),
    )


@settings(max_examples=40, deadline=None)
@given(st.lists(step, min_size=1, max_size=10))
def test_deciding_from_the_files_read_equals_deciding_from_all(steps) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        mesh = Path(tmp)
        (mesh / "services.yaml").write_text(plain_service_yaml("reviews"))
        (mesh / "a.yaml").write_text(TEXTS[0])
        (mesh / "b.yaml").write_text(TEXTS[2])
        state = Path(tmp) / ".state"
        quick = ConfigStore(mesh, memory=ConfigMemory(state))
        full = _every_file(ConfigStore(mesh))
        for store in (quick, full):
            store.load_all()
        versions = [quick.snapshot.version]
        for clock, (what, name, index) in enumerate(steps, start=1):
            path = mesh / name
            if what == "write":
                path.write_text(TEXTS[index])
                os.utime(path, ns=(clock * 10**9, clock * 10**9))
            elif what == "delete" and path.exists():
                path.unlink()
            for store in (quick, full):
                if what == "rollback" and len(versions) > 1:
                    store.rollback(versions[-2], versions[-1], "refused")
                    store.update()
                elif what == "release":
                    store.release_suspect()
                    store.update()
                elif what in ("write", "delete"):
                    store.update([path])
            assert _state(quick) == _state(full)
            index = json.loads((state / "config.json").read_text())
            assert index["accepted"] == {
                n: [p.digest, p.mtime_ns] for n, p in quick.accepted.items()
            }
            versions.append(quick.snapshot.version)
