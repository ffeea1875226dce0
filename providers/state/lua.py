"""The Lua scripts of providers/state/redis_store.py: each one read-modify-write of the shared router state, run
atomically inside Redis (KEYS and ARGV are listed above each script; RedisStore registers and calls them)."""

from __future__ import annotations

PARSE = """
local function parse(v)
  if not v then return 'closed', 0, '0', 0 end
  local s, u, p, l = string.match(v, '([^|]*)|([^|]*)|([^|]*)|([^|]*)')
  return s, tonumber(u), p, tonumber(l)
end
local function fmt(x) return string.format('%.17g', x) end
"""
# In-flight publishing, shared by the scripts below. kg: model -> total; kb: 'replica|model' -> 'count|seq';
# kr: replica -> wall time last heard from. set_count stores replica `rid`'s absolute count for `model` when
# `seq` is newer than the stored one and moves the total by the difference. publish reads, from ARGV[i]:
# rid, now ('' = do not refresh the replica's liveness), n, then n triples (model, count, seq).
PUBLISH = """
local function set_count(kg, kb, rid, model, count, seq)
  local field = rid .. '|' .. model
  local old, oseq = 0, -1
  local v = redis.call('HGET', kb, field)
  if v then
    local a, b = string.match(v, '([^|]*)|([^|]*)')
    old, oseq = tonumber(a), tonumber(b)
  end
  if tonumber(seq) <= oseq then return end
  redis.call('HSET', kb, field, count .. '|' .. seq)
  local d = tonumber(count) - old
  if d ~= 0 and redis.call('HINCRBY', kg, model, string.format('%d', d)) < 0 then
    redis.call('HSET', kg, model, 0)
  end
end
local function publish(kg, kb, kr, i)
  local rid, n = ARGV[i], tonumber(ARGV[i + 2])
  if ARGV[i + 1] ~= '' then redis.call('ZADD', kr, ARGV[i + 1], rid) end
  for j = 0, n - 1 do
    local at = i + 3 + 3 * j
    set_count(kg, kb, rid, ARGV[at], ARGV[at + 1], ARGV[at + 2])
  end
end
"""
# KEYS: circuits, inflight, inflight_by, replicas; ARGV: model, now, probe lease seconds, force, claim count,
# claim seq, then the publish block. Returns 1 (allowed, circuit closed), 2 (allowed: this call is the half-open
# probe, holding it for the lease) or 0 (refused: open, or an unexpired probe lease is held by any replica).
# force '1' (probe()) claims the half-open probe of an open circuit before its cooldown ends; '0' (allow()) waits
# for the cooldown. When allowed, this replica's count for the model becomes the claim count.
ALLOW = (
    PARSE
    + PUBLISH
    + """
publish(KEYS[2], KEYS[3], KEYS[4], 7)
local function gate()
  local v = redis.call('HGET', KEYS[1], ARGV[1])
  if not v then return 1 end
  local s, u, p, l = parse(v)
  local now = tonumber(ARGV[2])
  if s == 'closed' then return 1 end
  if s == 'open' then
    if now < u and ARGV[4] ~= '1' then return 0 end
    p = '0'
  end
  if p == '1' and now < l then return 0 end
  redis.call('HSET', KEYS[1], ARGV[1], 'half_open|' .. fmt(u) .. '|1|' .. fmt(now + tonumber(ARGV[3])))
  return 2
end
local r = gate()
if r > 0 then set_count(KEYS[2], KEYS[3], ARGV[7], ARGV[1], ARGV[5], ARGV[6]) end
return r
"""
)
# KEYS: circuits, fails zset, stats hash, latency hash, models set, inflight, inflight_by, replicas
# ARGV: model, provider, outcome, now, failures, window, cooldown, min_samples, latency_ms|'', in, out, cost, alpha,
#       nonce, probe ('1': this call held the half-open probe; only its outcome counts in a half-open circuit),
#       then the publish block. Returns 'opened', 'closed', 'released' (a half-open probe ended without a
#       verdict) or ''.
RECORD = (
    PARSE
    + PUBLISH
    + """
publish(KEYS[6], KEYS[7], KEYS[8], 16)
local model, outcome, now = ARGV[1], ARGV[3], tonumber(ARGV[4])
if outcome ~= 'cancelled' then
  redis.call('SADD', KEYS[5], model)
  redis.call('HSET', KEYS[3], 'provider', ARGV[2])
  redis.call('HINCRBY', KEYS[3], 'calls', 1)
  if outcome ~= 'ok' then redis.call('HINCRBY', KEYS[3], 'failures', 1) end
  if ARGV[10] ~= '0' then redis.call('HINCRBY', KEYS[3], 'input_tokens', ARGV[10]) end
  if ARGV[11] ~= '0' then redis.call('HINCRBY', KEYS[3], 'output_tokens', ARGV[11]) end
  if tonumber(ARGV[12]) ~= 0 then redis.call('HINCRBYFLOAT', KEYS[3], 'cost', ARGV[12]) end
  if outcome == 'ok' and ARGV[9] ~= '' then
    local lat = tonumber(ARGV[9])
    local prev = redis.call('HGET', KEYS[3], 'latency_ms')
    if prev then lat = tonumber(ARGV[13]) * lat + (1 - tonumber(ARGV[13])) * tonumber(prev) end
    redis.call('HSET', KEYS[3], 'latency_ms', fmt(lat))
    local n = redis.call('HINCRBY', KEYS[3], 'samples', 1)
    if n >= tonumber(ARGV[8]) then redis.call('HSET', KEYS[4], model, fmt(lat)) end
  end
end
local v = redis.call('HGET', KEYS[1], model)
if not v and outcome ~= 'fail' then return '' end
local s, u, p, l = parse(v)
if s == 'half_open' then
  if p ~= '1' or ARGV[15] ~= '1' then return '' end
  if outcome == 'ok' then
    redis.call('HSET', KEYS[1], model, 'closed|0|0|0')
    redis.call('DEL', KEYS[2])
    return 'closed'
  end
  if outcome == 'fail' then
    redis.call('HSET', KEYS[1], model, 'open|' .. fmt(now + tonumber(ARGV[7])) .. '|0|0')
    return 'opened'
  end
  redis.call('HSET', KEYS[1], model, 'half_open|' .. fmt(u) .. '|0|0')
  return 'released'
end
if s == 'open' or outcome ~= 'fail' then return '' end
redis.call('ZADD', KEYS[2], now, ARGV[14])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', fmt(now - tonumber(ARGV[6])))
redis.call('EXPIRE', KEYS[2], math.ceil(tonumber(ARGV[6])) + 1)
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[5]) then
  redis.call('HSET', KEYS[1], model, 'open|' .. fmt(now + tonumber(ARGV[7])) .. '|0|0')
  return 'opened'
end
return ''
"""
)
# KEYS: inflight, inflight_by, replicas; ARGV: the publish block.
FLUSH = (
    PUBLISH
    + """
publish(KEYS[1], KEYS[2], KEYS[3], 1)
return 0
"""
)
# KEYS: inflight, inflight_by, replicas, then spend hashes to report; ARGV: replica ttl, then the publish block.
# Publishes, forgets replicas not heard from for ttl seconds and every count not of a live replica, recomputes the
# totals from the per-replica counts. Returns {live replicas, replicas dropped, in-flight calls dropped, then
# spent and reserved of each spend hash}.
HEARTBEAT = (
    PARSE
    + PUBLISH
    + """
publish(KEYS[1], KEYS[2], KEYS[3], 2)
local dead = redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', '(' .. fmt(tonumber(ARGV[3]) - tonumber(ARGV[1])))
local live = {}
for _, r in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1)) do live[r] = true end
local sums, dropped = {}, 0
local all = redis.call('HGETALL', KEYS[2])
for j = 1, #all, 2 do
  local f = all[j]
  local bar = string.find(f, '|', 1, true)
  local c = tonumber(string.match(all[j + 1], '^([^|]*)')) or 0
  if bar and live[string.sub(f, 1, bar - 1)] then
    local model = string.sub(f, bar + 1)
    sums[model] = (sums[model] or 0) + c
  else
    dropped = dropped + c
    redis.call('HDEL', KEYS[2], f)
  end
end
local cur = redis.call('HGETALL', KEYS[1])
for j = 1, #cur, 2 do
  local want = sums[cur[j]] or 0
  if want <= 0 then redis.call('HDEL', KEYS[1], cur[j])
  elseif tonumber(cur[j + 1]) ~= want then redis.call('HSET', KEYS[1], cur[j], string.format('%d', want)) end
  sums[cur[j]] = nil
end
for model, c in pairs(sums) do
  if c > 0 then redis.call('HSET', KEYS[1], model, string.format('%d', c)) end
end
local out = {redis.call('ZCARD', KEYS[3]), dead, dropped}
for j = 4, #KEYS do
  local h = redis.call('HMGET', KEYS[j], 'spent', 'reserved')
  out[#out + 1] = h[1] or '0'
  out[#out + 1] = h[2] or '0'
end
return out
"""
)
# KEYS: inflight, inflight_by, replicas; ARGV: replica id. Removes the replica and its counts.
RETIRE = """
local pre = ARGV[1] .. '|'
local all = redis.call('HGETALL', KEYS[2])
for j = 1, #all, 2 do
  if string.sub(all[j], 1, #pre) == pre then
    local c = tonumber(string.match(all[j + 1], '^([^|]*)')) or 0
    local model = string.sub(all[j], #pre + 1)
    if c ~= 0 and redis.call('HINCRBY', KEYS[1], model, string.format('%d', -c)) <= 0 then
      redis.call('HDEL', KEYS[1], model)
    end
    redis.call('HDEL', KEYS[2], all[j])
  end
end
redis.call('ZREM', KEYS[3], ARGV[1])
return 0
"""
# KEYS: spend hash; ARGV: amount, limit, ttl. Returns {1|0, used before, used after} (used = spent + reserved).
RESERVE = """
local spent = tonumber(redis.call('HGET', KEYS[1], 'spent') or '0')
local reserved = tonumber(redis.call('HGET', KEYS[1], 'reserved') or '0')
local used = spent + reserved
if used + tonumber(ARGV[1]) > tonumber(ARGV[2]) + 1e-12 then
  return {0, string.format('%.17g', used), string.format('%.17g', used)}
end
redis.call('HSET', KEYS[1], 'reserved', string.format('%.17g', reserved + tonumber(ARGV[1])))
redis.call('EXPIRE', KEYS[1], ARGV[3])
return {1, string.format('%.17g', used), string.format('%.17g', used + tonumber(ARGV[1]))}
"""
# KEYS: spend hash; ARGV: reserved, actual, ttl. Returns {spent after, reserved after}.
SETTLE = """
local reserved = tonumber(redis.call('HGET', KEYS[1], 'reserved') or '0') - tonumber(ARGV[1])
if reserved < 0 then reserved = 0 end
redis.call('HSET', KEYS[1], 'reserved', string.format('%.17g', reserved))
local total = redis.call('HINCRBYFLOAT', KEYS[1], 'spent', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return {total, string.format('%.17g', reserved)}
"""
