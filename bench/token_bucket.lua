-- The Redis token bucket applications use today: KEYS[1] = bucket, ARGV = rate/s, burst.
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(b[1]) or burst
local ts = tonumber(b[2]) or now
tokens = math.min(burst, tokens + (now - ts) * rate)
local ok = 0
if tokens >= 1 then
    tokens = tokens - 1
    ok = 1
end
redis.call('HSET', KEYS[1], 'tokens', tokens, 'ts', now)
return ok
