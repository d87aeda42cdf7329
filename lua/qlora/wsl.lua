-- lua/qlora/wsl.lua — WSL2 facts for `qlora doctor`: is this Linux a WSL distribution,
-- which Windows NVIDIA driver it sees, whether a Linux driver inside it shadows that
-- driver, where libcuda was loaded from, and how much memory the WSL VM gives us.
--
-- Under WSL2 the GPU driver lives on the Windows side: WSL maps its user-mode part
-- (libcuda.so.1, libnvidia-ml.so.1, nvidia-smi) into /usr/lib/wsl/lib, lists that folder
-- in /etc/ld.so.conf.d/ld.wsl.conf and exposes the GPU as /dev/dxg. A Linux NVIDIA
-- driver installed inside the distribution puts another libcuda.so.1 in the loader's
-- way, and CUDA stops working (NVIDIA's CUDA on WSL User Guide: install the driver
-- on Windows only).
--
-- Everything is read through a `sys` object so tests can fake the machine:
--   wsl.system([root])      the real machine; root (or $QLORA_SYSROOT) prefixes every
--                           path, so a folder can stand in for / (nvidia-smi is then
--                           not run: its output is read from <root>/nvidia-smi.out)
--   wsl.fake{files = {[path] = text}, env = {NAME = value}, smi = "output"}
--                           a machine made of a table (a path whose value is true
--                           exists with no content)
--   wsl.detect(sys) -> info (nil when this is not WSL):
--     {version = 1|2, kernel, dxg, wsl_libcuda, ld_conf, smi = {driver, name}|nil,
--      shadows = {{text, where, fix}}, ld_library_path = {dirs},
--      loaded_libcuda = path|nil, mem_total, mem_available (bytes), cwd}
--   wsl.check(info, probe) -> findings {{ok = true|false|nil, text, fix}}, in doctor's
--     order; probe is qlora.device.probe()'s table (may be nil)
--   wsl.windows_driver_ok(driver, runtime_version) -> ok, minimum
local M = {}

-- The minimum Windows x86_64 driver for each CUDA runtime (NVIDIA's CUDA toolkit
-- release notes, table "CUDA Toolkit and Corresponding Driver Versions"); the Linux
-- numbers are in recipes/doctor.lua.
M.min_windows_driver = { [12080] = "570.65", [12090] = "576.02", [13000] = "580.88" }
-- sm_120 (RTX 50xx) needs CUDA 12.8, hence the R570 branch, whose first Windows
-- release with CUDA 12.8 is 570.65.
M.sm120_windows_driver = "570.65"
-- Loading a 7B (Qwen2.5-7B shape, 15 GB of bf16) with quant = "nf4" peaks at 3.73 GiB
-- resident on the CPU and 3.95 GiB when it goes to a GPU (its untied embedding is copied into
-- page-locked memory; bench/RESULTS.md, 2026-12-02); the file's pages are page cache and can
-- be dropped. 4.5 GiB leaves a margin over that.
M.load_7b_bytes = 4.5 * 2 ^ 30
M.WSL_LIB = "/usr/lib/wsl/lib"

-- where a Linux driver's libcuda lands in Debian/Ubuntu (libcuda1, libnvidia-compute-N,
-- NVIDIA's .run installer) and in other distributions
local LINUX_LIBCUDA = {
  "/usr/lib/x86_64-linux-gnu/libcuda.so.1", "/usr/lib/x86_64-linux-gnu/libcuda.so",
  "/usr/lib/aarch64-linux-gnu/libcuda.so.1", "/usr/lib64/libcuda.so.1", "/usr/lib/libcuda.so.1",
  "/usr/local/lib/libcuda.so.1",
}
-- Debian/Ubuntu packages that install a Linux NVIDIA driver or its libcuda
local DRIVER_PACKAGES = { "^nvidia%-driver", "^libnvidia%-compute%-", "^cuda%-drivers", "^nvidia%-dkms%-",
                          "^nvidia%-kernel%-", "^libcuda1$", "^nvidia%-utils%-", "^nvidia%-open" }

-- ---- machines ----

