-- Append records to one replica's audit stream, only if they continue the stored chain.
-- KEYS[1] = the replica's stream
-- ARGV[1] = seq of the stored head the batch continues (0: empty), ARGV[2] = its hash ("")
-- ARGV[3..] = triples: seq, hash, record JSON (each record's stream id is "<seq>-0")
-- Returns {1} when written; {0, stored seq, stored hash} when the batch does not continue it.
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local head_seq, head_hash = 0, ''
if #last > 0 then
  head_seq = tonumber(string.match(last[1][1], '^(%d+)-'))
  local fields = last[1][2]
  for i = 1, #fields, 2 do
    if fields[i] == 'h' then head_hash = fields[i + 1] end
  end
end
if head_seq ~= tonumber(ARGV[1]) or head_hash ~= ARGV[2] then
  return {0, head_seq, head_hash}
end
for i = 3, #ARGV, 3 do
  redis.call('XADD', KEYS[1], ARGV[i] .. '-0', 'h', ARGV[i + 1], 'r', ARGV[i + 2])
end
return {1}
