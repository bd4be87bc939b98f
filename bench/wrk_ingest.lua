-- wrk script for bench/ingest.py: POST telemetry and count what comes back.
--
--   wrk -t1 -c64 -d15s --latency -s bench/wrk_ingest.lua http://127.0.0.1:PORT -- point
--   wrk -t1 -c64 -d15s --latency -s bench/wrk_ingest.lua http://127.0.0.1:PORT -- batch 1000
--
-- point: one point per request to /telemetry, satellite id and battery vary per request.
-- batch: one pre-built JSON array of N points per request to /telemetry/batch.
--
-- Every response goes through response(): 202s are counted, any other status is counted
-- by code, and in batch mode a 202 whose body does not say "accepted":N counts as partial.
-- done() prints one line "WRK_RESULT {json}" with the counts (summed over threads), the
-- number of requests handed to wrk (sent) and the latency percentiles in microseconds.

local threads = {}

function setup(thread)
  thread:set("thread_no", #threads)
  table.insert(threads, thread)
end

mode = "point"
batch_n = 0
sent = 0
ok = 0
partial = 0
other = {}

local counter = 0
local thread_no_offset = 0
local batch_request = nil
local accepted_marker = nil

local function point_json(i)
  return string.format(
    '{"satellite_id":"SAT-%04d","battery_charge_percent":%.1f,'
      .. '"storage_usage_mb":45000.0,"signal_strength_dbm":-55.0}',
    i % 1000,
    50 + (i % 50)
  )
end

function init(args)
  mode = args[1] or "point"
  thread_no_offset = (thread_no or 0) * 7919
  if mode == "batch" then
    batch_n = tonumber(args[2] or "1000")
    local parts = {}
    for i = 1, batch_n do
      parts[i] = point_json(i)
    end
    local body = "[" .. table.concat(parts, ",") .. "]"
    batch_request = wrk.format(
      "POST", "/telemetry/batch", { ["Content-Type"] = "application/json" }, body
    )
    accepted_marker = '"accepted":' .. batch_n .. ","
  elseif mode ~= "point" then
    error("mode must be point or batch, got " .. tostring(mode))
  end
end

function request()
  sent = sent + 1
  if batch_request ~= nil then
    return batch_request
  end
  counter = counter + 1
  return wrk.format(
    "POST", "/telemetry", { ["Content-Type"] = "application/json" },
    point_json(counter + thread_no_offset)
  )
end

function response(status, headers, body)
  if status == 202 then
    ok = ok + 1
    if accepted_marker ~= nil and not string.find(body, accepted_marker, 1, true) then
      partial = partial + 1
    end
  else
    local key = tostring(status)
    other[key] = (other[key] or 0) + 1
  end
end

function done(summary, latency, requests)
  local total_sent, total_ok, total_partial = 0, 0, 0
  local statuses = {}
  for _, thread in ipairs(threads) do
    total_sent = total_sent + thread:get("sent")
    total_ok = total_ok + thread:get("ok")
    total_partial = total_partial + thread:get("partial")
    for code, n in pairs(thread:get("other")) do
      statuses[code] = (statuses[code] or 0) + n
    end
  end
  local codes = {}
  for code, n in pairs(statuses) do
    table.insert(codes, string.format('"%s":%d', code, n))
  end
  local e = summary.errors
  io.write(string.format(
    'WRK_RESULT {"duration_us":%d,"responses":%d,"sent":%d,"ok_202":%d,"partial":%d,'
      .. '"other_status":{%s},"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,'
      .. '"timeout":%d},"latency_us":{"p50":%.1f,"p90":%.1f,"p99":%.1f,"p999":%.1f,'
      .. '"max":%.1f,"mean":%.1f}}\n',
    summary.duration, summary.requests, total_sent, total_ok, total_partial,
    table.concat(codes, ","), e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.mean
  ))
end
