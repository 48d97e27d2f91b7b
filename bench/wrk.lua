-- wrk script for bench/http.py. Arguments after "--":
--   trivial                                    GET /v1/health
--   chat KEY USERS STRIDE IDEMPOTENCY BODY...  POST /v1/chat as user i % USERS
-- In chat mode, request i of thread t (i counting across threads: i = n * STRIDE + t) speaks
-- as bench-user-(i % USERS)@bench.test with BODY number (i // USERS + i) % #BODY, so a user
-- says something else each time round. IDEMPOTENCY "-" sends no X-Muxi-Idempotency-Key;
-- anything else is a prefix that makes a key unique to the request.
-- done() prints one line, "WRK_RESULT {json}", which bench/http.py reads.

local threads = 0

function setup(thread)
  thread:set("tid", threads)
  threads = threads + 1
end

local static, key, users, stride, prefix, n
local bodies = {}

function init(args)
  if args[1] == "trivial" then
    static = wrk.format("GET", "/v1/health")
    return
  end
  key, users, stride, prefix = args[2], tonumber(args[3]), tonumber(args[4]), args[5]
  for i = 6, #args do
    bodies[#bodies + 1] = args[i]
  end
  n = 0
end

function request()
  if static then
    return static
  end
  local i = n * stride + tid
  n = n + 1
  local headers = {
    ["Content-Type"] = "application/json",
    ["X-Muxi-Client-Key"] = key,
    ["X-Muxi-User-ID"] = string.format("bench-user-%d@bench.test", i % users),
  }
  if prefix ~= "-" then
    headers["X-Muxi-Idempotency-Key"] = string.format("%s-%d", prefix, i)
  end
  local body = bodies[(math.floor(i / users) + i) % #bodies + 1]
  return wrk.format("POST", "/v1/chat", headers, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_RESULT {"requests": %d, "duration_us": %d, "p50_us": %d, "p90_us": %d, ' ..
    '"p99_us": %d, "max_us": %d, "connect": %d, "read": %d, "write": %d, "status": %d, ' ..
    '"timeout": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, e.connect, e.read, e.write, e.status, e.timeout))
end
