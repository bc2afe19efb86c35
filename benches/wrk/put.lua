-- wrk script: PUT a 256-byte value to a fresh 8-byte-ish key per request (seed 001's shape).
-- Usage: wrk -t2 -c64 -d20s -s benches/wrk/put.lua --latency http://127.0.0.1:7101
local counter = 0
local value = string.rep("v", 256)
local thread_id = 0
local threads = {}

function setup(thread)
  thread:set("id", thread_id)
  thread_id = thread_id + 1
  table.insert(threads, thread)
end

function init(args)
  counter = 0
end

request = function()
  counter = counter + 1
  local path = string.format("/v1/kv/k%d-%d", id, counter)
  return wrk.format("PUT", path, nil, value)
end

function done(summary, latency, requests)
  local errors = summary.errors.status + summary.errors.connect + summary.errors.read
    + summary.errors.write + summary.errors.timeout
  io.write(string.format("non-2xx or socket errors: %d\n", errors))
end
