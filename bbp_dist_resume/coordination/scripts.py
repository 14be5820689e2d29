"""Lua scripts of the Redis backend: every read-check-write runs in one of them.

Each script's KEYS share the ``{op}`` hash tag (one Cluster slot). Time comes from the
server (``TIME``), never from the client. Every script that changes state is safe to run
twice: a retried call whose first try landed finds its own effect and changes nothing.
"""

from __future__ import annotations

_NOW_MS = "local t = redis.call('TIME'); local now = t[1] * 1000 + math.floor(t[2] / 1000)\n"

CREATE_OPERATION = (
    """
-- KEYS[1] meta
-- ARGV[1] config_path, ARGV[2] workers (JSON list), ARGV[3] stages (JSON list)
-- Returns {1, created_at_ms} when created, {0, 0} when it already existed.
if redis.call('EXISTS', KEYS[1]) == 1 then return {0, 0} end
"""
    + _NOW_MS
    + """
redis.call('HSET', KEYS[1], 'status', 'running', 'created_at', now,
  'config_path', ARGV[1], 'workers', ARGV[2], 'stages', ARGV[3], 'generation', 0)
return {1, now}
"""
)

ACQUIRE = (
    """
-- KEYS[1] meta, KEYS[2] lease, KEYS[3] fence, KEYS[4] deadlines, KEYS[5] owner,
-- KEYS[6] done set
-- ARGV[1] worker, ARGV[2] owner token, ARGV[3] ttl ms
-- Returns {fence, deadline_ms}; {-1} unknown operation; {-2} worker not in it;
-- {-3} held by a live owner; {-4} the worker finished. A retry by the same token
-- returns the same fence.
if redis.call('EXISTS', KEYS[1]) == 0 then return {-1} end
local workers = cjson.decode(redis.call('HGET', KEYS[1], 'workers'))
local member = false
for _, w in ipairs(workers) do if w == ARGV[1] then member = true end end
if not member then return {-2} end
if redis.call('SISMEMBER', KEYS[6], ARGV[1]) == 1 then return {-4} end
"""
    + _NOW_MS
    + """
local holder = redis.call('GET', KEYS[2])
if holder == ARGV[2] then
  -- A retry whose first try landed. Write again (the same owner) so that a WAIT after
  -- this call covers the first try's fence INCR, replicated before this write.
  redis.call('SET', KEYS[5], ARGV[2])
  return {tonumber(redis.call('GET', KEYS[3])), now + tonumber(redis.call('PTTL', KEYS[2]))}
end
if holder then return {-3} end
local f = redis.call('INCR', KEYS[3])
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
redis.call('SET', KEYS[5], ARGV[2])
local deadline = now + tonumber(ARGV[3])
redis.call('ZADD', KEYS[4], deadline, ARGV[1])
return {f, deadline}
"""
)

RENEW = (
    """
-- KEYS[1] lease, KEYS[2] deadlines, KEYS[3] meta
-- ARGV[1] owner token, ARGV[2] ttl ms, ARGV[3] worker, ARGV[4] progress or ''
-- Returns the new deadline (ms), or 0 when the caller does not hold the lease: an
-- expired lease is gone and is never revived.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
"""
    + _NOW_MS
    + """
if ARGV[4] ~= '' then redis.call('HSET', KEYS[3], 'progress:' .. ARGV[3], ARGV[4]) end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
local deadline = now + tonumber(ARGV[2])
redis.call('ZADD', KEYS[2], deadline, ARGV[3])
return deadline
"""
)

RELEASE = """
-- KEYS[1] lease, KEYS[2] deadlines
-- ARGV[1] owner token, ARGV[2] worker
-- Returns 1 when released, 0 when the caller did not hold it. Not idempotent on purpose
-- (a second release is an error), so the client never retries it.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('ZADD', KEYS[2], 0, ARGV[2])
return 1
"""

