"""RedisStore and RedisHistory: the Store protocol and the run history on Redis (redis-py).

The rule: every Store operation is one round trip (a Lua script or a single command) and behaves
exactly like `transports.memory_store.SimStore`; every key lives under `prefix:`. This module and
the rabbitmq transport are the only ones that import their client library: redis-py errors are
wrapped here, after bounded retries, into `StoreUnavailable` (connection, timeout, a write
refused by a read-only replica) or `StoreError` (anything else). URLs are `redis://`,
`rediss://`, or `redis+sentinel://` (`SentinelUrl`: the primary the Sentinels name, followed
across failovers without a restart).

Durable writes: with `?wait_replicas=N` on the URL (and `wait_ms`, default 1000), every write
that a client may be told about (the fenced apply, results, idempotency keys, once-marks, lease
grants) is followed, on the same connection, by `WAIT N wait_ms`; a write fewer replicas
acknowledged counts as not made ("unavailable, try again": the writes are idempotent), so a
replica promoted by a failover holds everything anyone was told. Without it (the default,
and where Redis has no replicas) a write is acknowledged by the primary alone.

Key layout under `prefix:` (scripts build index keys from the prefix, so this targets a single
Redis server, not Redis Cluster):

    task                     hash  id -> TaskRecord JSON
    task:state, task:type    hash  id -> state, id -> task type (to move a task between indexes)
    idx:all                  zset  every task id, score 0 (ordered by id with ZRANGEBYLEX)
    idx:state:S, idx:type:T  zset  ids per state, per task type
    idx:ts:S:T               zset  ids per (state, type); S never contains ':', so unambiguous
    deps:ID                  zset  dependents of ID, score = insertion index
    settings                 hash  namespace settings: retention_ms (dtq.store.DEFAULT_RETENTION_MS)
    expiry                   zset  finished task id -> when its state expires (ms)
    key:K, result:ID         string first-writer-wins values (removed with their task)
    once:K                   string 'b' or 'd' (begun, done) then the run that marked it;
                                    expires after the retention
    lease:N, epoch:N         string lease {"holder", "epoch"} with PX; epoch counter
    incarnation              string the namespace's incarnation marker (set once, if absent)
    data_loss                list  NoteDataLoss reports (JSON), oldest first
    workers                  hash  name -> WorkerInfo JSON
    stale_writes_refused     string counter of refused fenced batches
    history                  list  RedisHistory events; seq is the position in the list
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any, TypeVar, cast
from urllib.parse import parse_qsl, unquote, urlsplit

import attrs
import redis
from redis.backoff import NoBackoff
from redis.connection import SSLConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelConnectionPool, SentinelManagedConnection

from dtq.clock import VectorClock
from dtq.errors import ConfigurationError, StaleEpoch, StoreError, StoreUnavailable
from dtq.history import Event
from dtq.store import (
    DEFAULT_RETENTION_MS,
    LEADER_LEASE,
    AddDependents,
    Lease,
    NoteDataLoss,
    Notify,
    OnceState,
    PutTask,
    ResultItem,
    ResultWrite,
    StoreDataLost,
    WorkerInfo,
    Write,
    finished_channel,
    notice_json,
)
from dtq.task import TERMINAL, TaskRecord, TaskResult, TaskState

__all__ = ["RedisHistory", "RedisStore"]

T = TypeVar("T")

DEFAULT_PREFIX = "dtq"
TRIES = 3
BACKOFF_S = 0.05
"""First pause between tries; doubled each time (3 tries sleep 0.15 s in all)."""
_UNAVAILABLE = (RedisConnectionError, RedisTimeoutError, ReadOnlyError)
"""Errors worth another try. ReadOnlyError: a primary demoted to a replica refuses writes; a
Sentinel client reconnects to the new primary (redis-py turns the refusal into a dropped
connection), a plain one keeps trying the address it was given."""
_UNFINISHED = frozenset(TaskState) - TERMINAL
LEASE_TRIES = 2
"""A second try for lease calls: the first one after Redis restarted meets a dead pooled
connection (the request never left), and one lost renewal is a third of the validity window."""
_HMGET_CHUNK = 1000
"""Lua's unpack() has a small stack: read records in chunks of this many."""
_SCAN_COUNT = 1000

# Removes the finished tasks of prefix `p` whose expiry (zset `expiry`, ms) is at most `upto`, at
# most `limit` of them: record, indexes, dependency key, result, and the idempotency key that
# names the task. A task that an unfinished task
# depends on is kept (a leader may read its state when that one's dependencies are checked): its
# expiry moves to `later` (0: it is kept until a purge). Returns how many were removed. Lua
# source, for APPLY and PURGE.
_EXPIRE_DUE = """
local function needed(p, id)
  for _, d in ipairs(redis.call('ZRANGE', p .. 'deps:' .. id, 0, -1)) do
    local st = redis.call('HGET', p .. 'task:state', d)
    if st and st ~= 'succeeded' and st ~= 'failed' and st ~= 'cancelled' then return true end
  end
  return false
end
local function expire_due(p, upto, limit, later)
  local due = redis.call('ZRANGEBYSCORE', p .. 'expiry', '-inf', upto, 'LIMIT', 0, limit)
  local removed = 0
  for _, id in ipairs(due) do
    if needed(p, id) then
      if later > 0 then redis.call('ZADD', p .. 'expiry', later, id)
      else redis.call('ZREM', p .. 'expiry', id) end
    else
      removed = removed + 1
      expire_one(p, id)
    end
  end
  return removed
end
"""
_EXPIRE_ONE = """
local function expire_one(p, id)
    local state = redis.call('HGET', p .. 'task:state', id)
    if state then
      local ttype = redis.call('HGET', p .. 'task:type', id)
      redis.call('ZREM', p .. 'idx:state:' .. state, id)
      redis.call('ZREM', p .. 'idx:type:' .. ttype, id)
      redis.call('ZREM', p .. 'idx:ts:' .. state .. ':' .. ttype, id)
    end
    redis.call('ZREM', p .. 'idx:all', id)
    redis.call('ZREM', p .. 'expiry', id)
    local raw = redis.call('HGET', p .. 'task', id)
    if raw then
      local ok, rec = pcall(cjson.decode, raw)
      local key = ok and type(rec) == 'table' and type(rec.spec) == 'table'
        and rec.spec.idempotency_key
      if type(key) == 'string' then
        local held = redis.call('GET', p .. 'key:' .. key)
        local bound_ok, bound = pcall(cjson.decode, held or '[]')
        if bound_ok and type(bound) == 'table' and bound[1] == id then
          redis.call('DEL', p .. 'key:' .. key)  -- the key may name a new task again
        end
      end
    end
    for _, h in ipairs({'task', 'task:state', 'task:type', 'task:attempt'}) do
      redis.call('HDEL', p .. h, id)
    end
    redis.call('DEL', p .. 'deps:' .. id, p .. 'result:' .. id)
end
"""
_EXPIRE_DUE = _EXPIRE_ONE + _EXPIRE_DUE

