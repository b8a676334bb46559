"""One pooled :class:`httpx.AsyncClient` per running event loop, closed when that loop shuts down.

An async client's connections belong to the event loop that opened them, so a process keeps one
client per loop: a worker that runs every ``async def`` job on one loop publishes all its posts
through one client (keep-alive connections, one TLS context); one that runs each job on a new
loop (RQ's ``perform``, ``asyncio.run`` per job) gets a client per job, closed at its end.

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
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import httpx


@dataclass
class _Entry:
    client: httpx.AsyncClient
    #: The generator whose ``finally`` closes the client (kept here: the loop holds it weakly).
    closer: AsyncIterator[None]


class LoopClients:
    """Clients made by ``factory``, one per running event loop of this process."""

    def __init__(self, factory: Callable[[], httpx.AsyncClient]) -> None:
        self._factory = factory
        self._lock = threading.Lock()  # loops may run in several threads (tests, embedding apps)
        self._entries: dict[asyncio.AbstractEventLoop, _Entry] = {}
        self._pid = os.getpid()
        #: Entries a forked child inherited: never used (their connections are the parent's),
        #: and kept rather than dropped, as collecting them would close the child's copies of
        #: the parent's sockets with a ResourceWarning each.
        self._inherited: list[_Entry] = []

    async def get(self) -> httpx.AsyncClient:
        """The running loop's client, made on first use."""
        loop = asyncio.get_running_loop()
        with self._lock:
            self._forget_stale()
            entry = self._entries.get(loop)
            if entry is not None:
                return entry.client
            client = self._factory()
            entry = self._entries[loop] = _Entry(client, self._close_at_shutdown(loop, client))
        # Starting the generator registers it with the loop's shutdown (asyncgen hooks); it
        # runs to its ``yield`` at once, without giving the loop to anyone else.
        await anext(entry.closer)
        return client

    async def aclose(self) -> None:
        """Close the running loop's client now (the next :meth:`get` makes a new one)."""
        loop = asyncio.get_running_loop()
        with self._lock:
            entry = self._entries.pop(loop, None)
        if entry is not None:
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
        self, loop: asyncio.AbstractEventLoop, client: httpx.AsyncClient
    ) -> AsyncIterator[None]:
        try:
            yield
        finally:
            with self._lock:
                if self._entries.get(loop) is not None and self._entries[loop].client is client:
                    del self._entries[loop]
            await client.aclose()

    def _forget_stale(self) -> None:
        """Under the lock: drop entries of closed loops and, in a forked child, the parent's."""
        if self._pid != os.getpid():
            self._inherited.extend(self._entries.values())
            self._entries = {}
            self._pid = os.getpid()
        for loop in [loop for loop in self._entries if loop.is_closed()]:
            del self._entries[loop]