local function shell_quote(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

function M.system(root)
  root = root or os.getenv("QLORA_SYSROOT") or ""
  root = root:gsub("/+$", "")
  local sys = {}
  function sys.read(path)
    local f = io.open(root .. path, "rb")
    if not f then return nil end
    local s = f:read("a")
    f:close()
    return s
  end
  function sys.exists(path)
    local ok, q = pcall(require, "qlora")
    if ok and type(q) == "table" and q.sys then return q.sys.exists(root .. path) end
    local p = io.popen("test -e " .. shell_quote(root .. path) .. " && echo y")
    local r = p:read("a"); p:close()
    return r:find("y") ~= nil
  end
  function sys.getenv(name) return os.getenv(name) end
  function sys.smi()
    if root ~= "" then return sys.read("/nvidia-smi.out") end
    local exe = M.WSL_LIB .. "/nvidia-smi"
    if not sys.exists(exe) then return nil end
    local p = io.popen(exe .. " --query-gpu=driver_version,name --format=csv,noheader 2>/dev/null")
    if not p then return nil end
    local out = p:read("a")
    p:close()
    return out
  end
  return sys
end

function M.fake(t)
  local files, env = t.files or {}, t.env or {}
  local sys = {}
  function sys.read(path)
    local v = files[path]
    if type(v) == "string" then return v end
    return nil
  end
  function sys.exists(path)
    if files[path] then return true end
    local dir = path:gsub("/+$", "") .. "/"
    for k in pairs(files) do if k:sub(1, #dir) == dir then return true end end
    return false
  end
  function sys.getenv(name) return env[name] end
  function sys.smi() return t.smi end
  return sys
end

-- ---- detection ----

local function meminfo(text)
  local t = {}
  for k, v in (text or ""):gmatch("(%w+):%s*(%d+) kB") do t[k] = tonumber(v) * 1024 end
  return t
end

-- "572.16, NVIDIA GeForce RTX 5090" (one line per GPU) -> {driver, name}
local function parse_smi(out)
  if not out then return nil end
  local driver, name = out:match("^%s*([%d%.]+)%s*,%s*([^\r\n]*)")
  if not driver then return nil end
  return { driver = driver, name = name }
end

-- installed packages from dpkg's status file matching a driver pattern
local function driver_packages(status)
  local found = {}
  for block in ((status or "") .. "\n\n"):gmatch("(.-)\n\n") do
    local name = block:match("^Package: (%S+)") or block:match("\nPackage: (%S+)")
    local st = block:match("\nStatus: ([^\n]+)")
    if name and st and st:find("install ok installed", 1, true) then
      for _, pat in ipairs(DRIVER_PACKAGES) do
        if name:find(pat) then found[#found + 1] = name; break end
      end
    end
  end
  table.sort(found)
  return found
end

-- the libcuda mapped into this process (after qlora.device.probe() loaded it)
local function loaded_libcuda(maps)
  for path in (maps or ""):gmatch("(/%S*libcuda%.so[%.%d]*)\n") do return path end
  return nil
end

function M.detect(sys)
  sys = sys or M.system()
  local release = (sys.read("/proc/sys/kernel/osrelease") or ""):gsub("%s+$", "")
  local version = sys.read("/proc/version") or ""
  local is_wsl = release:lower():find("microsoft") or version:lower():find("microsoft")
                 or sys.exists(M.WSL_LIB) or sys.getenv("WSL_DISTRO_NAME")
  if not is_wsl then return nil end
  local info = { kernel = release ~= "" and release or version:match("^Linux version (%S+)") or "?" }
  -- WSL 1 kernels say "4.4.0-19041-Microsoft"; WSL 2 "...-microsoft-standard-WSL2"
  info.version = (info.kernel:find("%-Microsoft$") and not info.kernel:find("WSL2")) and 1 or 2
  info.dxg = sys.exists("/dev/dxg")
  info.wsl_libcuda = sys.exists(M.WSL_LIB .. "/libcuda.so.1") or sys.exists(M.WSL_LIB .. "/libcuda.so")
  info.ld_conf = sys.exists("/etc/ld.so.conf.d/ld.wsl.conf")
  info.smi = parse_smi(sys.smi())

  info.shadows = {}
  local function shadow(text, where, fix) info.shadows[#info.shadows + 1] = { text = text, where = where, fix = fix } end
  local pkgs = driver_packages(sys.read("/var/lib/dpkg/status"))
  if #pkgs > 0 then
    shadow("a Linux NVIDIA driver is installed inside WSL and shadows the Windows one: packages " .. table.concat(pkgs, " "),
           table.concat(pkgs, " "),
           "sudo apt-get purge " .. table.concat(pkgs, " ") .. " && sudo apt-get autoremove && sudo ldconfig")
  end
  for _, p in ipairs(LINUX_LIBCUDA) do
    if sys.exists(p) then
      shadow("a Linux libcuda shadows the Windows driver's: " .. p, p, #pkgs > 0 and "removed with the packages above"
             or ("it came from no package (NVIDIA's .run installer?): sudo rm " .. p .. " && sudo ldconfig"))
    end
  end
  info.ld_library_path = {}
  for dir in (sys.getenv("LD_LIBRARY_PATH") or ""):gmatch("[^:]+") do
    info.ld_library_path[#info.ld_library_path + 1] = dir
    local d = dir:gsub("/+$", "")
    if d ~= M.WSL_LIB and (sys.exists(d .. "/libcuda.so.1") or sys.exists(d .. "/libcuda.so")) then
      shadow((d:find("stubs") and "the CUDA toolkit's link-time stub libcuda (it runs nothing)" or "a libcuda") ..
             " on LD_LIBRARY_PATH comes before the Windows driver's: " .. d, d, "take " .. d .. " out of LD_LIBRARY_PATH (in ~/.bashrc or ~/.profile)")
    end
  end
  info.loaded_libcuda = loaded_libcuda(sys.read("/proc/self/maps"))
  local mem = meminfo(sys.read("/proc/meminfo"))
  info.mem_total, info.mem_available, info.swap_total = mem.MemTotal, mem.MemAvailable, mem.SwapTotal
  info.cwd = sys.getenv("PWD")
  return info
end

-- ---- verdicts ----

local function vnum(v) -- "572.16" -> {572, 16}
  local t = {}
  for n in tostring(v):gmatch("%d+") do t[#t + 1] = tonumber(n) end
  return t
end
local function vge(a, b)
  a, b = vnum(a), vnum(b)
  for i = 1, math.max(#a, #b) do
    local x, y = a[i] or 0, b[i] or 0
    if x ~= y then return x > y end
  end
  return true
end

function M.windows_driver_ok(driver, runtime)
  local best
  for rt, min in pairs(M.min_windows_driver) do
    if rt <= runtime and (not best or rt > best) then best = rt end
  end
  local min = best and M.min_windows_driver[best] or M.sm120_windows_driver
  return vge(driver, min), min
end

local function ver(v) return string.format("%d.%d", v // 1000, (v % 1000) // 10) end
local function gib(b) return string.format("%.1f GiB", b / 2 ^ 30) end
local UPDATE_DRIVER = "install the newest NVIDIA Game Ready or Studio driver on Windows (nvidia.com or the NVIDIA app), " ..
                      "then run `wsl --shutdown` in PowerShell and reopen the distribution; never install a Linux driver inside WSL"

function M.check(info, probe)
  local out = {}
  local function add(ok, text, fix) out[#out + 1] = { ok = ok, text = text, fix = fix } end
  if info.version == 1 then
    add(false, "WSL 1 (kernel " .. info.kernel .. "): WSL 1 has no GPU access",
        "convert the distribution in PowerShell: `wsl --set-version <name> 2` (`wsl -l -v` lists names)")
    return out
  end
  add(true, "WSL 2 (kernel " .. info.kernel .. "): the GPU driver is the Windows one, seen through " .. M.WSL_LIB)
  if not info.dxg then
    add(false, "no /dev/dxg: WSL does not pass a GPU to this distribution",
        "update WSL (`wsl --update` in PowerShell) and the Windows NVIDIA driver, then `wsl --shutdown`")
  end
  if not info.wsl_libcuda then
    add(false, "no " .. M.WSL_LIB .. "/libcuda.so.1: the Windows NVIDIA driver's CUDA part is not mapped into WSL", UPDATE_DRIVER)
  end

  -- the Windows driver, against this binary's runtime and against sm_120
  local rt = probe and probe.cuda_built and probe.runtime_version or nil
  if info.smi then
    local name = info.smi.name ~= "" and (" (" .. info.smi.name .. ")") or ""
    if rt and rt > 0 then
      local ok, min = M.windows_driver_ok(info.smi.driver, rt)
      add(ok, "Windows NVIDIA driver " .. info.smi.driver .. name .. (ok and " is new enough for" or " is too old for") ..
              " this binary's CUDA " .. ver(rt) .. " runtime (needs " .. min .. "+)",
          not ok and ("update it to " .. min .. " or newer: " .. UPDATE_DRIVER) or nil)
    else
      add(true, "Windows NVIDIA driver " .. info.smi.driver .. name)
    end
    local ok = vge(info.smi.driver, M.sm120_windows_driver)
    local blackwell = info.smi.name:find("RTX 50%d%d") or info.smi.name:find("Blackwell")
    add(ok or (not blackwell and nil), "Windows driver " .. info.smi.driver .. (ok and " can" or " cannot") ..
            " run sm_120 (RTX 50xx) code (needs the R570 branch, " .. M.sm120_windows_driver .. "+, CUDA 12.8)",
        not ok and UPDATE_DRIVER or nil)
  elseif info.wsl_libcuda then
    add(nil, "could not read the Windows driver version (" .. M.WSL_LIB .. "/nvidia-smi gave nothing)",
        "run " .. M.WSL_LIB .. "/nvidia-smi: an error there is the driver's; " .. UPDATE_DRIVER)
  end

  -- a Linux driver inside the distribution
  if #info.shadows == 0 then
    add(true, "no Linux NVIDIA driver inside the distribution")
  else
    for _, s in ipairs(info.shadows) do
      add(false, s.text, s.fix)
    end
  end

  -- the loader
  if info.loaded_libcuda then
    local ok = info.loaded_libcuda:sub(1, #"/usr/lib/wsl/") == "/usr/lib/wsl/"
    add(ok, "libcuda loaded from " .. info.loaded_libcuda,
        not ok and ("the loader found a Linux libcuda before " .. M.WSL_LIB .. ": remove it (above) or start qlora with " ..
                    "LD_LIBRARY_PATH=" .. M.WSL_LIB .. " in front") or nil)
  else
    local path = #info.ld_library_path > 0 and ("LD_LIBRARY_PATH=" .. table.concat(info.ld_library_path, ":")) or "LD_LIBRARY_PATH unset"
    if info.ld_conf then
      add(true, "loader path: " .. path .. ", then /etc/ld.so.conf.d/ld.wsl.conf (" .. M.WSL_LIB .. ")")
    else
      add(nil, "loader path: " .. path .. "; /etc/ld.so.conf.d/ld.wsl.conf is missing, so the loader may not look in " .. M.WSL_LIB,
          "`wsl --shutdown` in PowerShell recreates it at the next start; meanwhile export LD_LIBRARY_PATH=" .. M.WSL_LIB)
    end
  end

  -- memory: the WSL VM gets a share of the Windows RAM (by default half of it)
  if info.mem_total then
    local avail = info.mem_available or info.mem_total
    local ok = avail >= M.load_7b_bytes
    add(ok, string.format("memory: %s in the WSL VM (WSL's cap: by default half of Windows' RAM), %s available; " ..
                          "loading a 7B with quant=nf4 needs %s (4.0 GiB peak measured)", gib(info.mem_total), gib(avail),
                          gib(M.load_7b_bytes)),
        not ok and ("raise the cap in %UserProfile%\\.wslconfig ([wsl2] memory=16GB), then `wsl --shutdown`; " ..
                    "close memory-hungry Windows programs") or nil)
  end

  -- working on the Windows drives (9P file sharing) is slow
  if info.cwd and info.cwd:match("^/mnt/%a/") then
    add(nil, "working in " .. info.cwd .. ", a Windows drive shared into WSL: reading models and data there is much slower",
        "clone qlora and keep models/ and data/ in the Linux filesystem (e.g. ~/qlora)")
  end
  return out
end

return M
