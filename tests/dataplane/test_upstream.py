"""proxy.dataplane.upstream: the pool's bound. A request that finds no free place
waits at most the connect timeout, then is an Overloaded (503) naming the limit;
places come back however a request ends, and one host cannot take them all."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest
from aiohttp import web

from proxy.dataplane.upstream import UPSTREAM_CONNECTIONS, Outgoing, RelayResult, Upstream
from proxy.dataplane.upstream import UpstreamPool as Pool
from proxy.errors import Overloaded


async def _hold(pool: Pool, host: str, release: asyncio.Event) -> None:
    async with pool.place(host):
        await release.wait()


async def test_a_full_pool_refuses_after_the_wait_with_the_limit_named() -> None:
    pool = Pool(1, 1, wait_s=0.1)
    release = asyncio.Event()
    holder = asyncio.create_task(_hold(pool, "a", release))
    await asyncio.sleep(0)
    with pytest.raises(Overloaded) as refused:
        async with pool.place("a"):
            pass
    assert (refused.value.status, refused.value.detail) == (503, UPSTREAM_CONNECTIONS)
    assert refused.value.retry_after_s >= 1
    release.set()
    await holder
    assert pool.in_use == 0


async def test_a_waiter_gets_the_place_that_frees_up_within_the_wait() -> None:
    pool = Pool(1, 1, wait_s=5)
    release = asyncio.Event()
    holder = asyncio.create_task(_hold(pool, "a", release))
    await asyncio.sleep(0)
    waiter = asyncio.create_task(_hold(pool, "a", asyncio.Event()))
    await asyncio.sleep(0.05)
    assert not waiter.done() and pool.in_use == 1
    release.set()
    await holder
    await asyncio.sleep(0.01)
    assert pool.in_use == 1, "the waiter took the freed place"
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    assert pool.in_use == 0


async def test_one_host_at_its_count_leaves_the_others_their_places() -> None:
    pool = Pool(3, 2, wait_s=0.05)
    release = asyncio.Event()
    holders = [asyncio.create_task(_hold(pool, "slow-region", release)) for _ in range(2)]
    await asyncio.sleep(0)
    with pytest.raises(Overloaded):
        async with pool.place("slow-region"):
            pass
    async with pool.place("other-region"):
        assert pool.in_use == 3
    release.set()
    await asyncio.gather(*holders)
    assert pool.in_use == 0


async def test_places_come_back_when_requests_fail_or_are_cancelled() -> None:
    pool = Pool(2, 2, wait_s=0.05)
    with pytest.raises(RuntimeError):
        async with pool.place("a"):
            raise RuntimeError("the relay failed")
    waiting = asyncio.create_task(_hold(pool, "a", asyncio.Event()))
    await asyncio.sleep(0)
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    assert pool.in_use == 0
    async with pool.place("a"), pool.place("a"):
        assert pool.in_use == 2


async def test_the_relay_answers_overloaded_when_the_pool_is_full(aiohttp_server: Any) -> None:
    """Through Upstream.relay: a second request while one holds the only connection."""
    started, release = asyncio.Event(), asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        started.set()
        await release.wait()
        return web.Response(text="done")

    app = web.Application()
    app.router.add_post("/", slow)
    server = await aiohttp_server(app)
    upstream = Upstream(connect_timeout_s=0.1, read_timeout_s=5, max_connections=1)
    await upstream.start()
    outgoing = Outgoing("POST", str(server.make_url("/")), {}, b"{}")
    # Nothing of the client's request is touched before the upstream answers.
    client = cast(web.Request, None)
    try:
        first = asyncio.create_task(upstream.relay(client, outgoing, RelayResult()))
        await asyncio.wait_for(started.wait(), 5)
        with pytest.raises(Overloaded):
            await upstream.relay(client, outgoing, RelayResult())
        first.cancel()  # the client went away: its place comes back
        await asyncio.gather(first, return_exceptions=True)
        assert first.cancelled()
        release.set()
        started.clear()
        second = asyncio.create_task(upstream.relay(client, outgoing, RelayResult()))
        await asyncio.wait_for(started.wait(), 5)
        second.cancel()
        await asyncio.gather(second, return_exceptions=True)
    finally:
        release.set()
        await upstream.close()
