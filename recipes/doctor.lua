-- recipes/doctor.lua — the GPU checklist (`qlora doctor`): can this machine train with this qlora?
--
-- Prints a checklist: the build, the driver and runtime, then each GPU: compute
-- capability, memory, bf16, and whether a kernel of this binary actually runs
-- on it (the "no kernel image is available for execution on the device"
-- failure of other stacks on new GPUs). Every failure names its cause and fix.
-- Under WSL it first checks the WSL side (lua/qlora/wsl.lua): the Windows driver,
-- a Linux driver shadowing it, the loader path, the VM's memory cap. These add lines
-- but never change the exit code; QLORA_SYSROOT=DIR reads a fake machine from DIR.
--
-- Exit codes (also in README.md):
--   0  every GPU found can run qlora's kernels
--   3  this qlora is a CPU-only build (CPU training still works)
--   4  no usable NVIDIA GPU or driver on this machine (CPU training still works)
--   5  the NVIDIA driver is too old for this binary's CUDA runtime
--   6  a GPU is present but cannot run this binary's kernels (architecture missing)
--   1  doctor itself failed (a bug: please report it)
local S = require("qlora.settings")
S.parse(args, {})   -- no settings: --help prints this header, anything else is refused
local device = qlora.device
-- where the GPU cannot be used: the command that trains on the CPU instead
local cpu_hint = "train on the CPU with device=cpu (" .. S.program() .. " recipes/train.lua ... device=cpu, or " ..
                 S.program() .. " recipes/full.lua ... device=cpu; device=auto, the default, picks the CPU by itself)"
local build = qlora.sys.build()
local r = device.probe()

local tty = qlora.sys.isatty(1)
local function mark(ok) if ok == nil then return tty and "\27[33m!\27[0m" or "!" end
  return ok and (tty and "\27[32m✓\27[0m" or "✓") or (tty and "\27[31m✗\27[0m" or "✗") end
local function line(ok, text, fix)
  print(string.format("%s %s", mark(ok), text))
  if fix then print("    fix: " .. fix) end
