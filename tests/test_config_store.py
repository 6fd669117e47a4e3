"""Which version of each file is in force, decided over the whole directory: duplicates,
held-back references, settle windows, rollbacks, and files no one writes on purpose."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import plain_service_yaml
from tests.helpers import routes_to as vs
from tests.helpers import subsets_rule as dr
from translators import model
from xds_server.config.memory import ConfigMemory
from xds_server.config.store import ConfigStore


def subset(store: ConfigStore) -> str:
    (vs,) = store.snapshot.of_kind(model.VIRTUAL_SERVICE)
    return vs.spec.http[0].route[0].destination.subset


def subsets(store: ConfigStore) -> list[str]:
    (rule,) = store.snapshot.of_kind(model.DESTINATION_RULE)
    return [s.name for s in rule.spec.subsets]


def errors(store: ConfigStore) -> list[str]:
    return [str(i) for i in store.all_issues() if i.severity == "error"]


def loaded(mesh: Path, subsets: tuple[str, ...], routed: str, **options) -> ConfigStore:
    """A store that loaded `mesh` with a rule defining `subsets` and a route to `routed`."""
    write(mesh / "dr.yaml", dr(*subsets))
    write(mesh / "vs.yaml", vs(routed))
    store = ConfigStore(mesh, **options)
    store.load_all()
    return store


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def write(path: Path, text: str, mtime: int | None = None) -> Path:
    path.write_text(text)
    if mtime is not None:
        os.utime(path, ns=(mtime * 10**9, mtime * 10**9))
    return path


@pytest.fixture
def mesh(tmp_path: Path) -> Path:
    write(tmp_path / "services.yaml", plain_service_yaml("reviews"))
    return tmp_path


# ---- duplicates ---------------------------------------------------------------------


def test_the_most_recently_modified_duplicate_wins_and_deleting_it_restores_the_other(mesh):
    write(mesh / "a.yaml", vs("v1"), mtime=100)
    write(mesh / "b.yaml", vs("v2"), mtime=200)
    write(mesh / "dr.yaml", dr("v1", "v2"))
    store = ConfigStore(mesh)
    store.load_all()
    assert subset(store) == "v2"
    (warning,) = [i for i in store.all_issues() if "also defined" in i.message]
    assert warning.file.endswith("a.yaml") and warning.severity == "warning"
    assert "b.yaml:1" in warning.message
    (mesh / "b.yaml").unlink()
    store.update([mesh / "b.yaml"])
    assert subset(store) == "v1"
    assert not store.all_issues()


def test_duplicates_resolve_the_same_after_a_restart_and_in_validate(mesh):
    write(mesh / "a.yaml", vs("v1"), mtime=300)
    write(mesh / "b.yaml", vs("v2"), mtime=200)
    write(mesh / "dr.yaml", dr("v1", "v2"))
    live = ConfigStore(mesh)
    live.load_all()
    write(mesh / "b.yaml", vs("v2"), mtime=400)  # `kubectl apply -f b.yaml` again
    live.update([mesh / "b.yaml"])
    fresh = ConfigStore(mesh)
    fresh.load_all()
    assert subset(live) == subset(fresh) == "v2"
    assert live.snapshot.version == fresh.snapshot.version


def test_rename_and_replace_end_with_the_file_on_disk(mesh):
    write(mesh / "dr.yaml", dr("v1", "v2"))
    write(mesh / "old.yaml", vs("v1"))
    store = ConfigStore(mesh)
    store.load_all()
    os.rename(mesh / "old.yaml", mesh / "new.yaml")  # mv
    store.update([mesh / "old.yaml", mesh / "new.yaml"])
    assert subset(store) == "v1" and not store.all_issues()
    (mesh / "new.yaml").unlink()  # rm, then cp another sample
    store.update([mesh / "new.yaml"])
    write(mesh / "sample.yaml", vs("v2"))
    store.update([mesh / "sample.yaml"])
    assert subset(store) == "v2" and not store.all_issues()


# ---- references held back until they resolve -----------------------------------------


def test_a_route_to_a_subset_not_defined_yet_is_held_until_the_rule_defines_it(mesh):
    store = loaded(mesh, ("v1", "v2"), "v1")
    write(mesh / "vs.yaml", vs("v3"))  # the wrong order: the route first
    store.update([mesh / "vs.yaml"])
    assert subset(store) == "v1"
    (held,) = errors(store)
    assert "vs.yaml:8: error" in held and "held back" in held and '"v3"' in held
    write(mesh / "dr.yaml", dr("v1", "v2", "v3"))
    store.update([mesh / "dr.yaml"])
    assert subset(store) == "v3" and subsets(store) == ["v1", "v2", "v3"]
    assert not errors(store)


def test_a_rule_that_drops_a_subset_in_use_is_held_until_no_route_uses_it(mesh):
    store = loaded(mesh, ("v1", "v2"), "v2")
    write(mesh / "dr.yaml", dr("v1"))  # the wrong order: the rule first
    store.update([mesh / "dr.yaml"])
    assert subsets(store) == ["v1", "v2"]
    (held,) = errors(store)
    assert "dr.yaml:1: error" in held and "VirtualService default/reviews" in held
    assert "vs.yaml:1" in held
    write(mesh / "vs.yaml", vs("v1"))
    store.update([mesh / "vs.yaml"])
    assert subset(store) == "v1" and subsets(store) == ["v1"]
    assert not errors(store)


def test_deleting_a_rule_in_use_is_held_too(mesh):
    store = loaded(mesh, ("v1",), "v1")
    (mesh / "dr.yaml").unlink()
    store.update([mesh / "dr.yaml"])
    assert subsets(store) == ["v1"]
    (mesh / "vs.yaml").unlink()
    store.update([mesh / "vs.yaml"])
    assert not store.snapshot.of_kind(model.DESTINATION_RULE)
    assert not store.all_issues()


def test_on_a_fresh_start_a_dangling_subset_is_an_error_and_the_route_applies(mesh):
    store = loaded(mesh, ("v1",), "v9")
    assert subset(store) == "v9"
    (error,) = errors(store)
    assert 'unknown subset "v9"' in error and "held" not in error


def test_an_unrelated_edit_is_not_held_by_a_dangling_reference_already_there(mesh):
    store = loaded(mesh, ("v1",), "v9")
    write(mesh / "services.yaml", plain_service_yaml("reviews", "ratings"))
    store.update([mesh / "services.yaml"])
    assert len(store.snapshot.of_kind(model.SERVICE)) == 2


# ---- writes in progress --------------------------------------------------------------


def test_a_truncated_file_keeps_its_previous_version_for_the_settle_window(mesh):
    clock = Clock()
    store = loaded(mesh, ("v1", "v2"), "v1", settle_seconds=1.0, clock=clock)
    write(mesh / "vs.yaml", "")  # `generate > vs.yaml` truncates first
    store.update([mesh / "vs.yaml"])
    assert subset(store) == "v1" and store.next_deadline() == 1001.0
    assert not errors(store)
    clock.now += 0.2
    write(mesh / "vs.yaml", vs("v2"))  # ... and writes 200 ms later
    store.update([mesh / "vs.yaml"])
    assert subset(store) == "v2" and store.next_deadline() is None


def test_a_file_left_empty_counts_once_the_window_ends(mesh):
    clock = Clock()
    store = loaded(mesh, ("v1",), "v1", settle_seconds=1.0, clock=clock)
    write(mesh / "vs.yaml", "# nothing here any more\n")
    store.update([mesh / "vs.yaml"])
    assert store.snapshot.of_kind(model.VIRTUAL_SERVICE)
    clock.now += 1.5
    store.update()
    assert not store.snapshot.of_kind(model.VIRTUAL_SERVICE)


def test_a_half_written_file_waits_then_reports_its_error_and_keeps_the_last_good(mesh):
    clock = Clock()
    store = loaded(mesh, ("v1",), "v1", settle_seconds=1.0, clock=clock)
    write(mesh / "vs.yaml", (vs("v1"))[:70] + "  [")
    store.update([mesh / "vs.yaml"])
    assert not errors(store)
    clock.now += 2
    store.update()
    assert subset(store) == "v1"
    assert any("invalid YAML" in e for e in errors(store))


# ---- Envoy's rejections --------------------------------------------------------------


def test_rollback_holds_the_changed_files_until_they_change_again(mesh):
    store = loaded(mesh, ("v1", "v2"), "v1")
    good = store.snapshot.version
    write(mesh / "vs.yaml", vs("v2"))
    bad = store.update([mesh / "vs.yaml"]).version
    assert store.rollback(good, bad, "Proto constraint validation failed") == [
        str(mesh / "vs.yaml")
    ]
    assert store.update().version == good
    (error,) = errors(store)
    assert "vs.yaml:1: error: VirtualService default/reviews" in error
    assert "Envoy rejected" in error and "Proto constraint" in error
    assert store.rollback(good, bad, "again") == []  # another proxy's NACK: nothing new
    write(mesh / "vs.yaml", vs("v2") + "  - route: [{destination: {host: reviews}}]\n")
    store.update([mesh / "vs.yaml"])
    assert store.snapshot.version not in (good, bad) and not errors(store)


def test_rollback_skips_a_file_edited_again_since_the_rejected_push(mesh):
    write(mesh / "vs.yaml", vs("v1"))
    write(mesh / "dr.yaml", dr("v1", "v2"))
    store = ConfigStore(mesh)
    good = store.load_all().version
    write(mesh / "vs.yaml", vs("v2"))
    bad = store.update([mesh / "vs.yaml"]).version
    write(mesh / "vs.yaml", vs("v1") + "  - route: [{destination: {host: reviews}}]\n")
    store.update([mesh / "vs.yaml"])
    assert store.rollback(good, bad, "rejected") == []


# ---- files no one writes on purpose --------------------------------------------------


def test_a_fifo_a_device_and_an_oversized_file_are_refused_without_blocking(mesh):
    os.mkfifo(mesh / "fifo.yaml")
    os.symlink("/dev/zero", mesh / "zero.yaml")
    write(mesh / "big.yaml", "# " + "x" * 2000 + "\n")
    store = ConfigStore(mesh, max_file_bytes=1000)
    store.load_all()
    found = {Path(i.file).name: i.message for i in store.all_issues()}
    assert "FIFO" in found["fifo.yaml"]
    assert "character device" in found["zero.yaml"]
    assert "over the 1000-byte limit" in found["big.yaml"]


def test_hidden_files_and_backups_are_never_config_at_start_or_on_change(mesh):
    write(mesh / ".vs.yaml", vs("v1"))
    (mesh / ".git").mkdir()
    write(mesh / ".git" / "x.yaml", vs("v1"))
    write(mesh / "vs.yaml~", vs("v1"))
    store = ConfigStore(mesh)
    store.load_all()
    store.update([mesh / ".vs.yaml", mesh / ".git" / "x.yaml", mesh / "vs.yaml~"])
    assert not store.snapshot.of_kind(model.VIRTUAL_SERVICE)
    assert list(store.latest) == [str(mesh / "services.yaml")]


@pytest.mark.parametrize(
    ("text", "field", "words"),
    [
        ("apiVersion: v1\nkind: Service\nmetadata: 1\nspec: {}\n", "metadata", "mapping"),
        (
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: istio, namespace: istio-system}\n"
            "data: [1, 2]\n",
            "data",
            "mapping",
        ),
        ("apiVersion: v1\nkind: Service\nmetadata: {name: [a]}\n", "metadata.name", "string"),
        ("apiVersion: v1\nkind: Service\nmetadata: {name: A_b}\n", "metadata.name", "name"),
        ("a: " + "[" * 600 + "]" * 600 + "\n", "", "nest"),
        ("a: &a [*a]\n", "", "refers to itself"),
    ],
)
def test_odd_documents_are_file_line_errors(mesh, text, field, words):
    write(mesh / "odd.yaml", text)
    store = ConfigStore(mesh)
    store.load_all()
    (issue,) = [i for i in store.all_issues() if i.file.endswith("odd.yaml")]
    assert issue.severity == "error" and issue.field == field and words in issue.message


def test_an_alias_bomb_is_refused_quickly(mesh):
    bomb = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    previous = "a"
    for name in "bcdefghi":
        bomb += f"{name}: &{name} [" + ",".join([f"*{previous}"] * 9) + "]\n"
        previous = name
    write(mesh / "bomb.yaml", bomb)
    store = ConfigStore(mesh)
    store.load_all()
    (issue,) = [i for i in store.all_issues() if i.file.endswith("bomb.yaml")]
    assert "aliases expand to more than" in issue.message


def test_files_rolled_back_together_are_retried_one_at_a_time(mesh):
    store = loaded(mesh, ("v1", "v2"), "v1")
    good = store.snapshot.version
    write(mesh / "dr.yaml", dr("v1", "v2", "v3"))  # innocent
    write(mesh / "vs.yaml", vs("v2"))  # the one Envoy refuses
    bad = store.update([mesh / "dr.yaml", mesh / "vs.yaml"]).version
    assert len(store.rollback(good, bad, "rejected")) == 2
    assert store.update().version == good
    assert all("retried alone" in e for e in errors(store))
    assert store.release_suspect() == str(mesh / "dr.yaml")
    innocent = store.update().version
    assert subsets(store) == ["v1", "v2", "v3"] and subset(store) == "v1"
    assert store.release_suspect() == str(mesh / "vs.yaml")
    culprit = store.update().version
    assert store.rollback(innocent, culprit, "rejected again") == [str(mesh / "vs.yaml")]
    assert store.update().version == innocent and not store.has_suspects()
    (error,) = errors(store)
    assert "vs.yaml" in error and "rejected again" in error and "retried" not in error


def test_a_released_suspect_is_retried_by_the_next_decision_whatever_it_reads(mesh):
    store = loaded(mesh, ("v1", "v2"), "v1")
    good = store.snapshot.version
    write(mesh / "dr.yaml", dr("v1", "v2", "v3"))
    write(mesh / "vs.yaml", vs("v2"))
    bad = store.update([mesh / "dr.yaml", mesh / "vs.yaml"]).version
    store.rollback(good, bad, "rejected")
    store.update()
    assert store.release_suspect() == str(mesh / "dr.yaml")
    write(mesh / "other.yaml", plain_service_yaml("ratings"))
    store.update([mesh / "other.yaml"])  # a file event arrives before the release's update
    assert subsets(store) == ["v1", "v2", "v3"]


def test_a_rejected_version_edited_into_an_invalid_one_is_still_rolled_back(mesh):
    store = loaded(mesh, ("v1", "v2"), "v1")
    good = store.snapshot.version
    write(mesh / "vs.yaml", vs("v2"))
    bad = store.update([mesh / "vs.yaml"]).version
    write(mesh / "vs.yaml", vs("v2").replace("hosts:", "hostz:"))  # broken before the NACK
    store.update([mesh / "vs.yaml"])
    assert store.snapshot.version == bad  # the invalid edit keeps the previous in force
    assert store.rollback(good, bad, "rejected") == [str(mesh / "vs.yaml")]
    assert store.update().version == good  # ... but not the version Envoy refused
    write(mesh / "vs.yaml", vs("v2").replace("hosts:", "hostz:") + "# still broken\n")
    assert store.update([mesh / "vs.yaml"]).version == good
    write(mesh / "vs.yaml", vs("v1", "v2"))  # a new valid version gets its chance
    assert store.update([mesh / "vs.yaml"]).version not in (good, bad)


def test_a_rule_in_another_namespace_that_drops_a_subset_in_use_is_held(mesh):
    store = loaded(mesh, ("v1", "v2"), "v2")
    other = dr("v1").replace("{name: reviews}", "{name: reviews, namespace: other}")
    write(
        mesh / "other-dr.yaml",
        other.replace("host: reviews", "host: reviews.default.svc.cluster.local"),
    )
    store.update([mesh / "other-dr.yaml"])
    assert str(mesh / "other-dr.yaml") not in store.accepted  # proxies in `other` would 503
    (held,) = errors(store)
    assert "other-dr.yaml" in held and "held back" in held


def test_a_change_no_single_file_explains_is_held_whole(mesh):
    write(mesh / "dr.yaml", dr("v1", "v2"))
    write(mesh / "a.yaml", vs("v9"), mtime=100)  # shadowed by b.yaml, which is newer
    write(mesh / "b.yaml", vs("v1"), mtime=200)
    store = ConfigStore(mesh)
    store.load_all()
    (mesh / "b.yaml").unlink()  # would bring back a.yaml's route to the undefined v9
    store.update([mesh / "b.yaml"])
    assert subset(store) == "v1"
    assert any("b.yaml" in e and "held back" in e for e in errors(store))


def restarted(mesh: Path, state: Path) -> ConfigStore:
    store = ConfigStore(mesh, memory=ConfigMemory(state))
    store.load_all()
    return store


DB = """apiVersion: v1
kind: Service
metadata: {name: db, namespace: default}
spec:
  ports: [{name: tcp, port: 9080}]
