"""The pacer lets a bounded number of streams take a step per turn of the event loop, in
arrival order, skips streams that went away while waiting, and never strands one."""

from __future__ import annotations

import asyncio

from xds_server.ads.pacing import Pacer


async def _turns_of(pacer: Pacer, streams: int, cancel: set[int] = frozenset()) -> list[int]:
    """The loop turn (counted by a ticker) in which each stream was admitted."""
    turn = 0
    admitted: dict[int, int] = {}

    async def ticker() -> None:
        nonlocal turn
        while True:
            await asyncio.sleep(0)
            turn += 1

    async def stream(index: int) -> None:
        await pacer.admit()
        admitted[index] = turn

    clock = asyncio.create_task(ticker())
    tasks = [asyncio.create_task(stream(i)) for i in range(streams)]
    await asyncio.sleep(0)  # every stream asks before any is let through
    for index in cancel:
        tasks[index].cancel()
    await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), timeout=5)
    clock.cancel()
    return [admitted.get(i, -1) for i in range(streams)]


def test_at_most_per_turn_streams_take_a_step_in_one_turn() -> None:
    turns = asyncio.run(_turns_of(Pacer(per_turn=3), 10))
    assert all(t >= 0 for t in turns)
    assert max(turns.count(t) for t in set(turns)) <= 3
    assert turns == sorted(turns)  # in arrival order


def test_a_stream_gone_while_waiting_takes_no_room() -> None:
    turns = asyncio.run(_turns_of(Pacer(per_turn=2), 6, cancel={2, 3}))
    assert turns[2] == turns[3] == -1
    admitted = [t for t in turns if t >= 0]
    assert len(admitted) == 4 and max(admitted.count(t) for t in set(admitted)) <= 2