# Expire finished tasks in batches (`dtq namespace purge`): ARGV[1] the prefix with its ':',
# ARGV[2] 'all' (every finished task, kept forever or not) or 'due' (those whose retention is
# over), ARGV[3] how many at most. Returns how many were removed.
PURGE_LUA = _EXPIRE_DUE + """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local keep = redis.call('HGET', ARGV[1] .. 'settings', 'retention_ms') or 'DEFAULT_RETENTION'
keep = tonumber(keep)
local upto = '+inf'
if ARGV[2] == 'all' then
  for _, state in ipairs({'succeeded', 'failed', 'cancelled'}) do
    for _, id in ipairs(redis.call('ZRANGE', ARGV[1] .. 'idx:state:' .. state, 0,
                                   tonumber(ARGV[3]) - 1)) do
      redis.call('ZADD', ARGV[1] .. 'expiry', 'NX', 0, id)
    end
  end
else
  upto = now
end
if keep > 0 then keep = now + keep end
return expire_due(ARGV[1], upto, tonumber(ARGV[3]), keep)
""".replace("DEFAULT_RETENTION", str(DEFAULT_RETENTION_MS))

# Fenced batch write. Refuses the whole batch (and counts it) unless ARGV[1] is the lease's
# current epoch and the lease KEYS[3] is held at that epoch (epoch 0: only while no epoch
# exists); otherwise applies every write, moving a replaced task between the indexes. Before
# the writes, removes up to 100 finished tasks whose retention is over; a write that makes a
# record terminal gives it an expiry (now + the namespace's `settings` retention_ms, once).
# KEYS[1] epoch counter, KEYS[2] refusal counter, KEYS[3] the lease. ARGV[2] the key prefix
# with its ':', then ops:
#   'put', id, state, type, attempt, record_json   |   'deps', task_id, n, dependent_1 .. _n
#   | 'notify', channel, notice_json (published once every write is applied)
#   | 'loss', report_json (appended to the data_loss list)
# Returns {1, epoch} when applied, {0, current_epoch} when refused, {0, 0, 1} when refused
# because the epoch counter is missing (the store lost its data).
APPLY_LUA = """
local raw = redis.call('GET', KEYS[1])
local want = tonumber(ARGV[1])
if not raw and want > 0 then
  redis.call('INCR', KEYS[2])
  return {0, 0, 1}
end
local current = tonumber(raw or '0')
local ok = want == current
if ok and want > 0 then
  local lease = redis.call('GET', KEYS[3])
  ok = lease and cjson.decode(lease).epoch == want
end
if not ok then
  redis.call('INCR', KEYS[2])
  return {0, current}
end
local p = ARGV[2]
local function unindex(id, state, ttype)
  redis.call('ZREM', p .. 'idx:state:' .. state, id)
  redis.call('ZREM', p .. 'idx:type:' .. ttype, id)
  redis.call('ZREM', p .. 'idx:ts:' .. state .. ':' .. ttype, id)
end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local keep = tonumber(redis.call('HGET', p .. 'settings', 'retention_ms') or 'DEFAULT_RETENTION')
local terminal = {succeeded = true, failed = true, cancelled = true}
EXPIRE_DUE
expire_due(p, now, 100, keep > 0 and now + keep or 0)
local function put(id, state, ttype, attempt, record)
  local old_state = redis.call('HGET', p .. 'task:state', id)
  local old_type = redis.call('HGET', p .. 'task:type', id)
  if old_state and (old_state ~= state or old_type ~= ttype) then
    unindex(id, old_state, old_type)
  end
  redis.call('HSET', p .. 'task', id, record)
  redis.call('HSET', p .. 'task:state', id, state)
  redis.call('HSET', p .. 'task:type', id, ttype)
  redis.call('HSET', p .. 'task:attempt', id, attempt)
  redis.call('ZADD', p .. 'idx:all', 0, id)
  redis.call('ZADD', p .. 'idx:state:' .. state, 0, id)
  redis.call('ZADD', p .. 'idx:type:' .. ttype, 0, id)
  redis.call('ZADD', p .. 'idx:ts:' .. state .. ':' .. ttype, 0, id)
  if terminal[state] and keep > 0 then
    redis.call('ZADD', p .. 'expiry', 'NX', now + keep, id)
  end
end
local function add_deps(id, first, n)
  local key = p .. 'deps:' .. id
  local score = redis.call('ZCARD', key)
  for j = first, first + n - 1 do
    if redis.call('ZADD', key, 'NX', score, ARGV[j]) == 1 then score = score + 1 end
  end
end
local notices = {}
local i = 3
while i <= #ARGV do
  if ARGV[i] == 'put' then
    put(ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], ARGV[i + 5])
    i = i + 6
  elseif ARGV[i] == 'notify' then
    notices[#notices + 1] = {ARGV[i + 1], ARGV[i + 2]}
    i = i + 3
  elseif ARGV[i] == 'loss' then
    redis.call('RPUSH', p .. 'data_loss', ARGV[i + 1])
    i = i + 2
  else
    local n = tonumber(ARGV[i + 2])
    add_deps(ARGV[i + 1], i + 3, n)
    i = i + 3 + n
  end
end
for _, n in ipairs(notices) do redis.call('PUBLISH', n[1], n[2]) end
return {1, current}
""".replace("DEFAULT_RETENTION", str(DEFAULT_RETENTION_MS)).replace("EXPIRE_DUE", _EXPIRE_DUE)

# Records of the first ARGV[2] ids after the cursor ARGV[1] ('-' or '(' .. id) across the index
# zsets KEYS[2..], merged in id order, read atomically from the record hash KEYS[1]. The merge
# compares bytes itself: Lua's '<' on strings uses strcoll, which follows the server's locale.
SCAN_LUA = """
local limit = tonumber(ARGV[2])
local function before(a, b)
  for i = 1, math.min(#a, #b) do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return #a < #b
end
local lists, heads = {}, {}
for k = 2, #KEYS do
  lists[k] = redis.call('ZRANGEBYLEX', KEYS[k], ARGV[1], '+', 'LIMIT', 0, limit)
  heads[k] = 1
end
local ids = {}
while #ids < limit do
  local best = nil
  for k = 2, #KEYS do
    local id = lists[k][heads[k]]
    if id and (best == nil or before(id, lists[best][heads[best]])) then best = k end
  end
  if best == nil then break end
  ids[#ids + 1] = lists[best][heads[best]]
  heads[best] = heads[best] + 1
end
local out = {}
for s = 1, #ids, tonumber(ARGV[3]) do
  local chunk = {unpack(ids, s, math.min(s + tonumber(ARGV[3]) - 1, #ids))}
  for _, rec in ipairs(redis.call('HMGET', KEYS[1], unpack(chunk))) do
    if rec then out[#out + 1] = rec end
  end
end
return out
"""

# First writer wins: KEYS[1] keeps the first value written. ARGV[1] the value, ARGV[2] a TTL in
# ms (0: none; below 0: expired at once, so nothing is kept, as SimStore does).
# Returns the value already held, or nil when this call won.
FIRST_WRITER_LUA = """
local held = redis.call('GET', KEYS[1])
if held then return held end
local ttl = tonumber(ARGV[2])
if ttl > 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
elseif ttl == 0 then
  redis.call('SET', KEYS[1], ARGV[1])
end
return false
"""

