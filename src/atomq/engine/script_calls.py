"""Running a script in one round trip, from redis-py's sync and asyncio clients.

An enqueue is one ``EVALSHA`` whose cost on the client is mostly redis-py's per-command
machinery, not the network: encoding each of ~40 arguments in Python, retries, tracing hooks.
The call is therefore packed in one go (by hiredis, in C) and sent on a connection taken
from the client's own pool: its health checks, authentication, TLS and Sentinel address all
still apply. The sync client's connections are kept for these calls once taken (a stack per
client and process), sparing the pool's checkout on every call. Anything unusual (a broken
connection, a client holding a single connection) goes through redis-py's ordinary
``evalsha`` instead, with its retries. A script unknown to Redis (restarted, or its script
cache flushed) is loaded and called again.
"""

from __future__ import annotations

import hashlib
import os
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import redis
import redis.asyncio
from hiredis import pack_command  # installed with redis[hiredis]
from redis.exceptions import NoScriptError


class Script:
    """A script's source and SHA-1 (Redis names scripts by it)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()  # noqa: S324 - Redis's script id


#: Errors after which the call is retried through redis-py's own path (which reconnects): a
#: pooled connection that Redis (restarted, or its idle timeout) closed. Not a timeout: the
#: script may have run and only its reply be late, so sending it again could write twice, and
#: a caller waiting on a silent Redis would wait a second timeout (the API answers 503 after one).
_RETRY_ON = (redis.ConnectionError,)


class _Connections:
    """Connections taken from one client's pool for script calls, reused last in, first out.

    They stay checked out of redis-py's pool (which still disconnects them on ``close()``; a
    disconnected one reconnects on its next call). Thread-safe: a thread pops one, uses it
    alone and pushes it back. A forked child starts a stack of its own.
    """

    def __init__(self, client: redis.Redis) -> None:
        self.pool = client.connection_pool
        self.idle: deque[Any] = deque()

    def take(self) -> Any:
        try:
            return self.idle.pop()
        except IndexError:
            return self.pool.get_connection()

    def give(self, connection: Any) -> None:
        self.idle.append(connection)


_STACKS: weakref.WeakKeyDictionary[redis.Redis, _Connections] = weakref.WeakKeyDictionary()

# A forked child must not use its parent's connections (they share its sockets): it starts with
# no stacks. Cleared at the fork rather than checked per call (os.getpid() is a system call).
os.register_at_fork(after_in_child=_STACKS.clear)


def _stack(client: redis.Redis) -> _Connections:
    stack = _STACKS.get(client)
    if stack is None:
        stack = _STACKS[client] = _Connections(client)
    return stack


def call_script(
    client: redis.Redis,
    script: Script,
    args: Sequence[Any],
    keys: Sequence[Any] = (),
    *,
    meanwhile: Callable[[], object] | None = None,
) -> Any:
    """Run ``script`` with ``keys`` and ``args`` on ``client``; return its reply.

    ``meanwhile`` is work of the caller's that does not need the reply: it is called once,
    after the call is sent and before the reply is read, so it costs nothing while Redis runs
    the script (a round trip here is ~100 us, most of it waiting).
    """
    if client.connection is None:  # a pooled client (single-connection clients use the slow path)
        packed = [pack_command(("EVALSHA", script.sha, len(keys), *keys, *args))]
        stack = _stack(client)
        connection = stack.take()
        try:
            connection.send_packed_command(packed)
            if meanwhile is not None:
                meanwhile()
                meanwhile = None
            return connection.read_response()
        except NoScriptError:
            client.script_load(script.source)
            return client.evalsha(script.sha, len(keys), *keys, *args)
        except redis.ResponseError:
            raise  # an error reply: the connection is in step, and is used again
        except _RETRY_ON:
            connection.disconnect()
        except BaseException:
            connection.disconnect()  # a reply may still be on its way: never reuse it
            raise
        finally:
            stack.give(connection)
    if meanwhile is not None:
        meanwhile()
    try:
        return client.evalsha(script.sha, len(keys), *keys, *args)
    except NoScriptError:
        client.script_load(script.source)
        return client.evalsha(script.sha, len(keys), *keys, *args)


#: One call of :func:`call_scripts`: the script, its arguments, its keys.
ScriptCall = tuple[Script, Sequence[Any], Sequence[Any]]


def call_scripts(client: redis.Redis, calls: Sequence[ScriptCall]) -> list[Any]:
    """Run several ``(script, args, keys)`` calls in one round trip (pipelined, not a
    transaction); each call's reply, or the error Redis answered it with, in order.

    Packed and sent as :func:`call_script` sends one (redis-py's pipeline spent more on the
    client than the round trips it saved). A connection error raises: which calls ran is then
    unknown. Scripts unknown to Redis are loaded, and only the calls they refused sent again.
    """
    replies: list[Any] = [None] * len(calls)
    todo = list(range(len(calls)))
    for _ in range(2):
        answered = _pipelined(client, [calls[index] for index in todo])
        missing: list[int] = []
        for index, reply in zip(todo, answered, strict=True):
            replies[index] = reply
            if isinstance(reply, NoScriptError):
                missing.append(index)
        if not missing:
            break
        for script in {calls[index][0].sha: calls[index][0] for index in missing}.values():
            client.script_load(script.source)
        todo = missing
    return replies


def _pipelined(client: redis.Redis, calls: Sequence[ScriptCall]) -> list[Any]:
    if not calls:
        return []
    if client.connection is not None:  # a single-connection client: redis-py's own pipeline
        with client.pipeline(transaction=False) as pipe:
            for script, args, keys in calls:
                pipe.evalsha(script.sha, len(keys), *keys, *args)
            return list(pipe.execute(raise_on_error=False))
    # One buffer, one send: redis-py sends each item of a list with a send() of its own, and
    # a step's batch of 64 calls was 64 system calls (and as many reads for Redis).
    packed = [
        b"".join(
            [pack_command(("EVALSHA", script.sha, len(keys), *keys, *args)) for script, args, keys in calls]
        )
    ]
    stack = _stack(client)
    connection = stack.take()
    try:
        connection.send_packed_command(packed)
        replies: list[Any] = []
        for _ in calls:
            try:
                replies.append(connection.read_response())
            except redis.ResponseError as exc:  # an error reply: the others still follow
                replies.append(exc)
        return replies
    except BaseException:
        connection.disconnect()  # replies may still be on their way: never reuse it
        raise
    finally:
        stack.give(connection)


async def call_script_async(
    client: redis.asyncio.Redis, script: Script, args: Sequence[Any], keys: Sequence[Any] = ()
) -> Any:
    """:func:`call_script` for redis-py's asyncio client."""
    if client.connection is None:
        packed = [pack_command(("EVALSHA", script.sha, len(keys), *keys, *args))]
        pool = client.connection_pool
        connection = await pool.get_connection()
        try:
            await connection.send_packed_command(packed)
            return await connection.read_response()
        except NoScriptError:
            await client.script_load(script.source)
            return await client.evalsha(script.sha, len(keys), *keys, *args)
        except redis.ResponseError:
            raise
        except _RETRY_ON:
            await connection.disconnect()
        except BaseException:
            # Cancelled mid-call: the reply may still come; a reused connection would hand
            # it to the next command.
            await connection.disconnect(nowait=True)
            raise
        finally:
            await pool.release(connection)
    try:
        return await client.evalsha(script.sha, len(keys), *keys, *args)
    except NoScriptError:
        await client.script_load(script.source)
        return await client.evalsha(script.sha, len(keys), *keys, *args)
