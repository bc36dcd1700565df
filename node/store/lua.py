"""Lua scripts run by RedisStore. Each runs atomically inside Redis.

Ownership: a node's owner lock holds ``epoch|host|pid|nonce``; ``epoch`` comes from a counter
that every new owner increments. A write is accepted only from the current owner. If the lock
vanished (it expired during a long pause, or Redis lost it) the writer may take it back only
if nobody acquired the node since, i.e. the epoch counter still equals its own epoch.
"""

from __future__ import annotations

__all__ = ["ACQUIRE", "FIND_FINISHED", "FLUSH", "LEDGER", "REFRESH", "RELEASE", "TAKEOVER"]

# The writes' fencing (FLUSH, LEDGER). KEYS: owner, epoch; ARGV: token, epoch, ttl ms. Only the
# owner writes; a lock that vanished is taken back only if nobody acquired the node since (the
# epoch counter is still ours).
_OWNED = """
local v = redis.call('GET', KEYS[1])
if v ~= ARGV[1] then
  if v == false and redis.call('GET', KEYS[2]) == ARGV[2] then
    redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
  else
    return redis.error_reply('FENCED node owned by ' .. tostring(v))
  end
end
"""

# KEYS: owner, epoch. ARGV: "|host|pid|nonce" suffix, ttl ms. Returns the new epoch, or false.
ACQUIRE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
local epoch = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], epoch .. ARGV[1], 'PX', ARGV[2])
return epoch
"""

# KEYS: owner, epoch. ARGV: token seen (of a dead process), suffix, ttl ms. Returns epoch or false.
TAKEOVER = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return false end
local epoch = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], epoch .. ARGV[2], 'PX', ARGV[3])
return epoch
"""

# KEYS: owner, epoch. ARGV: token, epoch, ttl ms. Returns 1 (held), 2 (taken back), or the holder.
REFRESH = """
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return 1
end
if v == false and redis.call('GET', KEYS[2]) == ARGV[2] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
  return 2
end
return tostring(v)
"""

# KEYS: owner. ARGV: token.
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# Archived records of finished tasks. KEYS: bucket hashes, newest first. ARGV: task ids.
# Returns a flat list id, record, ... of the ids found (each once: the newest bucket wins).
FIND_FINISHED = """
local found = {}
local out = {}
local CHUNK = 7000
for k = 1, #KEYS do
  if redis.call('EXISTS', KEYS[k]) == 1 then
    local j = 1
    while j <= #ARGV do
      local e = math.min(j + CHUNK - 1, #ARGV)
      local vals = redis.call('HMGET', KEYS[k], unpack(ARGV, j, e))
      for n = 1, #vals do
        local id = ARGV[j + n - 1]
        if vals[n] and not found[id] then
          found[id] = true
          out[#out + 1] = id
          out[#out + 1] = vals[n]
        end
      end
      j = e + 1
    end
  end
end
return out
"""

