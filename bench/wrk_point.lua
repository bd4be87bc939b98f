-- POST one telemetry point per request (seed API), with varying satellite ids.
local counter = 0
request = function()
  counter = counter + 1
  local body = string.format('{"satellite_id":"SAT-%04d","battery_charge_percent":%.1f,"storage_usage_mb":45000.0,"signal_strength_dbm":-55.0}', counter % 100, 50 + (counter % 50))
  return wrk.format("POST", "/telemetry", {["Content-Type"] = "application/json"}, body)
end
