"""Per-account publishing limits shared by every worker: one Lua script, by Redis's clock.

For each account, :meth:`AccountLimiter.acquire` atomically

1. refuses while the platform told us to back off (a 429 stored by :meth:`block`);
2. refuses while another publish for the account is in flight (a lock with a lease, so a
   killed worker cannot hold it forever);
3. counts requests in a sliding window (Mastodon allows 300 per 5 minutes per account; a
   publish counts as ``cost`` requests, e.g. one per media upload plus the status). When the
   window is full it *reserves* the earliest free slots for this request and says how long
   to wait, so posts queued behind a full window each come back once, at their own time,
   instead of all retrying together;
4. takes the in-flight lock and consumes the slot.

A sorted set per account holds the window's request times (at most ``limit`` entries plus
reservations), so memory stays bounded by the limit, not by how many posts wait.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis

from atomq.core.settings import Settings
from atomq.engine.script_calls import Script, ScriptCall, call_script, call_scripts
from atomq.features.posts.publishers import PLATFORMS

#: What a limiter call raises while Redis is away (restarting, failing over): a lock not given
#: back for one of these is worth trying again (see publishing's ``_release``).
REDIS_AWAY = (redis.ConnectionError, redis.TimeoutError, redis.exceptions.ReadOnlyError)

#: Key prefix of every rate-limit key.
PREFIX = "atomq:posts:rate:"

_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit, window = tonumber(ARGV[1]), tonumber(ARGV[2])
local member, token, lease, cost = ARGV[3], ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])
local blocked = redis.call('PTTL', KEYS[3])
if blocked > 0 then return {'blocked', blocked} end
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= token then
  return {'busy', math.max(redis.call('PTTL', KEYS[2]), 1)}
end
if limit > 0 then
  cost = math.min(cost, limit)
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
  local mine = redis.call('ZSCORE', KEYS[1], member)
  if mine then
    mine = tonumber(mine)
    if mine > now then return {'wait', mine - now} end
  else
    local count = redis.call('ZCARD', KEYS[1])
    local at = now
    if count + cost > limit then
      local index = count + cost - 1 - limit
      local entry = redis.call('ZRANGE', KEYS[1], index, index, 'WITHSCORES')
      at = math.max(now, tonumber(entry[2]) + window)
    end
    redis.call('ZADD', KEYS[1], at, member)
    for i = 2, cost do redis.call('ZADD', KEYS[1], at, member .. '#' .. i) end
    local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
    redis.call('PEXPIRE', KEYS[1], math.max(tonumber(last[2]) - now, 0) + window + 1000)
    if at > now then return {'wait', at - now} end
  end
end
redis.call('SET', KEYS[2], token, 'PX', lease)
return {'ok', 0}
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('DEL', KEYS[2])
  redis.call('RPUSH', KEYS[2], '1')
  redis.call('PEXPIRE', KEYS[2], 1000)
  return 1
end
return 0
"""

_BLOCK = """
local wanted = tonumber(ARGV[1])
if redis.call('PTTL', KEYS[1]) < wanted then redis.call('SET', KEYS[1], '1', 'PX', wanted) end
return 1
"""


#: Every post takes and gives back its account's turn: the scripts are called through the
#: engine's one-round-trip path (a connection kept for script calls, the command packed in C),
#: which costs about half of redis-py's ``Script`` call per use.
_ACQUIRE_SCRIPT, _RELEASE_SCRIPT, _BLOCK_SCRIPT = Script(_ACQUIRE), Script(_RELEASE), Script(_BLOCK)


@dataclass(frozen=True)
class Limit:
    """``requests`` per ``seconds``; ``requests == 0`` means no limit."""

    requests: int
    seconds: float

    @classmethod
    def parse(cls, text: str) -> Limit:
        count, _, seconds = text.partition("/")
        return cls(int(count), float(seconds))


def limit_for(platform: str, options: dict[str, Any], settings: Settings) -> Limit:
    """The limit of an account: its ``rate_limit`` option, else the platform's setting, else
    the platform's default (Mastodon: 300 per 300 s)."""
    override = options.get("rate_limit")
    if isinstance(override, str) and override:
        return Limit.parse(override)
    for item in settings.posts_rate_limits:
        name, _, spec = item.partition("=")
        if name.strip() == platform:
            return Limit.parse(spec)
    default = PLATFORMS[platform].rate_limit
    return Limit(*default) if default else Limit(0, 0)


