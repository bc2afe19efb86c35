-- wrk script shared by both targets of benches/compare/run.sh, so conclave and etcd get the
-- same load shape: 8-byte keys, 256-byte values, one request in flight per connection.
--
--   wrk -t2 -c64 -d10s -s kv.lua http://HOST:PORT -- TARGET OP KEYSPACE
--
-- TARGET: conclave (DESIGN.md §7: PUT /v1/kv/{key}, GET /v1/kv/{key}?consistency=linearizable)
--         or etcd (v3 JSON gateway: POST /v3/kv/put, POST /v3/kv/range; a range without
--         "serializable" is linearizable).
-- OP:     put (uniform random keys), get (uniform random keys, linearizable) or fill (every
--         key of the keyspace in turn, so later reads find a value).
-- done() prints one line: RESULT <requests/s> <p50 µs> <p99 µs> <errors> <requests>
-- <non-2xx> <connect> <read> <write> <timeout> (the last five are wrk's error kinds).

local target, op, keyspace = "conclave", "put", 10000
local value = string.rep("v", 256)
local b64chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

local function b64(data)
  return ((data:gsub(".", function(x)
    local r, b = "", x:byte()
    for i = 8, 1, -1 do r = r .. (b % 2 ^ i - b % 2 ^ (i - 1) > 0 and "1" or "0") end
    return r
  end) .. "0000"):gsub("%d%d%d?%d?%d?%d?", function(x)
    if #x < 6 then return "" end
    local c = 0
    for i = 1, 6 do c = c + (x:sub(i, i) == "1" and 2 ^ (6 - i) or 0) end
    return b64chars:sub(c + 1, c + 1)
  end) .. ({ "", "==", "=" })[#data % 3 + 1])
end

local threads = {}
local next_id = 0
function setup(thread)
  thread:set("tid", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

local value_b64 = b64(value)
local key_b64 = {}
local counter = 0
local nthreads = 1

function init(args)
  target = args[1] or target
  op = args[2] or op
  keyspace = tonumber(args[3] or keyspace)
  nthreads = tonumber(args[4] or 1)
  math.randomseed(os.time() + tid * 7919)
  if target == "etcd" then
    -- Pre-encode every key once: the per-request cost must not include Lua base64.
    for i = 0, keyspace - 1 do key_b64[i] = b64(string.format("%08d", i)) end
  end
end

request = function()
  local k
  if op == "fill" then
    k = (tid + nthreads * counter) % keyspace
    counter = counter + 1
  else
    k = math.random(0, keyspace - 1)
  end
  if target == "etcd" then
    local body
    if op == "get" then
      body = '{"key":"' .. key_b64[k] .. '"}'
      return wrk.format("POST", "/v3/kv/range", { ["Content-Type"] = "application/json" }, body)
    end
    body = '{"key":"' .. key_b64[k] .. '","value":"' .. value_b64 .. '"}'
    return wrk.format("POST", "/v3/kv/put", { ["Content-Type"] = "application/json" }, body)
  end
  local key = string.format("%08d", k)
  if op == "get" then
    return wrk.format("GET", "/v1/kv/" .. key .. "?consistency=linearizable")
  end
  return wrk.format("PUT", "/v1/kv/" .. key, nil, value)
end

function done(summary, latency, requests)
  local errors = summary.errors.status + summary.errors.connect + summary.errors.read
    + summary.errors.write + summary.errors.timeout
  local seconds = summary.duration / 1e6
  local e = summary.errors
  io.write(string.format("RESULT %.1f %d %d %d %d %d %d %d %d %d\n", summary.requests / seconds,
    latency:percentile(50), latency:percentile(99), errors, summary.requests,
    e.status, e.connect, e.read, e.write, e.timeout))
end
