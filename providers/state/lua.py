"""The Lua scripts of providers/state/: each one read-modify-write of the shared router state, run atomically
inside Redis (KEYS and ARGV are listed above each script; redis_store.py and ratelimit.py register them, and
RedisStore's mixins call them)."""

from __future__ import annotations

FMT = """
local function fmt(x) return string.format('%.17g', x) end
local function num(x) return tonumber(x or '0') or 0 end
"""
PARSE = (
    FMT
    + """
local function parse(v)
  if not v then return 'closed', 0, '0', 0 end
  local s, u, p, l = string.match(v, '([^|]*)|([^|]*)|([^|]*)|([^|]*)')
  return s, tonumber(u), p, tonumber(l)
end
"""
)
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
# KEYS: circuits, fails zset, stats hash, latency hash, models set, inflight, inflight_by, replicas, health hash
#       (calls and ok calls per HEALTH_BUCKET_S bucket, `<bucket>:n` / `<bucket>:ok`, kept HEALTH_HORIZON_S)
# ARGV: model, provider, outcome, now, failures, window, cooldown, min_samples, latency_ms|'', in, out, cost, alpha,
#       nonce, probe ('1': this call held the half-open probe; only its outcome counts in a half-open circuit),
#       then the publish block. Returns 'opened', 'closed', 'released' (a half-open probe ended without a
#       verdict) or ''.
HEALTH_BUCKET_S = 10  # success rates in Redis are counted per 10-second bucket ...
HEALTH_HORIZON_S = 3600  # ... for an hour: a longer health.window is measured over the last hour
RECORD = (
    f"local HEALTH_BUCKET_S, HEALTH_HORIZON_S = {HEALTH_BUCKET_S}, {HEALTH_HORIZON_S}\n"
    + PARSE
    + PUBLISH
    + """
publish(KEYS[6], KEYS[7], KEYS[8], 16)
local model, outcome, now = ARGV[1], ARGV[3], tonumber(ARGV[4])
if outcome ~= 'cancelled' then
  redis.call('SADD', KEYS[5], model)
  redis.call('HSET', KEYS[3], 'provider', ARGV[2])
  redis.call('HINCRBY', KEYS[3], 'calls', 1)
  if outcome ~= 'ok' then redis.call('HINCRBY', KEYS[3], 'failures', 1) end
  if outcome == 'ok' or outcome == 'fail' then
    local b = math.floor(now / HEALTH_BUCKET_S)
    redis.call('HINCRBY', KEYS[9], b .. ':n', 1)
    if outcome == 'ok' then redis.call('HINCRBY', KEYS[9], b .. ':ok', 1) end
    if redis.call('HLEN', KEYS[9]) > 2 * (HEALTH_HORIZON_S / HEALTH_BUCKET_S) + 8 then
      local first = b - HEALTH_HORIZON_S / HEALTH_BUCKET_S
      for _, f in ipairs(redis.call('HKEYS', KEYS[9])) do
        if tonumber(string.match(f, '^(-?%d+):')) < first then redis.call('HDEL', KEYS[9], f) end
      end
    end
    redis.call('EXPIRE', KEYS[9], HEALTH_HORIZON_S + 60)
  end
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
# Budget spend, shared by the scripts below. A spend hash (`pfx .. key`, pfx = the store's prefix .. 'spend:')
# holds spent, reserved (the sum of the key's holds), and after a Redis reset pre (the part of the spend and holds
# re-published by the replicas that Redis had before the reset) and floor (the largest spent + reserved a replica
# saw before it): the key's spent figure is spent + max(0, floor - pre), i.e. it also counts what replicas that
# have not re-published yet (or died) had, as far as the freshest figure seen tells. kh (holds): 'replica|key' ->
# amount held; kl (leases): replica -> wall time its holds' lease ends. Spend hashes are named inside the scripts
# (a standalone Redis, not a cluster).
HOLDS = (
    FMT
    + """
local function figures(k)
  local v = redis.call('HMGET', k, 'spent', 'reserved', 'pre', 'floor')
  local s, top = num(v[1]), num(v[4]) - num(v[3])
  if top > 0 then s = s + top end
  return s, num(v[2])
end
local function set_hold(kh, pfx, ttl, rid, key, amount)
  local f = rid .. '|' .. key
  local old = num(redis.call('HGET', kh, f))
  if amount < 1e-12 then amount = 0 end
  if amount == old then return end
  if amount > 0 then redis.call('HSET', kh, f, fmt(amount)) else redis.call('HDEL', kh, f) end
  local k = pfx .. key
  local r = num(redis.call('HGET', k, 'reserved')) + amount - old
  if r < 1e-12 then r = 0 end
  redis.call('HSET', k, 'reserved', fmt(r))
  redis.call('EXPIRE', k, ttl)
end
local function reap(kl, kh, pfx, ttl, now)
  local gone = redis.call('ZRANGEBYSCORE', kl, '-inf', '(' .. fmt(now))
  if #gone == 0 then return 0 end
  local dead, n = {}, 0
  for _, r in ipairs(gone) do dead[r] = true end
  redis.call('ZREMRANGEBYSCORE', kl, '-inf', '(' .. fmt(now))
  local all = redis.call('HGETALL', kh)
  for j = 1, #all, 2 do
    local bar = string.find(all[j], '|', 1, true)
    if bar and dead[string.sub(all[j], 1, bar - 1)] then
      set_hold(kh, pfx, ttl, string.sub(all[j], 1, bar - 1), string.sub(all[j], bar + 1), 0)
      n = n + 1
    end
  end
  return n
end
local function epoch_ok(ke, mine) return mine ~= '' and redis.call('GET', ke) == mine end
local function start_grace(kg, now, seconds)
  local ends = num(redis.call('HGET', kg, 'until'))
  if ends <= now then redis.call('DEL', kg) end
  if now + seconds > ends then redis.call('HSET', kg, 'until', fmt(now + seconds)) end
  redis.call('EXPIRE', kg, math.ceil(seconds) + 3600)
end
"""
)
# KEYS: inflight, inflight_by, replicas, leases, holds, epoch, grace.
# ARGV: replica ttl, now, the epoch this replica knows ('' = none yet), a new epoch (set when none is), this
# replica's lease end, pfx, spend ttl, republish ('1': the ledger section is to be re-published if the epoch is not
# this replica's), grace seconds (a replica that knew another epoch and re-publishes starts a grace of this length),
# then four sections, each a count then its entries: this replica's holds (key, amount), spend it
# settled during an outage (key, amount), its ledger (key, spent, pushed, floor), keys to report (key); then the
# publish block.
# In-flight: publishes, forgets replicas not heard from for ttl seconds and every count not of a live replica,
# recomputes the totals from the per-replica counts. Holds: releases those whose lease ended (or with no lease),
# sets this replica's to exactly the listed ones and renews their lease, recomputes the reported keys' reserved
# from the holds. Spend: when the epoch is this replica's, adds the outage spend; when it is missing or another
# (a Redis reset) and republish is '1', sets it if missing and adds the ledger (spent to spent, pushed to pre, floor
# raises floor); otherwise leaves both to the next call. Returns {live replicas, replicas dropped, in-flight calls
# dropped, holds released, status ('ok', 'adopted': the ledger was re-published, 'reset': it needs to be), the
# epoch, then spent and reserved of each reported key}.
HEARTBEAT = (
    PUBLISH
    + HOLDS
    + """
local now, pfx, ttl = tonumber(ARGV[2]), ARGV[6], ARGV[7]
local i = 10
local function section(width)
  local at, n = i + 1, tonumber(ARGV[i])
  i = i + 1 + n * width
  return at, n
end
local hs, hn = section(2)
local ps, pn = section(2)
local ls, ln = section(4)
local ks, kn = section(1)
local rid = ARGV[i]
publish(KEYS[1], KEYS[2], KEYS[3], i)
local dead = redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', '(' .. fmt(now - tonumber(ARGV[1])))
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
local released = reap(KEYS[4], KEYS[5], pfx, ttl, now)
redis.call('ZADD', KEYS[4], ARGV[5], rid)
local leased, own = {}, {}
for _, r in ipairs(redis.call('ZRANGE', KEYS[4], 0, -1)) do leased[r] = true end
for j = 0, hn - 1 do own[ARGV[hs + 2 * j]] = tonumber(ARGV[hs + 2 * j + 1]) end
all = redis.call('HGETALL', KEYS[5])
for j = 1, #all, 2 do
  local bar = string.find(all[j], '|', 1, true)
  local r = bar and string.sub(all[j], 1, bar - 1)
  if not bar then
    redis.call('HDEL', KEYS[5], all[j])
  elseif r == rid then
    if not own[string.sub(all[j], bar + 1)] then set_hold(KEYS[5], pfx, ttl, rid, string.sub(all[j], bar + 1), 0) end
  elseif not leased[r] then
    set_hold(KEYS[5], pfx, ttl, r, string.sub(all[j], bar + 1), 0)
    released = released + 1
  end
end
for key, amount in pairs(own) do set_hold(KEYS[5], pfx, ttl, rid, key, amount) end
local epoch, status = redis.call('GET', KEYS[6]), 'ok'
if epoch and epoch == ARGV[3] then
  for j = 0, pn - 1 do
    local k, amount = pfx .. ARGV[ps + 2 * j], ARGV[ps + 2 * j + 1]
    if tonumber(amount) ~= 0 then
      redis.call('HINCRBYFLOAT', k, 'spent', amount)
      redis.call('EXPIRE', k, ttl)
    end
  end
elseif ARGV[8] == '1' then
  if not epoch then
    epoch = ARGV[4]
    redis.call('SET', KEYS[6], epoch)
  end
  for j = 0, ln - 1 do
    local at = ls + 4 * j
    local k = pfx .. ARGV[at]
    if tonumber(ARGV[at + 1]) ~= 0 then redis.call('HINCRBYFLOAT', k, 'spent', ARGV[at + 1]) end
    if tonumber(ARGV[at + 2]) ~= 0 then redis.call('HINCRBYFLOAT', k, 'pre', ARGV[at + 2]) end
    local floor = tonumber(ARGV[at + 3])
    if floor > num(redis.call('HGET', k, 'floor')) then redis.call('HSET', k, 'floor', fmt(floor)) end
    if redis.call('EXISTS', k) == 1 then redis.call('EXPIRE', k, ttl) end
  end
  status = 'adopted'
  if ARGV[3] ~= '' then start_grace(KEYS[7], now, tonumber(ARGV[9])) end
else
  status = 'reset'
end
local out = {redis.call('ZCARD', KEYS[3]), dead, dropped, released, status, epoch or ''}
if kn > 0 then
  local held = {}
  all = redis.call('HGETALL', KEYS[5])
  for j = 1, #all, 2 do
    local key = string.sub(all[j], string.find(all[j], '|', 1, true) + 1)
    held[key] = (held[key] or 0) + num(all[j + 1])
  end
  for j = 0, kn - 1 do
    local k = pfx .. ARGV[ks + j]
    local s, r = figures(k)
    local want = held[ARGV[ks + j]] or 0
    if math.abs(r - want) > 1e-9 then
      redis.call('HSET', k, 'reserved', fmt(want))
      r = want
    end
    out[#out + 1] = fmt(s)
    out[#out + 1] = fmt(r)
  end
end
return out
"""
)
# KEYS: inflight, inflight_by, replicas, leases, holds; ARGV: replica id, pfx, spend ttl. Removes the replica, its
# counts and its holds.
RETIRE = (
    HOLDS
    + """
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
all = redis.call('HGETALL', KEYS[5])
for j = 1, #all, 2 do
  if string.sub(all[j], 1, #pre) == pre then
    set_hold(KEYS[5], ARGV[2], ARGV[3], ARGV[1], string.sub(all[j], #pre + 1), 0)
  end
end
redis.call('ZREM', KEYS[4], ARGV[1])
return 0
"""
)
# KEYS: spend hash, holds, leases, epoch, grace; ARGV: epoch, replica id, key, amount, limit, spend ttl, now, lease
# end, pfx. Releases expired holds, then holds `amount` for the replica if spent + reserved + amount <= limit (and
# renews its lease). During the grace after a Redis reset (now < grace's `until`) a replica gets one hold per key:
# the grace hash records it ('replica|key'). Returns {1|0, spent + reserved before, spent, reserved after}, {-1}
# when the epoch is not the replica's (a Redis reset: nothing done), or {-2, spent + reserved, spent, until} when
# the replica already had its hold of the grace on this key and the amount would fit (nothing done: wait until
# `until`; a request that would not fit is refused at once).
RESERVE = (
    HOLDS
    + """
if not epoch_ok(KEYS[4], ARGV[1]) then return {-1, '0', '0', '0'} end
local now = tonumber(ARGV[7])
reap(KEYS[3], KEYS[2], ARGV[9], ARGV[6], now)
local s, r = figures(KEYS[1])
local used, amount = s + r, tonumber(ARGV[4])
local f = ARGV[2] .. '|' .. ARGV[3]
if used + amount > tonumber(ARGV[5]) + 1e-12 then return {0, fmt(used), fmt(s), fmt(r)} end
local ends = num(redis.call('HGET', KEYS[5], 'until'))
local grace = now < ends
if grace and redis.call('HEXISTS', KEYS[5], f) == 1 then return {-2, fmt(used), fmt(s), fmt(ends)} end
if grace then redis.call('HSET', KEYS[5], f, '1') end
redis.call('HSET', KEYS[2], f, fmt(num(redis.call('HGET', KEYS[2], f)) + amount))
redis.call('HSET', KEYS[1], 'reserved', fmt(r + amount))
redis.call('EXPIRE', KEYS[1], ARGV[6])
redis.call('ZADD', KEYS[3], ARGV[8], ARGV[2])
return {1, fmt(used), fmt(s), fmt(r + amount)}
"""
)
# KEYS: spend hash, holds, leases, epoch (grace unused); ARGV: epoch, replica id, key, release, actual, spend ttl,
# lease end, pfx. Releases up to `release` of the replica's own hold (never more than it holds: a hold released
# after its lease ended is not released twice) and adds `actual` to spent. Returns {1, spent after, reserved
# after}, or {-1}.
SETTLE = (
    HOLDS
    + """
if not epoch_ok(KEYS[4], ARGV[1]) then return {-1, '0', '0'} end
local old = num(redis.call('HGET', KEYS[2], ARGV[2] .. '|' .. ARGV[3]))
local release = tonumber(ARGV[4])
if release > old then release = old end
if release > 0 then set_hold(KEYS[2], ARGV[8], ARGV[6], ARGV[2], ARGV[3], old - release) end
if old - release >= 1e-12 then redis.call('ZADD', KEYS[3], ARGV[7], ARGV[2]) end
if tonumber(ARGV[5]) ~= 0 then
  redis.call('HINCRBYFLOAT', KEYS[1], 'spent', ARGV[5])
  redis.call('EXPIRE', KEYS[1], ARGV[6])
end
local s, r = figures(KEYS[1])
return {1, fmt(s), fmt(r)}
"""
)
# KEYS: spend hash, holds, leases, epoch (grace unused); ARGV: epoch, now, pfx, spend ttl. Releases expired holds;
# returns {1, spent, reserved}, or {-1}.
SPENT = (
    HOLDS
    + """
if not epoch_ok(KEYS[4], ARGV[1]) then return {-1, '0', '0'} end
reap(KEYS[3], KEYS[2], ARGV[3], ARGV[4], tonumber(ARGV[2]))
local s, r = figures(KEYS[1])
return {1, fmt(s), fmt(r)}
"""
)

# Rate limits (providers/state/ratelimit.py, GCRA). A bucket key holds its theoretical arrival time `tat` (epoch
# seconds as text) and expires once the bucket is full again. RATE_ACQUIRE: KEYS = the buckets; ARGV = now,
# period, then (limit, cost) per bucket. Admits the request against every bucket or none; returns
# {1 | 0, then per bucket its tat before (at least now) and after the cost, as text}.
RATE_ACQUIRE = (
    FMT
    + """
local now, period = tonumber(ARGV[1]), tonumber(ARGV[2])
local ok, out, news = 1, {}, {}
for i = 1, #KEYS do
  local step = period / tonumber(ARGV[1 + 2 * i])
  local tat = tonumber(redis.call('GET', KEYS[i]) or '') or now
  if tat < now then tat = now end
  local new = tat + tonumber(ARGV[2 + 2 * i]) * step
  if new - now > period + step * 1e-2 + 1e-5 then ok = 0 end
  news[i] = new
  out[2 * i], out[2 * i + 1] = fmt(tat), fmt(new)
end
out[1] = ok
if ok == 1 then
  for i = 1, #KEYS do
    redis.call('SET', KEYS[i], fmt(news[i]), 'PX', math.ceil((news[i] - now) * 1000) + 1000)
  end
end
return out
"""
)
# RATE_ADJUST: KEYS[1] = a bucket; ARGV = now, period, limit, delta (units; negative gives them back, never below
# a full bucket).
RATE_ADJUST = (
    FMT
    + """
local now, period = tonumber(ARGV[1]), tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '') or now
if tat < now then tat = now end
local new = tat + tonumber(ARGV[4]) * period / tonumber(ARGV[3])
if new <= now then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], fmt(new), 'PX', math.ceil((new - now) * 1000) + 1000)
end
return 1
"""
)