# Once-effects. KEYS[1] the key's mark: 'b' or 'd' (begun, done), then the run that marked it.
# Begin (ARGV[1] the run): a done mark stays and answers 'done'; otherwise the key is marked
# begun by this run, answering 'new' (no mark before) or 'in_doubt' (a begun mark before).
ONCE_BEGIN_LUA = """
local held = redis.call('GET', KEYS[1])
if held and string.sub(held, 1, 1) == 'd' then return 'done' end
redis.call('SET', KEYS[1], 'b' .. ARGV[1])
local keep = tonumber(redis.call('HGET', KEYS[2], 'retention_ms') or 'DEFAULT_RETENTION')
if keep > 0 then redis.call('PEXPIRE', KEYS[1], keep) end
if held then return 'in_doubt' end
return 'new'
""".replace("DEFAULT_RETENTION", str(DEFAULT_RETENTION_MS))
# Done (ARGV[1] the run): marks the key done unless it is done already (the first owner stays).
# Either mark expires after the namespace's retention (KEYS[2] its settings; 0: kept).
ONCE_DONE_LUA = """
local held = redis.call('GET', KEYS[1])
if held and string.sub(held, 1, 1) == 'd' then return 0 end
redis.call('SET', KEYS[1], 'd' .. ARGV[1])
local keep = tonumber(redis.call('HGET', KEYS[2], 'retention_ms') or 'DEFAULT_RETENTION')
if keep > 0 then redis.call('PEXPIRE', KEYS[1], keep) end
return 1
""".replace("DEFAULT_RETENTION", str(DEFAULT_RETENTION_MS))

# Tasks' results, in order: first writer wins, and a late attempt loses, as does any attempt of
# a task the leader ended failed or cancelled (its client was told that end). KEYS[1] the hash
# of current attempts by task id, KEYS[1 + i] the result of item i, then the hash of states by
# task id and the namespace's settings. A result written with no TTL of its own (0) expires after
# the namespace's retention (settings retention_ms; 0: kept). Six ARGV per item: the value, a
# TTL in ms (as above), the task id, the result's attempt, a channel to publish the sixth on when
# stored ('' for none). Replies per item: {0} when stored, {1, held} when a result holds, {2}
# when a newer attempt is current.
PUT_RESULTS_LUA = """
local out = {}
local ended = {failed = true, cancelled = true}
local states = KEYS[#KEYS - 1]
local keep = tonumber(redis.call('HGET', KEYS[#KEYS], 'retention_ms') or 'DEFAULT_RETENTION')
for i = 1, #KEYS - 3 do
  local a, key = (i - 1) * 6, KEYS[i + 1]
  local held = redis.call('GET', key)
  if held then
    out[i] = {1, held}
  elseif tonumber(redis.call('HGET', KEYS[1], ARGV[a + 3]) or '0') > tonumber(ARGV[a + 4])
      or ended[redis.call('HGET', states, ARGV[a + 3]) or ''] then
    out[i] = {2}
  else
    local ttl = tonumber(ARGV[a + 2])
    if ttl == 0 then ttl = keep end
    if ttl > 0 then
      redis.call('SET', key, ARGV[a + 1], 'PX', ttl)
    elseif ttl == 0 then
      redis.call('SET', key, ARGV[a + 1])
    end
    if ARGV[a + 5] ~= '' then redis.call('PUBLISH', ARGV[a + 5], ARGV[a + 6]) end
    out[i] = {0}
  end
end
return out
""".replace("DEFAULT_RETENTION", str(DEFAULT_RETENTION_MS))

# Take the lease KEYS[1] unless held (SET NX PX semantics) and set its epoch KEYS[2] to
# max(counter, floor ARGV[3]) + 1 in the same step, so no two holders ever share an epoch and
# epochs never go back. ARGV[1] holder, ARGV[2] ttl ms, ARGV[4] the incarnation the candidate
# knows ('' for none): refused unless the marker KEYS[3] is that one. ARGV[5] '1': the epoch is
# also above the server's clock in ms (TIME).
# Returns the new epoch, or nil when refused. A ttl <= 0 gives a lease that has already expired.
ACQUIRE_LUA = """
if ARGV[4] ~= '' and redis.call('GET', KEYS[3]) ~= ARGV[4] then return false end
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
local floor = tonumber(ARGV[3])
if ARGV[5] == '1' then
  local t = redis.call('TIME')
  floor = math.max(floor, tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
end
local epoch = math.max(tonumber(redis.call('GET', KEYS[2]) or '0'), floor) + 1
redis.call('SET', KEYS[2], epoch)
local ttl = tonumber(ARGV[2])
if ttl > 0 then
  redis.call('SET', KEYS[1], cjson.encode({holder = ARGV[1], epoch = epoch}), 'PX', ttl)
end
return epoch
"""