@dataclass(frozen=True)
class Decision:
    """What :meth:`AccountLimiter.acquire` decided; ``wait`` in seconds when not ``ok``."""

    outcome: str  # ok | busy | wait | blocked
    wait: float

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"


@dataclass(frozen=True)
class Acquire:
    """One send's :meth:`AccountLimiter.acquire`, for :meth:`AccountLimiter.acquire_many`."""

    account_id: str
    limit: Limit
    request: str
    token: str
    lease: float
    cost: int = 1


def _decision(reply: Any) -> Decision:
    outcome, wait_ms = reply
    name = outcome.decode() if isinstance(outcome, bytes) else str(outcome)
    return Decision(name, int(wait_ms) / 1000)


class AccountLimiter:
    """The per-account limits, on ``connection``."""

    def __init__(self, connection: redis.Redis) -> None:
        self.connection = connection

    @staticmethod
    def keys(account_id: str) -> list[str]:
        base = f"{PREFIX}{account_id}"
        return [f"{base}:window", f"{base}:inflight", f"{base}:blocked", f"{base}:released"]

    def acquire(
        self, account_id: str, limit: Limit, *, request: str, token: str, lease: float, cost: int = 1
    ) -> Decision:
        """Try to start request ``request`` (unique per send) as ``token``, holding the account's
        in-flight lock for at most ``lease`` seconds. ``cost`` is how many requests to the
        platform it makes (a Mastodon post with media: one per upload, plus the status)."""
        return self.ask(Acquire(account_id, limit, request, token, lease, cost))

    def ask(self, asked: Acquire) -> Decision:
        """:meth:`acquire`, asked as an :class:`Acquire`."""
        script, args, keys = self._acquire_call(asked)
        return _decision(call_script(self.connection, script, args, keys=keys))

    def acquire_many(self, requests: Sequence[Acquire]) -> list[Decision | Exception]:
        """:meth:`acquire` for several sends, in one round trip: each one's decision, or the
        error Redis answered it with. A lost connection raises (which ran is then unknown)."""
        replies = call_scripts(self.connection, [self._acquire_call(r) for r in requests])
        return [reply if isinstance(reply, Exception) else _decision(reply) for reply in replies]

    def release(self, account_id: str, token: str) -> None:
        """Give the in-flight lock back (only if ``token`` still holds it).

        It also pushes onto the account's ``released`` list, which workers from before publishing
        became async block on while the account is busy (kept for a rolling upgrade; no current
        worker waits: a busy account defers the job).
        """
        script, args, keys = self._release_call(account_id, token)
        call_script(self.connection, script, args, keys=keys)

    def release_many(self, held: Sequence[tuple[str, str]]) -> list[Exception | None]:
        """:meth:`release` for several (account id, token) pairs, in one round trip: None for
        each lock given back, or the error Redis answered with. A lost connection raises."""
        calls = [self._release_call(account_id, token) for account_id, token in held]
        return [
            reply if isinstance(reply, Exception) else None for reply in call_scripts(self.connection, calls)
        ]

    def _acquire_call(self, asked: Acquire) -> ScriptCall:
        return (
            _ACQUIRE_SCRIPT,
            [
                asked.limit.requests,
                int(asked.limit.seconds * 1000),
                asked.request,
                asked.token,
                max(1, int(asked.lease * 1000)),
                max(1, asked.cost),
            ],
            self.keys(asked.account_id)[:3],
        )

    def _release_call(self, account_id: str, token: str) -> ScriptCall:
        keys = self.keys(account_id)
        return (_RELEASE_SCRIPT, [token], [keys[1], keys[3]])

    def block(self, account_id: str, seconds: float) -> None:
        """Stop every worker from calling the platform for this account for ``seconds``."""
        call_script(
            self.connection, _BLOCK_SCRIPT, [max(1, int(seconds * 1000))], keys=[self.keys(account_id)[2]]
        )
