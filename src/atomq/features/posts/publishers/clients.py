"""Pooled :class:`httpx.AsyncClient` objects per running event loop, closed when that loop shuts down.

An async client's connections belong to the event loop that opened them, so a process keeps its
clients per loop: a worker that runs every ``async def`` job on one loop publishes all its posts
through that loop's clients (keep-alive connections, one TLS context); one that runs each job on
a new loop (RQ's ``perform``, ``asyncio.run`` per job) gets clients per job, closed at its end.

A loop has up to :data:`SHARDS` clients, and a caller names the one it wants by a key (an
account id): the same key always gets the same client, so an account's posts reuse its
connections. The split began when the clients used httpcore's pool, which looks at every
connection it holds each time a request starts or ends; atomq's own pool
(:mod:`atomq.features.posts.connpool`) finds an idle connection in constant time, and the split
now serves its cap on idle connections, which holds per client: 32 clients keep up to 32 times
as many connections alive through a burst as one would.

Closing rides on what ``asyncio.run`` and :class:`asyncio.Runner` do before closing a loop: they
close every async generator still open on it (``loop.shutdown_asyncgens``). Each client is held
open by such a generator, whose ``finally`` closes the client, on its own loop, while that loop
still runs. It is not a task, so nothing that waits for a loop's tasks waits for it. A loop
closed any other way skips that step; its client is forgotten at the next lookup and its
sockets close when it is collected.
"""

from __future__ import annotations

import asyncio
import os
import threading
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import httpx


@dataclass
class _Entry:
    client: httpx.AsyncClient
    #: The generator whose ``finally`` closes the client (kept here: the loop holds it weakly).
    closer: AsyncIterator[None]


#: Clients per event loop; each caller's key picks one (see the module's docstring). With
#: httpcore's pool and 100 posts in flight, 8 left each pool a dozen connections to look over
#: per request start and end (17 % of a publish's time on the loop, py-spy, bench_posts_loop
#: with 2,000 accounts; 7 % with 32). Only connections in use or kept alive for a while
#: exist, so more clients hold no more sockets than the posts in flight need.
SHARDS = 32


class LoopClients:
    """Clients made by ``factory``, up to :data:`SHARDS` per running event loop of this process."""

    def __init__(self, factory: Callable[[], httpx.AsyncClient]) -> None:
        self._factory = factory
        self._lock = threading.Lock()  # loops may run in several threads (tests, embedding apps)
        self._entries: dict[tuple[asyncio.AbstractEventLoop, int], _Entry] = {}
        self._pid = os.getpid()
        #: Entries a forked child inherited: never used (their connections are the parent's),
        #: and kept rather than dropped, as collecting them would close the child's copies of
        #: the parent's sockets with a ResourceWarning each.
        self._inherited: list[_Entry] = []

    async def get(self, key: str = "") -> httpx.AsyncClient:
        """The running loop's client for ``key`` (the same one for the same key), made on first use."""
        return await self._client(zlib.crc32(key.encode()) % SHARDS if key else 0)

    async def warm(self) -> None:
        """Make every client of the running loop now (a worker's warm-up), not on first use."""
        for shard in range(SHARDS):
            await self._client(shard)

    async def _client(self, shard: int) -> httpx.AsyncClient:
        slot = (asyncio.get_running_loop(), shard)
        with self._lock:
            self._forget_stale()
            entry = self._entries.get(slot)
            if entry is not None:
                return entry.client
            client = self._factory()
            entry = self._entries[slot] = _Entry(client, self._close_at_shutdown(slot, client))
        # Starting the generator registers it with the loop's shutdown (asyncgen hooks); it
        # runs to its ``yield`` at once, without giving the loop to anyone else.
        await anext(entry.closer)
        return client

    async def aclose(self) -> None:
        """Close the running loop's clients now (the next :meth:`get` makes a new one)."""
        loop = asyncio.get_running_loop()
        with self._lock:
            entries = [self._entries.pop(slot) for slot in list(self._entries) if slot[0] is loop]
        for entry in entries:
            await entry.client.aclose()

    def forget_closed(self) -> None:
        """Drop the clients of loops that are closed (for a sync owner's ``close()``)."""
        with self._lock:
            self._forget_stale()

    def __len__(self) -> int:
        with self._lock:
            self._forget_stale()
            return len(self._entries)

    async def _close_at_shutdown(
        self, slot: tuple[asyncio.AbstractEventLoop, int], client: httpx.AsyncClient
    ) -> AsyncIterator[None]:
        try:
            yield
        finally:
            with self._lock:
                if self._entries.get(slot) is not None and self._entries[slot].client is client:
                    del self._entries[slot]
            await client.aclose()

    def _forget_stale(self) -> None:
        """Under the lock: drop entries of closed loops and, in a forked child, the parent's."""
        if self._pid != os.getpid():
            self._inherited.extend(self._entries.values())
            self._entries = {}
            self._pid = os.getpid()
        for slot in [slot for slot in self._entries if slot[0].is_closed()]:
            del self._entries[slot]