# Compare-and-extend: reset the TTL of lease KEYS[1] to ARGV[3] ms only if it is still held by
# holder ARGV[1] at epoch ARGV[2] (PEXPIRE with a ttl <= 0 deletes it) and, unless ARGV[4] is
# '', the incarnation marker KEYS[2] is ARGV[4]. Returns 1 or 0.
RENEW_LUA = """
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
local lease = cjson.decode(raw)
if lease.holder ~= ARGV[1] or lease.epoch ~= tonumber(ARGV[2]) then return 0 end
if ARGV[4] ~= '' and redis.call('GET', KEYS[2]) ~= ARGV[4] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""

# After a data loss (ARGV[4], the marker the caller knew, is gone): only while there is no
# marker KEYS[3], set it to ARGV[5] and give the lease KEYS[1] to ARGV[1] (whoever held it) for
# ARGV[2] ms at epoch max(counter KEYS[2], floor ARGV[3]) + 1. Returns the epoch, or nil.
RECOVER_LUA = """
if redis.call('EXISTS', KEYS[3]) == 1 then return false end
redis.call('SET', KEYS[3], ARGV[5])
local epoch = math.max(tonumber(redis.call('GET', KEYS[2]) or '0'), tonumber(ARGV[3])) + 1
redis.call('SET', KEYS[2], epoch)
redis.call('SET', KEYS[1], cjson.encode({holder = ARGV[1], epoch = epoch}), 'PX', ARGV[2])
return epoch
"""

# Compare-and-delete: drop lease KEYS[1] only if held by holder ARGV[1] at epoch ARGV[2].
RELEASE_LUA = """
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
local lease = cjson.decode(raw)
if lease.holder ~= ARGV[1] or lease.epoch ~= tonumber(ARGV[2]) then return 0 end
return redis.call('DEL', KEYS[1])
"""

# Read lease KEYS[1] with its expiry on the server's clock (TIME + PTTL, in ms), atomically.
# Returns {lease_json, expires_ms} or nil when no live lease.
LEASE_LUA = """
local raw = redis.call('GET', KEYS[1])
if not raw then return false end
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return {raw, now_ms + redis.call('PTTL', KEYS[1])}
"""


def _result_write(result: TaskResult, raw: str, reply: list[Any], *, retried: bool) -> ResultWrite:
    if reply[0] == 0:
        return ResultWrite(stored=result, created=True)
    if reply[0] == 2:
        return ResultWrite(stored=None, created=False, stale=True)
    held = _text(reply[1])
    if retried and held == raw:  # on a retry, our own value means the lost first try wrote it
        return ResultWrite(stored=result, created=True)
    return ResultWrite(stored=TaskResult.from_json(json.loads(held)), created=False)


def _text(value: bytes | str) -> str:
    """Replies are bytes unless the client was made with decode_responses=True."""
    return value.decode() if isinstance(value, bytes) else value


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _retrying(what: str, op: Callable[[int], T], tries: int = TRIES) -> T:
    """Run op(attempt) with bounded retries on connection errors; wrap redis-py's errors.

    Only idempotent operations come here: the fenced apply rewrites the same records and edges
    (a retry after a lost reply that did apply changes nothing), first-writer-wins keeps the
    first value (ops see `attempt` to recognise their own earlier write), and reads are reads.
    """
    attempt = 0
    while True:
        try:
            return op(attempt)
        except RedisError as exc:
            if not _unavailable(exc):
                raise StoreError(f"redis {what}: {exc}") from exc
            attempt += 1
            if attempt >= tries:
                raise StoreUnavailable(f"redis {what}: {exc} (after {tries} tries)") from exc
        time.sleep(BACKOFF_S * 2 ** (attempt - 1))


def _unavailable(exc: RedisError) -> bool:
    """Worth another try: `_UNAVAILABLE`, or a NOREPLICAS refusal (a primary with
    `min-replicas-to-write` that cannot reach enough replicas, as a demoted one cannot)."""
    return isinstance(exc, _UNAVAILABLE) or str(exc).startswith("NOREPLICAS")


def _client_from_url(url: str, **kwargs: Any) -> redis.Redis:
    """A client that fails fast and leaves retrying to us (its own retries would be blind).

    A `redis+sentinel://` URL gives a client of the primary that the Sentinels name: its
    connections ask them again whenever they (re)connect, and a write refused by a demoted
    primary drops the connection (see `SentinelUrl`)."""
    url, _ = _wait_settings(url)  # a store's own settings (`RedisStore.from_url`)
    options: dict[str, Any] = {
        "socket_connect_timeout": 0.25, "socket_timeout": 1.0,
        "retry": Retry(NoBackoff(), 0), **kwargs,
    }
    if is_sentinel_url(url):
        return SentinelUrl.parse(url).primary(**options)
    return redis.Redis.from_url(url, **options)


SENTINEL_SCHEMES = {"redis+sentinel": False, "rediss+sentinel": True}
"""URL scheme -> TLS to the Sentinels and the servers."""
SENTINEL_PORT = 26379
_SENTINEL_QUERY = ("sentinel_username", "sentinel_password", "ssl_ca_certs")


def is_sentinel_url(url: str) -> bool:
    return url.partition("://")[0].lower() in SENTINEL_SCHEMES


@attrs.frozen
class SentinelUrl:
    """`redis+sentinel://[[user]:password@]host1[:port1],host2[:port2]/service[/db][?query]`.

    The hosts are Sentinels (port 26379 unless given); `service` is the name they monitor (the
    `mymaster` of `sentinel monitor mymaster ...`), `db` the database number (default 0). The
    user and password are the Redis servers' (the primary's and its replicas'); Sentinels that
    need a password of their own take `?sentinel_password=...` (and `sentinel_username=...`).
    `rediss+sentinel://` speaks TLS to the Sentinels and the servers (`?ssl_ca_certs=FILE`)."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    ssl: bool = False
    query: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, url: str) -> SentinelUrl:
        def bad(why: str) -> ConfigurationError:
            return ConfigurationError(f"store URL {_redact(url)}: {why} (expected "
                                      "redis+sentinel://[:password@]host:port,.../service/db)")

        parts = urlsplit(url)
        if parts.scheme.lower() not in SENTINEL_SCHEMES:
            raise bad(f"not a Sentinel URL scheme {parts.scheme!r}")
        userinfo, at, hosts = parts.netloc.rpartition("@")
        user, _, password = userinfo.partition(":")
        sentinels = tuple(_host_port(h, bad) for h in hosts.split(",") if h)
        if not sentinels:
            raise bad("no Sentinel address")
        path = [unquote(p) for p in parts.path.split("/") if p]
        if not path or len(path) > 2:
            raise bad("the path must be /service or /service/db")
        if len(path) == 2 and not path[1].isdigit():
            raise bad(f"database {path[1]!r} is not a number")
        query = tuple(parse_qsl(parts.query, keep_blank_values=True))
        unknown = sorted({k for k, _ in query} - set(_SENTINEL_QUERY))
        if unknown:
            raise bad(f"unknown parameter(s) {', '.join(unknown)}; known: "
                      f"{', '.join(_SENTINEL_QUERY)}")
        return cls(sentinels, path[0], int(path[1]) if len(path) == 2 else 0,
                   unquote(user) or None if at else None,
                   unquote(password) or None if at else None,
                   SENTINEL_SCHEMES[parts.scheme.lower()], query)

    def primary(self, **options: Any) -> redis.Redis:
        """A client of the current primary; `options` go to its connections. The Sentinels are
        asked with short timeouts of their own (never `socket_timeout=None`, never longer than
        the client's own: a lease call must not wait on a Sentinel that does not answer)."""
        q = dict(self.query)
        ca = {"ssl_ca_certs": q["ssl_ca_certs"]} if self.ssl and "ssl_ca_certs" in q else {}
        asking = {"socket_connect_timeout": options.get("socket_connect_timeout") or 0.25,
                  "socket_timeout": min(options.get("socket_timeout") or 0.5, 0.5),
                  "username": q.get("sentinel_username"),
                  "password": q.get("sentinel_password"), "ssl": self.ssl, **ca}
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            list(self.sentinels), sentinel_kwargs=asking)
        return cast(redis.Redis, sentinel.master_for(  # type: ignore[no-untyped-call]
            self.service, db=self.db, username=self.username, password=self.password,
            connection_pool_class=_PrimaryPool,
            connection_class=_PrimarySSLConnection if self.ssl else _PrimaryConnection,
            **ca, **options))


class _PrimaryConnection(SentinelManagedConnection):
    """A connection to the Sentinels' primary. Besides redis-py's own rule (a READONLY refusal
    drops the connection, so the next one asks the Sentinels), a NOREPLICAS refusal does too: a
    primary with `min-replicas-to-write` refuses writes once cut from its replicas, as a demoted
    one is until the Sentinels reconfigure it."""

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().read_response(*args, **kwargs)
        except ResponseError as exc:
            if str(exc).startswith("NOREPLICAS") and self.connection_pool.is_master:
                self.disconnect()  # type: ignore[no-untyped-call]
                raise RedisConnectionError(f"the primary refused a write: {exc}") from exc
            raise


