-- 16 KiB PUTs, each to a path no request used before, as real clients write (hey can only repeat one URL).
--   wrk -s bench/wrk/distinct_put.lua URL -- BODY_FILE DIR_URL_PATH
-- Every wrk thread numbers its own requests; the thread's id keeps two threads' paths apart.
local common = dofile(os.getenv("WRK_COMMON") or "bench/wrk/common.lua")
local threads = 0

function setup(thread)
  thread:set("id", threads)
  threads = threads + 1
end

function init(args)
  body = common.read(args[1])
  dir = args[2]
  n = 0
end

function request()
  n = n + 1
  return wrk.format("PUT", string.format("%s/t%d-%d.bin", dir, id, n), common.OCTETS, body)
end

done = common.done
