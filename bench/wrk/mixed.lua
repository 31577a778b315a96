-- GET, PUT and LIST together, as a team's clients and UI load a server at once: in every 10 requests 6 GETs of
-- the 10 small files, 2 PUTs to new paths, 2 listings of their directory.
--   wrk -s bench/wrk/mixed.lua URL -- BODY_FILE DIR_URL_PATH LIST_URL_PATH
local common = dofile(os.getenv("WRK_COMMON") or "bench/wrk/common.lua")
local threads = 0

function setup(thread)
  thread:set("id", threads)
  threads = threads + 1
end

function init(args)
  body = common.read(args[1])
  dir = args[2]
  list = args[3]
  n = 0
end

function request()
  n = n + 1
  local slot = n % 10
  if slot < 6 then
    return wrk.format("GET", string.format("%s/f%d.bin", dir, n % 10))
  elseif slot < 8 then
    return wrk.format("PUT", string.format("%s/mixed/t%d-%d.bin", dir, id, n), common.OCTETS, body)
  end
  return wrk.format("GET", list)
end

done = common.done