class _PrimarySSLConnection(_PrimaryConnection, SSLConnection):
    pass


class _PrimaryPool(SentinelConnectionPool):
    """Asks the Sentinels which server is primary, at most every `RECHECK_S`, before lending a
    connection, and drops idle connections to any other (in-use ones are dropped when given
    back). After `SENTINEL FAILOVER` the old primary keeps accepting writes until the Sentinels
    reconfigure it (about 10 s): without this a client would keep writing there, and lose it.
    Sentinels that do not answer leave the connections as they are."""

    RECHECK_S = 0.5

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        self._checked = -self.RECHECK_S

    def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        self._recheck()
        return super().get_connection(*args, **kwargs)

    def _recheck(self) -> None:
        now = time.monotonic()
        if now - self._checked >= self.RECHECK_S:
            self._checked = now
            with contextlib.suppress(RedisError):
                self.proxy.get_master_address()  # type: ignore[no-untyped-call]

    def left_behind(self, connection: Any) -> bool:
        """Whether `connection` (one held for long, as a subscription's) is connected to a
        server other than the primary the Sentinels name (asked at most every `RECHECK_S`)."""
        self._recheck()
        primary = self.proxy.master_address
        return (primary is not None and getattr(connection, "_sock", None) is not None
                and (connection.host, connection.port) != tuple(primary))


WAIT_QUERY = ("wait_replicas", "wait_ms")


def _wait_settings(url: str) -> tuple[str, dict[str, int]]:
    """`url` without dtq's own query settings, and those settings (`RedisStore` keywords)."""
    head, q, query = url.partition("?")
    if not q:
        return url, {}
    kept, wait = [], {}
    for item in query.split("&"):
        name, _, value = item.partition("=")
        if name in WAIT_QUERY:
            if not value.isdigit():
                raise ConfigurationError(f"store URL {_redact(url)}: {name} must be a whole "
                                         f"number, not {value!r}")
            wait[name] = int(value)
        elif item:
            kept.append(item)
    return head + ("?" + "&".join(kept) if kept else ""), wait


def _host_port(text: str, bad: Callable[[str], Exception]) -> tuple[str, int]:
    host, colon, port = text.rpartition(":") if not text.endswith("]") else (text, "", "")
    if not colon:
        host, port = text, str(SENTINEL_PORT)
    if not port.isdigit() or not host:
        raise bad(f"bad Sentinel address {text!r}")
    return host.strip("[]"), int(port)


def _redact(url: str) -> str:
    """`url` without its password, for messages."""
    head, at, tail = url.rpartition("@")
    scheme, sep, userinfo = head.partition("://")
    return f"{scheme}{sep}{userinfo.partition(':')[0]}:***@{tail}" if at else url


def _encode_writes(writes: Sequence[Write], prefix: str) -> list[str]:
    args: list[str] = []
    for w in writes:
        if isinstance(w, PutTask):
            rec = w.record
            args += ["put", rec.id, rec.state.value, rec.spec.type, str(rec.attempt),
                     _dumps(rec.to_json())]
        elif isinstance(w, AddDependents):
            args += ["deps", w.task_id, str(len(w.dependents)), *w.dependents]
        elif isinstance(w, Notify):
            args += ["notify", finished_channel(prefix, w.client),
                     notice_json(w.task_id, w.state, w.reason)]
        elif isinstance(w, NoteDataLoss):
            args += ["loss", _dumps(dict(w.report))]
        else:
            raise TypeError(f"not a store write: {w!r}")
    return args


def _worker_json(info: WorkerInfo) -> str:
    return _dumps({"name": info.name, "last_heartbeat_ms": info.last_heartbeat_ms,
                   "state": info.state, "running": list(info.running), "epoch": info.epoch,
                   "incarnation": info.incarnation})


def _worker_from(raw: bytes | str) -> WorkerInfo:
    d = json.loads(raw)
    return WorkerInfo(name=d["name"], last_heartbeat_ms=d["last_heartbeat_ms"],
                      state=d["state"], running=tuple(d["running"]),
                      epoch=int(d.get("epoch", 0)), incarnation=d.get("incarnation"))