"""
EXTERNAL_DB = """apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {name: ext, namespace: default}
spec:
  hosts: [api.example.com]
  ports: [{number: 9080, name: tcp, protocol: TCP}]
  resolution: DNS
"""


def test_a_warning_follows_its_resource_to_the_file_that_now_defines_it(mesh):
    write(mesh / "a.yaml", EXTERNAL_DB + "---\n" + DB, mtime=1)
    write(mesh / "c.yaml", DB, mtime=2)  # the same Service, newer: it wins
    store = ConfigStore(mesh)
    store.load_all()
    write(mesh / "c.yaml", "# db moved out\n", mtime=3)  # a.yaml's identical copy takes over
    store.update([mesh / "c.yaml"])
    (warning,) = [str(i) for i in store.all_issues() if "TCP port 9080" in i.message]
    assert warning.startswith(f"{mesh / 'a.yaml'}:13:")


def test_a_restart_resumes_what_was_in_force_not_what_is_on_disk(mesh, tmp_path):
    state = tmp_path / "state"
    write(mesh / "dr.yaml", dr("v1", "v2"))
    write(mesh / "vs.yaml", vs("v1"))
    write(mesh / "svc2.yaml", plain_service_yaml("ratings"))
    store = restarted(mesh, state)
    good = store.snapshot.version
    write(mesh / "vs.yaml", vs("v3"))  # held back: no rule defines v3
    write(mesh / "svc2.yaml", "kind: [")  # broken: its previous version stays
    store.update([mesh / "vs.yaml", mesh / "svc2.yaml"])
    assert store.snapshot.version == good
    again = restarted(mesh, state)  # the server restarts with both still on disk
    assert again.snapshot.version == good
    assert subset(again) == "v1" and len(again.snapshot.of_kind(model.SERVICE)) == 2
    assert any("held back" in e for e in errors(again))
    write(mesh / "dr.yaml", dr("v1", "v2", "v3"))  # and the held change goes through later
    again.update([mesh / "dr.yaml"])
    assert subset(again) == "v3"


def test_a_first_load_keeps_its_texts_in_one_file_and_a_restart_resumes_from_it(mesh, tmp_path):
    state = tmp_path / "state"
    for i in range(20):
        write(mesh / f"svc{i}.yaml", plain_service_yaml(f"svc{i}"))
    first = restarted(mesh, state).snapshot
    (kept,) = (state / "config").iterdir()  # one file for 20 texts, not 20 files
    assert kept.name.endswith(".pack.json")
    for i in range(20):  # every file broken while the server is down
        write(mesh / f"svc{i}.yaml", "kind: [")
    again = restarted(mesh, state)
    assert again.snapshot.version == first.version
    assert len(again.snapshot.of_kind(model.SERVICE)) == len(first.of_kind(model.SERVICE)) > 20


def test_a_restart_keeps_a_version_envoy_refused_out(mesh, tmp_path):
    state = tmp_path / "state"
    write(mesh / "dr.yaml", dr("v1", "v2"))
    write(mesh / "vs.yaml", vs("v1"))
    store = restarted(mesh, state)
    good = store.snapshot.version
    write(mesh / "vs.yaml", vs("v2"))
    bad = store.update([mesh / "vs.yaml"]).version
    store.rollback(good, bad, "refused")
    store.update()
    again = restarted(mesh, state)
    assert again.snapshot.version == good
    assert any("before the restart: refused" in e for e in errors(again))


def test_without_a_state_directory_a_start_is_fresh(mesh, tmp_path):
    write(mesh / "dr.yaml", dr("v1"))
    write(mesh / "vs.yaml", vs("v9"))
    store = ConfigStore(mesh, memory=ConfigMemory(None))
    store.load_all()
    assert subset(store) == "v9"  # an error, and the route applies as in Istio


def test_a_nack_explained_by_a_version_already_refused_blames_no_other_file(mesh):
    store = loaded(mesh, ("v1", "v2"), "v1")
    good = store.snapshot.version
    write(mesh / "bad.yaml", vs("v1").replace("name: reviews", "name: other-vs"))
    with_bad = store.update([mesh / "bad.yaml"]).version
    write(mesh / "vs.yaml", vs("v2"))
    both = store.update([mesh / "vs.yaml"]).version
    assert store.rollback(good, with_bad, "refused") == [str(mesh / "bad.yaml")]
    store.update()
    # The NACK of the push that carried both arrives later: bad.yaml explains it.
    assert store.rollback(good, both, "refused") == []
    assert subset(store) == "v2"


def test_each_decision_says_which_resources_it_added_removed_and_changed(mesh):
    store = loaded(mesh, ("v1", "v2"), "v1")
    assert [str(c) for c in store.state.changes] == [
        "+DestinationRule default/reviews",
        "+Service default/reviews",
        "+VirtualService default/reviews",
    ]
    write(mesh / "vs.yaml", vs("v2"))
    store.update([mesh / "vs.yaml"])
    assert [str(c) for c in store.state.changes] == ["~VirtualService default/reviews"]
    write(mesh / "svc.yaml", plain_service_yaml("ratings"))
    store.update([mesh / "svc.yaml"])
    assert [str(c) for c in store.state.changes] == ["+Service default/ratings"]
    (mesh / "svc.yaml").unlink()
    store.update([mesh / "svc.yaml"])
    assert [str(c) for c in store.state.changes] == ["-Service default/ratings"]
    write(mesh / "vs.yaml", vs("v2"))  # rewritten, same content: nothing changed
    store.update([mesh / "vs.yaml"])
    assert store.state.changes == []


def test_a_text_whose_pack_was_swept_is_kept_again_when_it_comes_back(tmp_path, monkeypatch):
    from xds_server.config import memory

    monkeypatch.setattr(memory, "SWEEP_AFTER", 1)
    kept = memory.ConfigMemory(tmp_path)
    kept.bulk()
    kept.keep_text("d1", "first")
    kept.save({"f.yaml": memory.Remembered("d1", 1)}, {})  # d1 goes into a pack
    kept.keep_text("d2", "second")
    kept.save({"f.yaml": memory.Remembered("d2", 2)}, {})  # a sweep drops the pack
    kept.keep_text("d1", "first")  # the first version comes back
    kept.save({"f.yaml": memory.Remembered("d1", 3)}, {})
    assert memory.ConfigMemory(tmp_path).text("d1") == "first"  # as a restart reads it
