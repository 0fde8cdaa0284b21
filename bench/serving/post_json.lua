-- wrk script of `psn bench serving`: POST the body read from the file named by $PSN_WRK_BODY (Content-Type
-- $PSN_WRK_TYPE, application/json by default; $PSN_WRK_HEADER "Name: value" adds a header),
-- then print one line "PSN_WRK_JSON {...}" with the request count, errors and latency percentiles (us).
-- The body is set at load time, so wrk sends one pre-built request (no Lua call per request).

local path = os.getenv("PSN_WRK_BODY")
if not path then
  error("set PSN_WRK_BODY to the file holding the JSON body")
end
local file = assert(io.open(path, "rb"))
wrk.method = "POST"
wrk.body = file:read("*a")
file:close()
wrk.headers["Content-Type"] = os.getenv("PSN_WRK_TYPE") or "application/json"
local extra = os.getenv("PSN_WRK_HEADER")
if extra and extra ~= "" then
  local name, value = extra:match("^([^:]+):%s*(.*)$")
  wrk.headers[name] = value
end

function done(summary, latency, requests)
  local e = summary.errors
  local p = function(q) return latency:percentile(q) end
  io.write(string.format(
    'PSN_WRK_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"min":%d,"mean":%.1f,"stdev":%.1f,"max":%d,"p50":%d,"p90":%d,"p99":%d,"p999":%d}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.mean, latency.stdev, latency.max, p(50), p(90), p(99), p(99.9)))
end