class RedisStore:
    """The Store protocol on one Redis server, with SimStore's semantics.

    Differences that cannot be helped: time is the Redis server's (`Lease.expires_ms` is on its
    clock, in ms since the Unix epoch), and a key counts as expired one millisecond later than
    SimStore would say (Redis expires when now > deadline). Give it a client that does not retry
    on its own, as `from_url` builds: redis-py's own retries would re-send blindly and add delay.
    """

    def __init__(
        self, client: redis.Redis, *, prefix: str = DEFAULT_PREFIX,
        lease_client: redis.Redis | None = None, wait_replicas: int = 0, wait_ms: int = 1000,
    ) -> None:
        self.client = client
        self.wait_replicas = wait_replicas
        """Replicas that must acknowledge a write before it counts (see the module's rule)."""
        self.wait_ms = wait_ms
        self.lease_client = lease_client or client
        """Lease calls fail fast (a short socket timeout, `LEASE_TRIES` tries): a leader cut from
        Redis must learn it quickly, not block past its own validity window."""
        self.prefix = prefix
        self._p = prefix + ":"
        self._apply = client.register_script(APPLY_LUA)
        self._scan = client.register_script(SCAN_LUA)
        self._first_writer = client.register_script(FIRST_WRITER_LUA)
        self._put_results = client.register_script(PUT_RESULTS_LUA)
        self._once_begin = client.register_script(ONCE_BEGIN_LUA)
        self._once_done = client.register_script(ONCE_DONE_LUA)
        self._acquire = self.lease_client.register_script(ACQUIRE_LUA)
        self._renew = self.lease_client.register_script(RENEW_LUA)
        self._recover = self.lease_client.register_script(RECOVER_LUA)
        self._release = client.register_script(RELEASE_LUA)
        self._lease = client.register_script(LEASE_LUA)
        self._purge = client.register_script(PURGE_LUA)

    @classmethod
    def from_url(cls, url: str, *, prefix: str = DEFAULT_PREFIX, **kwargs: Any) -> RedisStore:
        """Connect to `url` (redis://host:port/db, with `?wait_replicas=N&wait_ms=MS` for
        durable writes); kwargs go to `redis.Redis.from_url`. The connections are named
        `client_name(prefix)` unless kwargs name them."""
        url, wait = _wait_settings(url)
        kwargs.setdefault("client_name", client_name(prefix))
        # A durable write waits for its replicas (WAIT) on the connection that wrote it: the
        # socket must outwait that, or a wait that runs its time reads as a dropped connection
        # (and a lease acquired in that window is taken but reported as failed).
        waits_s = wait.get("wait_ms", 1000) / 1000 if wait.get("wait_replicas") else 0.0
        lease_client = _client_from_url(url, **{"socket_timeout": 0.25 + waits_s, **kwargs})
        main = {"socket_timeout": 1.0 + waits_s, **kwargs} if waits_s else kwargs
        return cls(_client_from_url(url, **main), prefix=prefix, lease_client=lease_client,
                   **wait)

    def _durable(self, script: Any, keys: list[str], args: list[Any],
                 client: redis.Redis | None = None) -> Any:
        """Run a writing script; with `wait_replicas`, then WAIT on the same connection, and
        count a write too few replicas acknowledged as not made (retried, then unavailable)."""
        c = client or self.client
        if not self.wait_replicas:
            return script(keys, args, client=c)
        pipe = c.pipeline(transaction=False)
        script(keys, args, client=pipe)
        pipe.wait(self.wait_replicas, self.wait_ms)
        reply, acked = pipe.execute()
        if int(acked) < self.wait_replicas:
            # A primary short of replicas may be one the Sentinels no longer name (an old
            # primary not yet demoted, or one whose replicas were moved away): the next try
            # connects anew, and so asks them where the primary is now.
            c.connection_pool.disconnect(inuse_connections=False)
            raise RedisConnectionError(
                f"NOT REPLICATED: {acked} of {self.wait_replicas} replica(s) acknowledged the "
                f"write within {self.wait_ms} ms")
        return reply

    def close(self) -> None:
        self.client.close()
        if self.lease_client is not self.client:
            self.lease_client.close()

    def delete_all(self) -> int:
        """Remove every key under the prefix (SCAN + UNLINK); the number of keys removed."""
        return _delete_under(self.client, self._p)

    def lose_data(self) -> None:
        """What a restart without persistence does to the namespace: every key gone."""
        self.delete_all()

    # retention ------------------------------------------------------------------------------
    def retention_ms(self) -> int:
        """The namespace's retention of finished tasks (`DEFAULT_RETENTION_MS` unless set)."""
        raw = _retrying("retention", lambda _: self.client.hget(self._k("settings"),
                                                                  "retention_ms"))
        return int(raw) if raw is not None else DEFAULT_RETENTION_MS

    def set_retention_ms(self, ms: int) -> None:
        """Set the namespace's retention (0: forever); tasks that end afterwards get it."""
        _retrying("retention", lambda _: self.client.hset(self._k("settings"),
                                                            "retention_ms", str(int(ms))))

    def purge(self, *, everything: bool = False, batch: int = 1000) -> int:
        """Remove finished tasks whose retention is over (`everything`: every finished task)
        in batches of `batch`, each one atomic; how many were removed."""
        removed = 0
        while n := int(_retrying("purge", lambda _: self._purge(
                args=[self._p, "all" if everything else "due", batch]))):
            removed += n
        return removed

    def report(self) -> dict[str, Any]:
        """What the namespace holds: its keys (count and bytes, MEMORY USAGE), records by
        state, finished records waiting to expire, the retention."""
        keys = bytes_used = 0
        for key in self.client.scan_iter(match=_glob_escape(self._p) + "*", count=_SCAN_COUNT):
            keys += 1
            bytes_used += int(self.client.memory_usage(key, samples=0) or 0)
        states = {s.value: int(self.client.zcard(self._k("idx:state", s.value)))
                  for s in TaskState}
        return {"namespace": self.prefix, "keys": keys, "bytes": bytes_used,
                "records": {k: v for k, v in states.items() if v},
                "expiring": int(self.client.zcard(self._k("expiry"))),
                "retention_ms": self.retention_ms()}

    def _k(self, *parts: str) -> str:
        return self._p + ":".join(parts)

    @property
    def stale_writes_refused(self) -> int:
        """Fenced batches refused for a stale epoch, by every process using this prefix."""
        raw = _retrying("get", lambda _: self.client.get(self._k("stale_writes_refused")))
        return int(raw) if raw is not None else 0

    # records --------------------------------------------------------------------------------
    def get_task(self, task_id: str) -> TaskRecord | None:
        raw = _retrying("get_task", lambda _: self.client.hget(self._k("task"), task_id))
        return TaskRecord.from_json(json.loads(raw)) if raw is not None else None

    def scan_tasks(
        self, *, states: Collection[TaskState] | None = None, task_type: str | None = None,
        after: str | None = None, limit: int = 1000,
    ) -> list[TaskRecord]:
        indexes = self._indexes(states, task_type)
        if not indexes:
            return []
        start = "-" if after is None else "(" + after
        # SimStore returns at least one match even for limit < 1; keep that.
        args: list[str | int] = [start, max(limit, 1), _HMGET_CHUNK]
        rows = _retrying("scan_tasks", lambda _: self._scan([self._k("task"), *indexes], args))
        return [TaskRecord.from_json(json.loads(r)) for r in cast(list[bytes | str], rows)]

    def count_by_state(self) -> dict[str, int]:
        """From the per-state indexes (one ZCARD each, in one round trip)."""
        def count(_: int) -> list[Any]:
            pipe = self.client.pipeline(transaction=False)
            for s in TaskState:
                pipe.zcard(self._k("idx:state", s.value))
            return pipe.execute()

        return {s.value: int(n) for s, n in zip(TaskState, _retrying("count", count),
                                                  strict=True)}

    def _indexes(self, states: Collection[TaskState] | None, task_type: str | None) -> list[str]:
        if states is None:
            return [self._k("idx", "all") if task_type is None else self._k("idx:type", task_type)]
        names = sorted({TaskState(s).value for s in states})
        if task_type is None:
            return [self._k("idx:state", s) for s in names]
        return [self._k("idx:ts", s, task_type) for s in names]

    def scan_unfinished(self, *, after: str | None = None, limit: int = 1000) -> list[TaskRecord]:
        """The per-state indexes of the states that are not terminal, merged (each kept by
        the fenced apply: a record leaves its old state's index as it enters the new one)."""
        return self.scan_tasks(states=_UNFINISHED, after=after, limit=limit)

    def dependents(self, task_id: str) -> tuple[str, ...]:
        rows = _retrying("dependents",
                         lambda _: self.client.zrange(self._k("deps", task_id), 0, -1))
        return tuple(_text(r) for r in cast(list[bytes | str], rows))

    def apply(self, writes: Sequence[Write], *, epoch: int, lease: str = LEADER_LEASE) -> int:
        keys = [self._k("epoch", lease), self._k("stale_writes_refused"), self._k("lease", lease)]
        args = [str(epoch), self._p, *_encode_writes(writes, self.prefix)]
        # A retry after a lost reply that did apply rewrites the same values: harmless. If the
        # epoch moved in between, the retry reports StaleEpoch for writes made while current.
        reply = _retrying("apply", lambda _: self._durable(self._apply, keys, args))
        applied, current, *lost = cast(list[int], reply)
        if lost:
            raise StoreDataLost(epoch, 0)
        if not applied:
            raise StaleEpoch(epoch, int(current))
        return int(current)

    # idempotency and exactly-once -----------------------------------------------------------
    def _write_first(self, key: str, value: str, ttl_ms: int = 0) -> tuple[str, bool]:
        """(the value that holds, whether this call wrote it)."""

        def op(attempt: int) -> tuple[str, bool]:
            held = self._durable(self._first_writer, [key], [value, ttl_ms])
            if held is None:
                return value, True
            # On a retry, finding our own value means the lost first try wrote it.
            return _text(held), attempt > 0 and _text(held) == value

        return _retrying("first-writer-wins", op)

    def claim_key(self, key: str, task_id: str, fingerprint: str) -> tuple[str, str]:
        held, _ = self._write_first(self._k("key", key), _dumps([task_id, fingerprint]))
        bound_id, bound_fp = json.loads(held)
        return str(bound_id), str(bound_fp)

    def put_result(
        self, result: TaskResult, *, ttl_ms: int | None = None, notify: str | None = None,
    ) -> ResultWrite:
        return self.put_results([ResultItem(result=result, ttl_ms=ttl_ms, notify=notify)])[0]

    def put_results(self, items: Sequence[ResultItem]) -> list[ResultWrite]:
        if not items:
            return []
        raws = [_dumps(i.result.to_json()) for i in items]
        keys = [self._k("task:attempt"), *(self._k("result", i.result.task_id) for i in items),
                self._k("task:state"), self._k("settings")]
        args: list[str | int] = []
        for item, raw in zip(items, raws, strict=True):
            r = item.result
            channel = finished_channel(self.prefix, item.notify) if item.notify else ""
            args += [raw, item.ttl_ms or 0, r.task_id, r.attempt, channel,
                     notice_json(r.task_id, "succeeded")]

        def op(attempt: int) -> list[ResultWrite]:
            replies = cast(list[list[Any]], self._durable(self._put_results, keys, args))
            return [_result_write(i.result, raw, reply, retried=attempt > 0)
                    for i, raw, reply in zip(items, raws, replies, strict=True)]

        return _retrying("put_results", op)

    def get_result(self, task_id: str) -> TaskResult | None:
        raw = _retrying("get_result", lambda _: self.client.get(self._k("result", task_id)))
        return TaskResult.from_json(json.loads(raw)) if raw is not None else None

    def get_results(self, task_ids: Sequence[str]) -> dict[str, TaskResult]:
        if not task_ids:
            return {}
        keys = [self._k("result", t) for t in task_ids]
        raws = _retrying("get_results", lambda _: self.client.mget(keys))
        return {t: TaskResult.from_json(json.loads(raw))
                for t, raw in zip(task_ids, raws, strict=True) if raw is not None}

    def once_begin(self, key: str, owner: str) -> OnceState:
        # A retry after a lost reply that did mark finds its own begun mark: "in_doubt", which
        # is safe (the effect runs, as after any begun mark never recorded done).
        keys = [self._k("once", key), self._k("settings")]
        state = _text(_retrying("once_begin",
                                lambda _: self._durable(self._once_begin, keys, [owner])))
        if state not in ("new", "in_doubt", "done"):
            raise StoreError(f"redis once_begin: unexpected reply {state!r}")
        return cast(OnceState, state)

    def once_done(self, key: str, owner: str) -> None:
        _retrying("once_done", lambda _: self._durable(
            self._once_done, [self._k("once", key), self._k("settings")], [owner]))

    # leases and fencing ---------------------------------------------------------------------
    def acquire_lease(
        self, name: str, holder: str, ttl_ms: int, *, floor: int = 0,
        incarnation: str | None = None, above_clock: bool = False,
    ) -> int | None:
        # Not idempotent: a retry after a lost reply that did acquire finds the lease held and
        # answers None, so the caller stays a standby until the orphaned lease expires. Safe.
        keys = [self._k("lease", name), self._k("epoch", name), self._k("incarnation")]
        args: list[str | int] = [holder, ttl_ms, floor, incarnation or "",
                                 "1" if above_clock else "0"]
        epoch = _retrying("acquire_lease",
                          lambda _: self._durable(self._acquire, keys, args, self.lease_client),
                          tries=LEASE_TRIES)
        return int(epoch) if epoch is not None else None

    def renew_lease(
        self, name: str, holder: str, epoch: int, ttl_ms: int, *,
        incarnation: str | None = None,
    ) -> bool:
        keys = [self._k("lease", name), self._k("incarnation")]
        args = [holder, str(epoch), str(ttl_ms), incarnation or ""]
        return bool(_retrying("renew_lease", lambda _: self._renew(keys, args),
                              tries=LEASE_TRIES))

    def recover_lease(
        self, name: str, holder: str, ttl_ms: int, *, floor: int, lost: str, incarnation: str,
    ) -> int | None:
        keys = [self._k("lease", name), self._k("epoch", name), self._k("incarnation")]
        args: list[str | int] = [holder, ttl_ms, floor, lost, incarnation]
        epoch = _retrying("recover_lease",
                          lambda _: self._durable(self._recover, keys, args, self.lease_client),
                          tries=LEASE_TRIES)
        return int(epoch) if epoch is not None else None

    def incarnation(self) -> str | None:
        raw = _retrying("incarnation", lambda _: self.client.get(self._k("incarnation")))
        return _text(raw) if raw is not None else None

    def claim_incarnation(self, candidate: str) -> str:
        return self._write_first(self._k("incarnation"), candidate)[0]

    def data_losses(self) -> list[dict[str, Any]]:
        rows = _retrying("data_losses", lambda _: self.client.lrange(self._k("data_loss"), 0, -1))
        return [json.loads(r) for r in rows]

    def release_lease(self, name: str, holder: str, epoch: int) -> None:
        keys, args = [self._k("lease", name)], [holder, str(epoch)]
        _retrying("release_lease", lambda _: self._release(keys, args))

    def lease(self, name: str) -> Lease | None:
        reply = _retrying("lease", lambda _: self._lease([self._k("lease", name)]))
        if reply is None:
            return None
        raw, expires_ms = cast(list[Any], reply)
        d = json.loads(raw)
        return Lease(name=name, holder=d["holder"], epoch=int(d["epoch"]),
                     expires_ms=int(expires_ms))

    def epoch(self, name: str = LEADER_LEASE) -> int:
        raw = _retrying("epoch", lambda _: self.client.get(self._k("epoch", name)))
        return int(raw) if raw is not None else 0

    # workers --------------------------------------------------------------------------------
    def put_worker(self, info: WorkerInfo) -> None:
        raw = _worker_json(info)
        _retrying("put_worker", lambda _: self.client.hset(self._k("workers"), info.name, raw))

    def workers(self) -> list[WorkerInfo]:
        rows = _retrying("workers", lambda _: self.client.hgetall(self._k("workers")))
        infos = [_worker_from(v) for v in cast(dict[Any, bytes | str], rows).values()]
        return sorted(infos, key=lambda w: w.name)


