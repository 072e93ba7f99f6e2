-- wrk script for benchmarks/httpbench.py: POSTs random keys of a dataset and
-- checks every answer. Environment:
--   WRK_KEYS   file of keys, one a line (all in the dataset: every answer must be 200)
--   WRK_PATH   /get_value (one key a request) or /get_values
--   WRK_BATCH  keys per /get_values request (default 100)
-- At the end it prints "CHECK requests=N bad_status=N bad_body=N": a
-- response that is not 200, or whose body is not a value (or list of them).

local threads = {}
local counter = 0

function setup(thread)
   counter = counter + 1
   thread:set("seed", counter)
   table.insert(threads, thread)
end

local keys = {}
local path, batch, expect
local bodies = {}

function init(args)
   math.randomseed(seed * 7919)
   for line in io.lines(os.getenv("WRK_KEYS")) do
      if #line > 0 then keys[#keys + 1] = line end
   end
   path = os.getenv("WRK_PATH") or "/get_value"
   batch = tonumber(os.getenv("WRK_BATCH") or "100")
   wrk.method = "POST"
   wrk.headers["Content-Type"] = "application/json"
   -- Bodies made up front: the load generator shares the 2 cores with the servers.
   for i = 1, 2000 do
      if path == "/get_value" then
         bodies[i] = '{"key":"' .. keys[math.random(#keys)] .. '"}'
      else
         local chosen = {}
         for j = 1, batch do chosen[j] = '"' .. keys[math.random(#keys)] .. '"' end
         bodies[i] = '{"keys":[' .. table.concat(chosen, ",") .. ']}'
      end
   end
   expect = (path == "/get_value") and '^{"value":"' or '^{"values":%["'
   ok, bad_status, bad_body, next_body = 0, 0, 0, 0
end

function request()
   next_body = next_body % #bodies + 1
   return wrk.format(nil, path, nil, bodies[next_body])
end

function response(status, headers, body)
   if status ~= 200 then
      bad_status = bad_status + 1
   elseif not string.find(body, expect) then
      bad_body = bad_body + 1
   else
      ok = ok + 1
   end
end

function done(summary, latency, requests)
   local good, status, shape = 0, 0, 0
   for _, thread in ipairs(threads) do
      good = good + thread:get("ok")
      status = status + thread:get("bad_status")
      shape = shape + thread:get("bad_body")
   end
   io.write(string.format("CHECK ok=%d bad_status=%d bad_body=%d\n", good, status, shape))
end
