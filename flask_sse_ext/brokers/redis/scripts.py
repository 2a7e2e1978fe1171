"""The Lua scripts the Redis broker runs: each is one atomic round trip on one shard."""

from __future__ import annotations

__all__ = ["PUBLISH", "REPLAY", "HEADS", "ACQUIRE"]

# KEYS[1]: the channel's history stream. ARGV: pub/sub channel, entries to keep (the history
# size plus the floor entry), ttl, id, body, "1" for sharded pub/sub, conflation key ("": none).
# The payload is "<position> <id>\n<body>", or "<position>\t<key> <id>\n<body>" with a key (a
# key has the grammar of a channel name: no space, no tab).
PUBLISH = """
local pos
local head
if (ARGV[7] or '') == '' then
  pos = redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[2], '*', 'i', ARGV[4], 'b', ARGV[5])
  head = pos
else
  pos = redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[2], '*', 'i', ARGV[4], 'b', ARGV[5], 'k', ARGV[7])
  head = pos .. '\\t' .. ARGV[7]
end
if tonumber(ARGV[3]) > 0 then redis.call('EXPIRE', KEYS[1], ARGV[3]) end
local payload = head .. ' ' .. ARGV[4] .. '\\n' .. ARGV[5]
if ARGV[6] == '1' then
  redis.call('SPUBLISH', ARGV[1], payload)
else
  redis.call('PUBLISH', ARGV[1], payload)
end
return pos
"""

# KEYS[1]: the channel's history stream. ARGV[1]: "" for the head only, "~" for a cursor no
# broker issued, else the cursor text.
# Returns {head, missed (0/1), id1, fields1, id2, fields2, ...} of the entries after the cursor.
REPLAY = """
local function pos(text)
  local ms, seq = string.match(text, '^(%d+)-(%d+)$')
  if ms == nil then return nil end
  return {tonumber(ms), tonumber(seq)}
end
local function less(a, b)
  return a[1] < b[1] or (a[1] == b[1] and a[2] < b[2])
end
-- The oldest entry kept marks the floor: it is not replayed, and a cursor older than it
-- lost events once the stream was trimmed (the stream keeps one more than the history size).
local head, floor, added, length = '0-0', '0-0', 0, 0
if redis.call('EXISTS', KEYS[1]) == 1 then
  local info = redis.call('XINFO', 'STREAM', KEYS[1])
  for i = 1, #info, 2 do
    local k, v = info[i], info[i + 1]
    if k == 'last-generated-id' then head = v end
    if k == 'recorded-first-entry-id' then floor = v end
    if k == 'entries-added' then added = v end
    if k == 'length' then length = v end
  end
end
if ARGV[1] == '' then return {head, 0} end
if ARGV[1] == '~' then return {head, 1} end
local after = nil
if pos(ARGV[1]) ~= nil then
  after = ARGV[1]
  -- Every position a client holds is an entry's (or 0-0): one that history does not hold was
  -- trimmed, expired, or lost when a replica that had not received it became the primary.
  -- What followed it is unknown.
  if after ~= '0-0' and #redis.call('XRANGE', KEYS[1], after, after) == 0 then
    return {head, 1}
  end
else
  -- A publisher's id: look for it from the newest entry back, a page at a time.
  local upper = '+'
  while after == nil do
    local page = redis.call('XREVRANGE', KEYS[1], upper, '-', 'COUNT', 100)
    if #page == 0 then return {head, 1} end
    for _, entry in ipairs(page) do
      if entry[2][2] == ARGV[1] then after = entry[1] break end
    end
    upper = '(' .. page[#page][1]
  end
end
local p = pos(after)
if less(pos(head), p) or (added > length and less(p, pos(floor))) then return {head, 1} end
local out = {head, 0}
for _, entry in ipairs(redis.call('XRANGE', KEYS[1], '(' .. after, '+')) do
  out[#out + 1] = entry[1]
  out[#out + 1] = entry[2]
end
return out
"""

# KEYS: history streams. Returns each one's newest position ("0-0" where there is none).
HEADS = """
local out = {}
for i, key in ipairs(KEYS) do
  out[i] = '0-0'
  if redis.call('EXISTS', key) == 1 then
    local info = redis.call('XINFO', 'STREAM', key)
    for j = 1, #info, 2 do
      if info[j] == 'last-generated-id' then out[i] = info[j + 1] end
    end
  end
end
return out
"""

# KEYS[1]: the cap's sorted set. ARGV: now, lease expiry, member, limit. Returns 1 if admitted.
ACQUIRE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[2]) - tonumber(ARGV[1])) + 1)
return 1
"""