def client_name(prefix: str) -> str:
    """The name a namespace's store connections carry (CLIENT LIST shows it)."""
    return f"dtq:{prefix}"


# Drop every key matching ARGV[1] but the keys named in ARGV[2..], in one atomic step.
_LOSE_LUA = """
local keep = {}
for i = 2, #ARGV do keep[ARGV[i]] = true end
local n = 0
for _, k in ipairs(redis.call('KEYS', ARGV[1])) do
  if not keep[k] then redis.call('UNLINK', k); n = n + 1 end
end
return n
"""


def lose_namespace_data(client: redis.Redis, prefix: str, *, keep: Sequence[str] = ()) -> int:
    """Play a restart without persistence on one namespace of a shared server: every key under
    `prefix:` is gone at once (but the `keep` suffixes, such as an observer's history), and the
    namespace's store connections are dropped (they reconnect to the emptied store). The
    number of keys dropped."""
    kill_clients(client, client_name(prefix))
    args = [_glob_escape(prefix + ":") + "*", *(f"{prefix}:{k}" for k in keep)]
    dropped = int(_retrying("lose data", lambda _: client.eval(_LOSE_LUA, 0, *args)))
    kill_clients(client, client_name(prefix))  # any that reconnected in between
    return dropped


def kill_clients(client: redis.Redis, name: str) -> int:
    """CLIENT KILL every connection named `name`; how many."""
    rows = _retrying("client list", lambda _: client.client_list())
    ids = [str(row["id"]) for row in rows if row.get("name") == name]
    for cid in ids:
        with contextlib.suppress(RedisError):  # gone already
            client.client_kill_filter(_id=cid)
    return len(ids)


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def _delete_under(client: redis.Redis, prefix: str) -> int:
    def op(_: int) -> int:
        removed = 0
        batch: list[Any] = []
        for key in client.scan_iter(match=_glob_escape(prefix) + "*", count=_SCAN_COUNT):
            batch.append(key)
            if len(batch) >= _SCAN_COUNT:
                removed += client.unlink(*batch)
                batch = []
        return removed + (client.unlink(*batch) if batch else 0)

    return _retrying("delete_all", op)


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