end
local function ver(v) -- 12080 -> "12.8"
  if not v or v == 0 then return "none" end
  return string.format("%d.%d", v // 1000, (v % 1000) // 10)
end
local function gib(b) return string.format("%.1f GiB", b / 2 ^ 30) end
-- minimum Linux driver for each CUDA runtime (NVIDIA's CUDA toolkit release notes)
local min_driver = { [12080] = "570.26", [12090] = "575.51", [13000] = "580.65", [13010] = "580.95" }

print(string.format("qlora %s (commit %s)", build.version, build.commit))
print("build: " .. build.options)
local code = 0

local wsl = require("qlora.wsl")
local wsl_ok, wsl_info = pcall(wsl.detect, wsl.system())
if not wsl_ok then
  line(nil, "the WSL checks failed: " .. tostring(wsl_info), "please report it; the checks below do not depend on them")
  wsl_info = nil
elseif wsl_info then
  for _, f in ipairs(wsl.check(wsl_info, r)) do line(f.ok, f.text, f.fix) end
end
-- under WSL the driver is installed on Windows, never inside the distribution
local function driver_fix(min)
  if wsl_info then
    return "install the NVIDIA driver " .. min .. " or newer on Windows (not inside WSL), then `wsl --shutdown` in PowerShell"
  end
  return nil
end

if not r.cuda_built then
  line(false, "CUDA backend: this is a CPU-only build",
       (wsl_info and "install the CUDA Toolkit 12.8 or newer for WSL (NVIDIA's WSL-Ubuntu repository, package cuda-toolkit-12-8; " ..
                     "never `cuda` or `cuda-drivers`, which bring a Linux driver)"
                  or "install the CUDA Toolkit 12.8 or newer (nvcc)") ..
       ", then rebuild with ./setup.sh; meanwhile " .. cpu_hint)
  print("exit 3: CPU-only build")
  os.exit(3)
end

local archs = r.archs
line(true, string.format("binary carries SASS for sm_%s and PTX for compute_%s",
                         table.concat(archs, ", sm_"), tostring(r.ptx_arch)))
local has_blackwell = false
for _, a in ipairs(archs) do if a >= 100 then has_blackwell = true end end
if not has_blackwell then
  line(nil, "no Blackwell (sm_100/sm_120) code: this binary was built with a CUDA toolkit older than 12.8",
       "install CUDA 12.8+ and rebuild with ./setup.sh to run on RTX 50xx / B200")
end

line(true, "CUDA runtime " .. ver(r.runtime_version) .. ", cuBLASLt " .. tostring(r.cublaslt_version))
if r.driver_version == 0 then
  line(false, "NVIDIA driver: none found (" .. (r.count_error_msg ~= "" and r.count_error_msg or "libcuda not loaded") .. ")",
       driver_fix(select(2, wsl.windows_driver_ok("0", r.runtime_version))) or
       "install the NVIDIA driver (" .. (min_driver[r.runtime_version] or "recent") .. " or newer) if this machine has an NVIDIA GPU; otherwise " .. cpu_hint)
  print("exit 4: no GPU driver")
  os.exit(4)
end
local driver_ok = r.driver_version >= r.runtime_version
line(driver_ok, "NVIDIA driver supports CUDA " .. ver(r.driver_version),
     not driver_ok and ("this binary's runtime needs CUDA " .. ver(r.runtime_version) .. ": " ..
       (driver_fix(select(2, wsl.windows_driver_ok("0", r.runtime_version))) or
        ("update the driver to " .. (min_driver[r.runtime_version] or "a newer release") .. " or newer"))) or nil)
if not driver_ok then print("exit 5: driver too old"); os.exit(5) end

if r.device_count == 0 then
  line(false, "no CUDA GPU visible (" .. (r.count_error_msg ~= "" and r.count_error_msg or "0 devices") .. ")",
       "check nvidia-smi and CUDA_VISIBLE_DEVICES; otherwise " .. cpu_hint)
  print("exit 4: no GPU")
  os.exit(4)
end

local usable = 0
for _, g in ipairs(r.gpus) do
  print(string.format("GPU %d: %s, %s total, %s free, %d SMs", g.index, g.name, gib(g.total_mem), gib(g.free_mem), g.sm_count))
  local sm = g.sm
  local sass, ptx = false, false
  for _, a in ipairs(archs) do
    if a == sm or (a // 10 == sm // 10 and a <= sm) then sass = true end
  end
  if r.ptx_arch and r.ptx_arch <= sm then ptx = true end
  if g.kernel_ok then
    usable = usable + 1
    local how = g.jit and ("from PTX, JIT-compiled by the driver (first start is slower)")
                or ("SASS sm_" .. g.binary_version)
    line(true, string.format("Compute capability sm_%d is SUPPORTED: a qlora kernel ran (%s)", sm, how))
  else
    local cause
    if g.kernel_error_msg:find("no kernel image") or (not sass and not ptx) then
      cause = string.format("this binary has no code for sm_%d (SASS: sm_%s; PTX: compute_%s only runs on newer GPUs)",
                            sm, table.concat(archs, ", sm_"), tostring(r.ptx_arch))
      line(false, string.format("Compute capability sm_%d is NOT supported by this binary: %s", sm, g.kernel_error_msg),
           sm >= 100 and "rebuild with CUDA 12.8+ (./setup.sh --cuda-arch=..." .. sm .. ")"
             or "rebuild with ./setup.sh --cuda-arch=" .. sm)
    else
      line(false, string.format("sm_%d: a probe kernel failed: %s", sm, g.kernel_error_msg),
           "check nvidia-smi for errors; another process may hold the GPU, or the GPU is in a bad state")
    end
  end
  if sm < 80 then
    line(nil, "no native bf16 on sm_" .. sm .. ": training uses f16/f32 paths and runs slower")
  else
    line(true, "bf16 supported")
  end
  -- which attention kernels training uses (kernels/decoder_ops.cu: attention_path)
  local pick = os.getenv("QL_ATTN")
  if pick == "gemm" or pick == "warp" then
    line(nil, "attention: QL_ATTN=" .. pick .. " picks the " .. (pick == "gemm" and "per-segment products" or "warp kernels") ..
         " over flash attention", "unset QL_ATTN for the fastest path")
  elseif sm >= 80 then
    line(true, "attention: flash attention on tensor cores (head dims that are multiples of 16 up to 128)")
  else
    line(nil, "attention: per-segment products (flash attention needs sm_80 or newer)")
  end
end
if usable == 0 then print("exit 6: no GPU can run this binary's kernels"); os.exit(6) end
print(string.format("%d of %d GPU%s ready", usable, #r.gpus, #r.gpus == 1 and "" or "s"))
os.exit(code)
