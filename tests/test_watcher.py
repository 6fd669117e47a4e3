"""The watcher: changes reach the store off the event loop, a failure of watching is
logged and recovered from, and a settle window ends on its own."""

from __future__ import annotations

import asyncio
from pathlib import Path

import watchfiles

from tests.helpers import plain_service_yaml
from translators import model
from xds_server.config import watcher as watcher_module
from xds_server.config.store import ConfigStore
from xds_server.config.watcher import ConfigWatcher


async def wait_for(predicate, seconds: float = 10.0) -> None:
    for _ in range(int(seconds / 0.02)):
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")


async def test_a_failing_watch_is_logged_rescanned_and_resumed(tmp_path: Path, monkeypatch, caplog):
    (tmp_path / "a.yaml").write_text(plain_service_yaml("a"))
    store = ConfigStore(tmp_path)
    configs: list[model.MeshConfig] = []
    watcher = ConfigWatcher(store, configs.append, debounce_ms=10, restart_delay=0.05)
    await watcher.load()
    calls = {"n": 0}
    real_awatch = watchfiles.awatch

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError("inotify watch limit reached")
        return real_awatch(*args, **kwargs)

    monkeypatch.setattr(watcher_module.watchfiles, "awatch", flaky)
    # Written while watching is down: the rescan after the failure must pick it up.
    (tmp_path / "b.yaml").write_text(plain_service_yaml("b"))
    task = asyncio.create_task(watcher.run())
    try:
        await wait_for(lambda: configs and len(configs[-1].of_kind(model.SERVICE)) == 2)
        assert watcher.restarts == 1 and "inotify watch limit" in watcher.last_error
        assert "rescanning and watching again" in caplog.text
        await asyncio.sleep(0.3)  # watching again: a later edit still arrives
        (tmp_path / "c.yaml").write_text(plain_service_yaml("c"))
        await wait_for(lambda: len(configs[-1].of_kind(model.SERVICE)) == 3)
    finally:
        task.cancel()
        watcher.close()


async def test_a_store_error_is_logged_and_the_config_in_force_stays(tmp_path: Path, caplog):
    (tmp_path / "a.yaml").write_text(plain_service_yaml("a"))
    store = ConfigStore(tmp_path)
    configs: list[model.MeshConfig] = []
    watcher = ConfigWatcher(store, configs.append)
    before = await watcher.load()

    def broken(*_args, **_kwargs):
        raise RuntimeError("a bug in the store")

    store.update = broken  # type: ignore[method-assign]
    await watcher.apply([tmp_path / "a.yaml"])
    assert "config update failed" in caplog.text and not configs
    assert store.snapshot.version == before.version


async def test_the_settle_window_ends_by_itself(tmp_path: Path):
    (tmp_path / "a.yaml").write_text(plain_service_yaml("a"))
    store = ConfigStore(tmp_path, settle_seconds=0.2)
    configs: list[model.MeshConfig] = []
    watcher = ConfigWatcher(store, configs.append)
    await watcher.load()
    (tmp_path / "a.yaml").write_text("")
    await watcher.apply([tmp_path / "a.yaml"])
    assert not configs and store.settling
    await wait_for(lambda: configs and not configs[-1].of_kind(model.SERVICE), 5)
    watcher.close()


async def test_loading_runs_off_the_event_loop(tmp_path: Path):
    for i in range(300):
        (tmp_path / f"s{i}.yaml").write_text(plain_service_yaml(f"s{i}"))
    store = ConfigStore(tmp_path)
    watcher = ConfigWatcher(store, lambda _: None)
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0)
            ticks += 1

    ticker = asyncio.create_task(tick())
    await watcher.load()
    ticker.cancel()
    assert len(store.snapshot.resources) == 300
    assert ticks > 1  # the loop ran other tasks while the files were parsed


async def test_directories_moved_in_or_out_whatever_their_names(tmp_path: Path):
    mesh = tmp_path / "mesh"
    (mesh / "conf.d").mkdir(parents=True)
    (mesh / "conf.d" / "a.yaml").write_text(plain_service_yaml("a"))
    (mesh / "b.yaml").write_text(plain_service_yaml("b"))
    store = ConfigStore(mesh)
    configs: list[model.MeshConfig] = []
    watcher = ConfigWatcher(store, configs.append, debounce_ms=10)
    await watcher.load()
    task = asyncio.create_task(watcher.run())

    def names() -> set[str]:
        return {r.name for r in store.snapshot.of_kind(model.SERVICE)}

    try:
        await asyncio.sleep(0.3)
        (mesh / "conf.d").rename(tmp_path / "away")  # a dotted directory leaves
        await wait_for(lambda: names() == {"b"})
        (mesh / "more.yaml").mkdir()  # a directory named like a file
        (mesh / "more.yaml" / "c.yaml").write_text(plain_service_yaml("c"))
        await wait_for(lambda: names() == {"b", "c"})
        (mesh / "more.yaml").rename(tmp_path / "away2")
        await wait_for(lambda: names() == {"b"})
        (tmp_path / "away").rename(mesh / "back.d")
        await wait_for(lambda: names() == {"a", "b"})
    finally:
        task.cancel()
        watcher.close()
