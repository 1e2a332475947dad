-- wrk script of scripts/bench: replays pre-built requests, picked at random.
--
--   wrk ... -s replay.lua URL -- REQUESTS_FILE [random|seq]
--
-- REQUESTS_FILE has one request per line, tab-separated: METHOD, PATH (with query),
-- TOKEN (may be empty), BODY (JSON, may be empty). scripts/bench writes it with the
-- tokens (signed JWTs of the active users) and the random ids, cursors and bodies.
-- "random" (the measured runs) picks a line at random for every request; "seq" (the
-- warm-up) walks the lines in order, each thread from its own offset, so a short warm-up
-- touches as many distinct users as it can. done() prints one line "WRKJSON {...}".

local requests = {}
local mode = "random"
local next_index = 0
local thread_count = 0

function setup(thread)
  thread:set("thread_id", thread_count)
  thread_count = thread_count + 1
end

function init(args)
  local path = args[1]
  mode = args[2] or "random"
  for line in io.lines(path) do
    local method, target, token, body = line:match("^([^\t]*)\t([^\t]*)\t([^\t]*)\t?(.*)$")
    if method then
      local headers = {}
      if token ~= "" then headers["Authorization"] = "Bearer " .. token end
      if body ~= "" then
        headers["Content-Type"] = "application/json"
      else
        body = nil
      end
      requests[#requests + 1] = wrk.format(method, target, headers, body)
    end
  end
  if #requests == 0 then error("no requests in " .. path) end
  local id = tonumber(thread_id) or 0
  math.randomseed(os.time() + id * 7919)
  next_index = (id * 104729) % #requests
end

function request()
  if mode == "seq" then
    next_index = next_index % #requests + 1
    return requests[next_index]
  end
  return requests[math.random(#requests)]
end

function done(summary, latency, requests_stats)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,"errors_connect":%d,' ..
    '"errors_read":%d,"errors_write":%d,"errors_status":%d,"errors_timeout":%d,' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean))
end