# One group commit.
# KEYS: owner, epoch, active, workers, counters, done bucket, dead letters, [reports, refused,
#       handoffs: only when the batch has hand-off state], idempotency keys...
# ARGV: token, epoch, lock ttl ms, the section sizes in one string ("nu nf nw nd nc nr nrd nref ni
#       nid ndead nundead": upserts, finished, workers, dropped workers, counters, reports, reports
#       done, refused, intents, intents done, dead letters, dead letters requeued), bucket
#       expire-at (s), idempotency ttl (s), channel ('' = no event), event message, refused cutoff
#       (ns: older refused ids are dropped), dead-letter cutoff (ms: older entries are dropped),
#       then upserts (id, json)..., finished (id, json)..., workers (id, json)..., dropped ids...,
#       counters (field, delta)..., reports (id, json)..., reports done (ids)...,
#       refused (ns, id)..., intents done (ids)..., intents (id, peer)...,
#       requeued dead letters (ids)..., dead letters (ms, id)..., one task id per idempotency key.
# (Every argument costs the client packing time on every commit: sizes travel as one string, and
# the hand-off keys only when used.)
FLUSH = (
    _OWNED
    + """
local n = {}
for x in string.gmatch(ARGV[4], '%d+') do n[#n + 1] = tonumber(x) end
local nu, nf, nw, nd, nc, nr, nrd, nref, ni, nid = n[1], n[2], n[3], n[4], n[5], n[6], n[7], n[8], n[9], n[10]
local ndead, nundead = n[11], n[12]
local handoff_keys = (nr + nrd + nref + ni + nid) > 0
local first_idem_key = handoff_keys and 11 or 8
local CHUNK = 7000
local i = 11

-- The argument cursor: each section below takes its arguments from ARGV[i] on and moves i past them.
local function each_chunk(cmd, key, n)  -- cmd key arg ... for n arguments, in chunks (CHUNK is even)
  local last = i + n - 1
  local j = i
  while j <= last do
    local e = math.min(j + CHUNK - 1, last)
    redis.call(cmd, key, unpack(ARGV, j, e))
    j = e + 1
  end
  i = last + 1
end

local function hset_pairs(key, npairs)  -- HSET key id value ... for npairs pairs
  each_chunk('HSET', key, 2 * npairs)
end

hset_pairs(KEYS[3], nu)                         -- active records
if nf > 0 then                                  -- finished: out of the active set, into the bucket
  local ids = {}
  for j = i, i + 2 * nf - 1, 2 do
    ids[#ids + 1] = ARGV[j]
    if #ids == CHUNK then
      redis.call('HDEL', KEYS[3], unpack(ids))
      ids = {}
    end
  end
  if #ids > 0 then redis.call('HDEL', KEYS[3], unpack(ids)) end
  hset_pairs(KEYS[6], nf)
  redis.call('EXPIREAT', KEYS[6], ARGV[5])
end
hset_pairs(KEYS[4], nw)                         -- workers
each_chunk('HDEL', KEYS[4], nd)                 -- dropped workers
for j = i, i + 2 * nc - 1, 2 do                 -- counters
  redis.call('HINCRBY', KEYS[5], ARGV[j], ARGV[j + 1])
end
i = i + 2 * nc
if handoff_keys then
  hset_pairs(KEYS[8], nr)                       -- reports
  each_chunk('HDEL', KEYS[8], nrd)              -- reports acknowledged
  if nref > 0 then                              -- ids declared unknown, and those expired
    each_chunk('ZADD', KEYS[9], 2 * nref)
    redis.call('ZREMRANGEBYSCORE', KEYS[9], '-inf', '(' .. ARGV[9])
  end
  each_chunk('HDEL', KEYS[10], nid)             -- hand-off intents ended (before new ones:
  hset_pairs(KEYS[10], ni)                      --   a task may end one and begin another at once)
end
each_chunk('ZREM', KEYS[7], nundead)            -- dead letters requeued (before new ones: a task
if ndead > 0 then                               --   may be requeued and fail again at once)
  each_chunk('ZADD', KEYS[7], 2 * ndead)        -- dead letters, and those past the retention
  redis.call('ZREMRANGEBYSCORE', KEYS[7], '-inf', '(' .. ARGV[10])
end
for k = first_idem_key, #KEYS do
  redis.call('SET', KEYS[k], ARGV[i], 'EX', ARGV[6])
  i = i + 1
end
if ARGV[7] ~= '' then
  redis.call('PUBLISH', ARGV[7], ARGV[8])
end
return 1
"""
)

# The privacy ledger: record one release if it keeps every task within budget.
# KEYS: owner, epoch, totals hash, releases zset (score: window end, us). ARGV: token, epoch, ttl
# ms, window, window start us, window end us, horizon start us, rho, rho budget, entry JSON,
# history kept (us before the window end). Returns {1, sum} or {0, kind, reason}: kind
# "released" when the window starts before the last released one ended, "budget" when the sum of
# rho of the releases whose window ends after the horizon start, this one included, is over the
# budget, or when the history no longer reaches back to the horizon start.
LEDGER = (
    _OWNED
    + """
local w = ARGV[4]
local start_us = tonumber(ARGV[5])
local lo_us = tonumber(ARGV[7])
local rho = tonumber(ARGV[8])
local cap = tonumber(ARGV[9])
local last = redis.call('HGET', KEYS[3], 'last_end_us')
if last and tonumber(last) > start_us then
  return {0, 'released', 'window ' .. w .. ' starts before the last released window ended (window ' ..
    tostring(redis.call('HGET', KEYS[3], 'last_window')) .. ')'}
end
local trimmed = redis.call('HGET', KEYS[3], 'trimmed_until_us')
if trimmed and lo_us < tonumber(trimmed) then
  return {0, 'budget', 'the ledger no longer holds the releases a task counting in window ' .. w ..
    ' may be in (history kept from ' .. trimmed .. ' us)'}
end
local sum = rho
for _, e in ipairs(redis.call('ZRANGEBYSCORE', KEYS[4], '(' .. ARGV[7], '+inf')) do
  sum = sum + cjson.decode(e)['rho']
end
if sum > cap then
  return {0, 'budget', string.format('over budget: rho %.17g for a task counting in window %s, budget %.17g',
    sum, w, cap)}
end
redis.call('ZADD', KEYS[4], ARGV[6], ARGV[10])
local cutoff = tonumber(ARGV[6]) - tonumber(ARGV[11])
if redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', cutoff) > 0 then
  redis.call('HSET', KEYS[3], 'trimmed_until_us', string.format('%d', cutoff))
end
redis.call('HSET', KEYS[3], 'last_window', w, 'last_end_us', ARGV[6])
redis.call('HINCRBY', KEYS[3], 'releases', 1)
local total = tonumber(redis.call('HGET', KEYS[3], 'rho_total') or '0') + rho  -- a double, kept exactly
redis.call('HSET', KEYS[3], 'rho_total', string.format('%.17g', total))
local worst = tonumber(redis.call('HGET', KEYS[3], 'worst_rho') or '0')
if sum > worst then redis.call('HSET', KEYS[3], 'worst_rho', string.format('%.17g', sum)) end
return {1, string.format('%.17g', sum)}
"""
)