MARK_DONE = """
-- KEYS[1] meta, KEYS[2] lease, KEYS[3] done, KEYS[4] owner
-- ARGV[1] owner token, ARGV[2] worker
-- Returns the operation status, or 0 when the caller does not own the slot. Run again
-- after it landed (lease gone, worker done, same owner), it returns the status again.
local holder = redis.call('GET', KEYS[2])
local again = (not holder) and redis.call('SISMEMBER', KEYS[3], ARGV[2]) == 1
  and redis.call('GET', KEYS[4]) == ARGV[1]
if holder ~= ARGV[1] and not again then return 0 end
redis.call('SADD', KEYS[3], ARGV[2])
redis.call('DEL', KEYS[2])
local workers = cjson.decode(redis.call('HGET', KEYS[1], 'workers'))
if redis.call('SCARD', KEYS[3]) >= #workers then
  redis.call('HSET', KEYS[1], 'status', 'completed')
end
return redis.call('HGET', KEYS[1], 'status')
"""

RECORD = """
-- KEYS[1] fence, KEYS[2] owner, KEYS[3] index
-- ARGV[1] owner token, ARGV[2] fence, ARGV[3] seq, ARGV[4] summary JSON
-- Returns 1 when the entry is (or already was) in the index, 0 when fenced out: the
-- slot's current owner token and fence must be the caller's. The first entry of a seq
-- wins; recording it again changes nothing.
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
if tonumber(redis.call('GET', KEYS[1]) or '0') ~= tonumber(ARGV[2]) then return 0 end
if #redis.call('ZRANGEBYSCORE', KEYS[3], ARGV[3], ARGV[3]) == 0 then
  redis.call('ZADD', KEYS[3], ARGV[3], ARGV[4])
end
return 1
"""

REPAIR = """
-- KEYS[1] index
-- ARGV[1..n] alternating seq, summary JSON
-- Returns how many entries were added (seqs already present are left as they are).
local added = 0
for i = 1, #ARGV, 2 do
  if #redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[i], ARGV[i]) == 0 then
    redis.call('ZADD', KEYS[1], ARGV[i], ARGV[i + 1])
    added = added + 1
  end
end
return added
"""

PUBLISH_PLAN = """
-- KEYS[1] meta, KEYS[2] plan
-- ARGV[1] plan id, ARGV[2] body JSON
-- Returns the plan's generation; -1 for an unknown operation. A retry with the same plan
-- id returns the generation it already got.
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local current = redis.call('GET', KEYS[2])
if current then
  local p = cjson.decode(current)
  if p['plan_id'] == ARGV[1] then return p['generation'] end
end
local g = redis.call('HINCRBY', KEYS[1], 'generation', 1)
redis.call('SET', KEYS[2], '{"generation":' .. g .. ',"plan_id":"' .. ARGV[1] ..
  '","body":' .. ARGV[2] .. '}')
return g
"""

ACK_PLAN = """
-- KEYS[1] meta, KEYS[2] acks
-- ARGV[1] worker, ARGV[2] plan generation
-- Records that the worker restored its entry of that plan (the recovery barrier); an
-- older generation never replaces a newer one. Returns -1 for an unknown operation.
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local g = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
if tonumber(ARGV[2]) > g then redis.call('HSET', KEYS[2], ARGV[1], ARGV[2]) end
return 1
"""

RESTART_FENCE = """
-- KEYS[1] fence, KEYS[2] lease, KEYS[3] deadlines
-- ARGV[1] floor, ARGV[2] worker
-- Raises the fencing counter to at least ARGV[1]; a slot with no live owner gets
-- deadline 0, so the crash scan takes it as crashed. Returns the counter.
local f = tonumber(redis.call('GET', KEYS[1]) or '0')
if f < tonumber(ARGV[1]) then
  f = tonumber(ARGV[1])
  redis.call('SET', KEYS[1], f)
end
if redis.call('EXISTS', KEYS[2]) == 0 then redis.call('ZADD', KEYS[3], 0, ARGV[2]) end
return f
"""

LEADER = """
-- KEYS[1] leader key
-- ARGV[1] coordinator id, ARGV[2] ttl ms
-- Returns 1 when the caller holds the leader lease after the call (taken or renewed).
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
if holder then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

COMPARE_AND_DELETE = """
-- KEYS[1] key
-- ARGV[1] expected value
-- Deletes the key only if it holds ARGV[1]; returns 1 when deleted.
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