class RedisHistory:
    """A history sink for multi-process runs: events appended to one Redis list.

    `record` has the signature of `dtq.history.History.record`. An event's `seq` is its position
    in the list, so Redis orders events from every process. With `buffer_size` > 1, events are
    pushed in batches (one RPUSH per batch); call `flush()` before reading or exiting. Each event
    carries a writer-unique id, so a push retried after a lost reply is dropped on read.
    """

    def __init__(
        self, client: redis.Redis, *, prefix: str = DEFAULT_PREFIX,
        now_ms: Callable[[], int] = _wall_ms, buffer_size: int = 1,
    ) -> None:
        self.client = client
        self.key = prefix + ":history"
        self._now_ms = now_ms
        self._buffer_size = max(buffer_size, 1)
        self._buffer: list[str] = []
        self._writer = uuid.uuid4().hex
        self._count = 0

    @classmethod
    def from_url(
        cls, url: str, *, prefix: str = DEFAULT_PREFIX, now_ms: Callable[[], int] = _wall_ms,
        buffer_size: int = 1, **kwargs: Any,
    ) -> RedisHistory:
        """Connect to `url`; kwargs go to `redis.Redis.from_url`."""
        return cls(_client_from_url(url, **kwargs), prefix=prefix, now_ms=now_ms,
                   buffer_size=buffer_size)

    def record(self, actor: str, kind: str, clock: VectorClock, data: Mapping[str, Any]) -> None:
        self._count += 1
        event = {"eid": f"{self._writer}:{self._count}", "time_ms": self._now_ms(),
                 "actor": actor, "kind": kind, "clock": clock.as_dict(), "data": dict(data)}
        self._buffer.append(json.dumps(event, separators=(",", ":"), default=str))
        if len(self._buffer) >= self._buffer_size:
            self.flush()

    def flush(self) -> None:
        """Push buffered events; on StoreUnavailable they stay buffered for the next flush."""
        if not self._buffer:
            return
        batch = self._buffer
        _retrying("history append", lambda _: self.client.rpush(self.key, *batch))
        self._buffer = []

    def read_events(self) -> list[Event]:
        """Every event recorded under the prefix (flushed ones), ordered by seq."""
        rows = _retrying("history read", lambda _: self.client.lrange(self.key, 0, -1))
        return _events(rows)

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self.client.close()


def _events(rows: Iterable[bytes | str]) -> list[Event]:
    seen: set[str] = set()
    events: list[Event] = []
    for row in rows:
        d = json.loads(row)
        if d["eid"] in seen:
            continue
        seen.add(d["eid"])
        events.append(Event.from_json({**d, "seq": len(events)}))
    return events


class FinishedListener:
    """Hears one client's `Notify` notices (its tasks' ends) on Redis pub/sub, in a thread.

    `on_notice(task_id, state, reason)` runs on that thread. Subscribed before the constructor
    returns, so no notice of a task submitted afterwards is missed while Redis is reachable.
    Notices are best effort: one published while the listener is disconnected is gone (the
    task's record and result are not; poll them to be sure). `on_resubscribed()` runs on that
    thread each time the subscription is made again after a lost connection: the moment to
    re-read what was missed (`dtq.client.submitter.Submitter` does).
    """

    def __init__(
        self, url: str, *, prefix: str, client: str,
        on_notice: Callable[[str, str, str | None], None], timeout_s: float = 5.0,
        on_resubscribed: Callable[[], None] | None = None,
    ) -> None:
        self.channel = finished_channel(prefix, client)
        self.on_notice = on_notice
        self.on_resubscribed = on_resubscribed
        self._redis = _client_from_url(url, socket_timeout=None,
                                       client_name=f"dtq-notices:{self.channel}")
        self._pubsub = self._redis.pubsub()  # type: ignore[no-untyped-call]
        self._stop = threading.Event()
        try:
            self._pubsub.subscribe(self.channel)
            deadline = time.monotonic() + timeout_s
            while (msg := self._pubsub.get_message(timeout=0.1)) is None \
                    or msg["type"] != "subscribe":
                if time.monotonic() > deadline:
                    raise StoreUnavailable(f"no answer to SUBSCRIBE {self.channel}")
        except RedisError as exc:
            self.close()
            raise StoreUnavailable(f"cannot subscribe to {self.channel}: {exc}") from exc
        self._thread = threading.Thread(target=self._run, name=f"notices-{client}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._follow_primary()
                msg = self._pubsub.get_message(timeout=0.5)
            except RedisError:  # redis-py subscribes again when it reconnects
                self._stop.wait(0.1)  # back off from an unreachable server, not synchronising
                continue
            if msg is not None and msg["type"] == "message":
                d = json.loads(msg["data"])
                self.on_notice(str(d["task_id"]), str(d["state"]), d.get("reason"))
            elif msg is not None and msg["type"] == "subscribe" and self.on_resubscribed:
                self.on_resubscribed()

    def _follow_primary(self) -> None:
        """With a Sentinel URL: once the Sentinels name another primary, drop the subscription's
        connection; redis-py connects again (to the new primary) and subscribes again. Without
        this the subscription stays on the old primary until the Sentinels reconfigure it
        (about 10 s), and every notice published meanwhile is missed."""
        pool, connection = self._redis.connection_pool, self._pubsub.connection
        if isinstance(pool, _PrimaryPool) and connection is not None \
                and pool.left_behind(connection):
            connection.disconnect()

    def close(self) -> None:
        self._stop.set()
        thread = getattr(self, "_thread", None)
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=2)
        with contextlib.suppress(Exception):
            self._pubsub.close()
        self._redis.close()
