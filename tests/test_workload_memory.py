"""The state file of remembered workloads: what it keeps, and files it must survive."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import sidecar
from xds_server.workload_memory import WorkloadMemory, from_json, to_json


def test_round_trip(tmp_path: Path):
    proxies = [sidecar("r1", "reviews", ip="127.0.0.2"), sidecar("c", "caller")]
    memory = WorkloadMemory(tmp_path)
    memory.save(proxies)
    assert sorted(p.node_id for p in WorkloadMemory(tmp_path).load()) == ["c", "r1"]
    assert from_json(to_json(proxies)) == sorted(proxies, key=lambda p: p.node_id)


@pytest.mark.parametrize(
    "text",
    [
        '{"format":1,"workloads":5}',
        '{"format":1,"workloads":null}',
        '{"format":1,"workloads":[{"node_id":"x","labels":[1]}]}',
        '{"format":1,"workloads":[5]}',
        "[" * 200_000 + "]" * 200_000,
        "\xff\xfe",
        '{"format":2}',
    ],
)
def test_a_corrupt_file_is_ignored_with_a_warning(tmp_path: Path, text: str, caplog):
    (tmp_path / "workloads.json").write_text(text, errors="surrogateescape")
    assert WorkloadMemory(tmp_path).load() == []
    assert "ignoring" in caplog.text


def test_an_entry_a_node_could_not_send_is_refused(tmp_path: Path, caplog):
    good = to_json([sidecar("r1", "reviews")])
    (tmp_path / "workloads.json").write_text(good.replace('"ip": "127.0.0.1"', '"ip": 5'))
    assert WorkloadMemory(tmp_path).load() == []
    assert "ip is not a string" in caplog.text
