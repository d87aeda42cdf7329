-- premake5.lua — the qlora build.
--
-- Written in the API that both Debian's premake4 (4.3) and current premake5
-- understand:   premake4 --file=premake5.lua gmake      (Debian 12)
--               premake5 gmake2                          (users)
-- then `make -C build config=release` (also: debug, asan).
--
-- Options:  --cuda=auto|on|off   CUDA backend (auto: on when nvcc is found)
--           --cuda-path=DIR       CUDA toolkit root (default: $CUDA_PATH or /usr/local/cuda)
--           --cuda-arch=LIST      comma list of SM numbers (default 75,80,86,89,90,100,120)
--           --builddir=DIR        where makefiles and objects go (default build)
--           --bindir=DIR          where qlora, qlora.so and qltest go (default bin)
--
-- premake5 removed solution() and configuration(); premake4 lacks workspace()
-- and filter(). These two shims are the only version-specific lines.
local workspace_ = workspace or solution
local function when(cfg)
   if filter then filter(cfg and { "configurations:" .. cfg } or {}) else configuration(cfg or {}) end
end

newoption { trigger = "cuda", value = "MODE", description = "CUDA backend: auto, on or off" }
newoption { trigger = "cuda-path", value = "DIR", description = "CUDA toolkit root" }
newoption { trigger = "cuda-arch", value = "LIST", description = "SM architectures, e.g. 75,80,86,89,90,100,120" }
newoption { trigger = "builddir", value = "DIR", description = "Build folder (default build)" }
newoption { trigger = "bindir", value = "DIR", description = "Output folder (default bin)" }

local function sh(cmd)
   local f = io.popen(cmd .. " 2>/dev/null")
   if not f then return "" end
   local s = f:read("*a") or ""
   f:close()
   return (s:gsub("%s+$", ""))
end
local function split(s)
   local t = {}
   for w in s:gmatch("%S+") do t[#t + 1] = w end
   return t
end
local function exists(p) local f = io.open(p, "r"); if f then f:close() return true end return false end

local root = sh("pwd")
if _SCRIPT then root = _SCRIPT:match("^(.*)/[^/]*$") or root end
local builddir = _OPTIONS["builddir"] or "build"
local bindir = _OPTIONS["bindir"] or "bin"

-- ---------------------------------------------------------------- libraries
local function pkg(args) return sh("pkg-config " .. args) end
local lua_cflags = pkg("--cflags lua5.4")
if lua_cflags == "" then lua_cflags = "-I/usr/include/lua5.4" end
local mupdf_cflags = pkg("--cflags mupdf")
local mupdf_libs = pkg("--libs --static mupdf")
if mupdf_libs == "" then mupdf_libs = "-lmupdf -lmupdf-third" end
mupdf_libs = mupdf_libs .. " -lharfbuzz"
local blas_cflags = pkg("--cflags openblas")
local blas_libs = pkg("--libs openblas")
if blas_libs == "" then blas_libs = "-lopenblas" end
local pcre_libs = pkg("--libs libpcre2-8")
if pcre_libs == "" then pcre_libs = "-lpcre2-8" end
-- Lua is linked statically into the executable; -Wl,-E exports its API so C modules load.
local lua_static = "-Wl,-Bstatic -llua5.4 -Wl,-Bdynamic -Wl,-E"
local sys_libs = "-lutf8proc " .. pcre_libs .. " -lreadline -lpthread -ldl -lm"

-- ---------------------------------------------------------------- CUDA
local cuda_mode = _OPTIONS["cuda"] or "auto"
local cuda_path = _OPTIONS["cuda-path"] or os.getenv("CUDA_PATH") or "/usr/local/cuda"
local nvcc = cuda_path .. "/bin/nvcc"
if not exists(nvcc) then
   local found = sh("command -v nvcc")
   if found ~= "" then nvcc = found; cuda_path = found:match("^(.*)/bin/nvcc$") or cuda_path end
end
local use_cuda = false
local cuda_note = "CUDA off"
local cuda_archs = {}
if cuda_mode ~= "off" then
   if exists(nvcc) then
      local ver = sh(nvcc .. " --version"):match("release (%d+%.%d+)")
      local major, minor = (ver or "0.0"):match("(%d+)%.(%d+)")
      major, minor = tonumber(major), tonumber(minor)
      local wanted = _OPTIONS["cuda-arch"] or "75,80,86,89,90,100,120"
      for a in wanted:gmatch("%d+") do
         a = tonumber(a)
         if a >= 100 and (major < 12 or (major == 12 and minor < 8)) then
            print("qlora: CUDA toolkit " .. (ver or "?") .. " cannot target Blackwell (sm_" .. a ..
                  "): leaving it out. Install CUDA 12.8 or newer to run on RTX 50xx / B200 GPUs.")
         else
            cuda_archs[#cuda_archs + 1] = a
         end
      end
      if #cuda_archs > 0 then
         use_cuda = true
         cuda_note = "CUDA " .. (ver or "?") .. " sm_" .. table.concat(cuda_archs, ",sm_") ..
                     " +PTX compute_" .. cuda_archs[#cuda_archs]
      end
   elseif cuda_mode == "on" then
      error("--cuda=on but nvcc was not found under " .. cuda_path ..
            "/bin or on PATH: install the CUDA Toolkit 12.8+ or pass --cuda-path=DIR")
   end
end
print("qlora: " .. cuda_note)

local commit = sh("git -C '" .. root .. "' rev-parse --short HEAD")
if commit == "" then commit = "unknown" end
local build_options = cuda_note .. "; BLAS openblas; Lua 5.4 static; MuPDF; utf8proc"

-- The CUDA kernels are built by a make fragment written here, so that nvcc
-- runs with dependency tracking under both premake versions (neither has a
-- portable custom-rule API for .cu files).
local function write_kernels_mk()
   os.mkdir(builddir)
   local gencode = {}
   for _, a in ipairs(cuda_archs) do
      gencode[#gencode + 1] = "-gencode arch=compute_" .. a .. ",code=sm_" .. a
   end
   local last = cuda_archs[#cuda_archs]
   gencode[#gencode + 1] = "-gencode arch=compute_" .. last .. ",code=compute_" .. last
   local lines = {}
   local f = { write = function(_, s) lines[#lines + 1] = s end, close = function() end }
   f:write("# generated by premake5.lua: builds kernels/*.cu into libqlkernels.a\n")
   f:write("ROOT := " .. root .. "\n")
   f:write("NVCC := " .. nvcc .. "\n")
   f:write("GENCODE := " .. table.concat(gencode, " ") .. "\n")
   f:write("KDIR := $(ROOT)/" .. builddir .. "/kernels/$(config)\n")
   f:write([[
NVFLAGS := -O3 -std=c++17 -DQL_CUDA=1 $(GENCODE) -Xcompiler -fPIC -Xcompiler -Wall -I$(ROOT)/engine/core -I$(ROOT)/engine/formats -I$(ROOT)/engine/text -I$(ROOT)/engine/model -I$(ROOT)/kernels
SRCS := $(wildcard $(ROOT)/kernels/*.cu)
OBJS := $(patsubst $(ROOT)/kernels/%.cu,$(KDIR)/%.o,$(SRCS))
all: $(KDIR)/libqlkernels.a
$(KDIR)/libqlkernels.a: $(OBJS)
	@rm -f $@
	ar rcs $@ $^
# objects depend on this file, so a change of architectures or flags rebuilds them
$(KDIR)/%.o: $(ROOT)/kernels/%.cu $(lastword $(MAKEFILE_LIST))
	@mkdir -p $(KDIR)
	$(NVCC) $(NVFLAGS) -MD -MP -MF $(KDIR)/$*.d -c $< -o $@
-include $(OBJS:.o=.d)
]])
   -- rewrite only when it changed, so regenerating does not force a rebuild of the kernels
   local text = table.concat(lines)
   local old = io.open(builddir .. "/kernels.mk", "r")
   local same = old and old:read("*a") == text
   if old then old:close() end
   if not same then
      local out = assert(io.open(builddir .. "/kernels.mk", "w"))
      out:write(text)
      out:close()
   end
end
if use_cuda and _ACTION then write_kernels_mk() end

-- Build facts compiled into the binary (qlora --version), in a generated header
-- rather than -D strings so that no shell quoting is involved.
if _ACTION then
   os.mkdir(builddir)
   local f = assert(io.open(builddir .. "/ql_build.h", "w"))
   local function q(s) return '"' .. s:gsub('[\\"]', "") .. '"' end
   f:write("/* generated by premake5.lua */\n")
   f:write("#define QL_COMMIT " .. q(commit) .. "\n")
   f:write("#define QL_BUILD_OPTIONS " .. q(build_options) .. "\n")
   f:write("#define QL_CUDA_ARCHS " .. q(table.concat(cuda_archs, ",")) .. "\n")
   f:close()
end

local cuda_libs = ""
if use_cuda then
   cuda_libs = "-L" .. cuda_path .. "/lib64 -Wl,-rpath," .. cuda_path .. "/lib64 " ..
               "-lcublasLt -lcudart_static -lrt -lstdc++"
end

-- ---------------------------------------------------------------- workspace
workspace_ "qlora"
   configurations { "release", "debug", "asan" }
   location (builddir)
   language "C"
   -- engine/ is grouped by layer: core (tensors, backends, platform), formats
   -- (safetensors, JSON, NF4), text (tokenizer, PDF, cleaning), model (decoder, LoRA, training)
   includedirs { "engine/core", "engine/formats", "engine/text", "engine/model" }
   buildoptions { "-std=c11", "-Wall", "-Wextra", "-fPIC", "-D_GNU_SOURCE" }
   buildoptions(split(lua_cflags .. " " .. mupdf_cflags .. " " .. blas_cflags))
   includedirs { builddir }
   if use_cuda then defines { "QL_CUDA=1" } end
   -- premake4 strips binaries unless told to keep symbols (premake5 never strips).
   if not filter then flags { "Symbols" } end
   when("release")
      buildoptions { "-O2", "-g" }
      defines { "NDEBUG" }
   when("debug")
      buildoptions { "-O0", "-g3" }
   when("asan")
      buildoptions { "-O1", "-g", "-fsanitize=address,undefined", "-fno-omit-frame-pointer",
                     "-fno-sanitize-recover=undefined" }
      linkoptions { "-fsanitize=address,undefined" }
   when(nil)

-- Linking: the engine archive and the system libraries go in linkoptions, in
-- dependency order after the objects (both premake versions put LDFLAGS after
-- $(OBJECTS)); `links` only orders the build.
local function engine_link(cfg, extra)
   local lib = root .. "/" .. builddir .. "/lib/" .. cfg .. "/libqlengine.a"
   local k = use_cuda and (root .. "/" .. builddir .. "/kernels/" .. cfg .. "/libqlkernels.a ") or ""
   return split(lib .. " " .. k .. (extra or "") .. " " .. mupdf_libs .. " " .. blas_libs .. " " ..
                sys_libs .. " " .. cuda_libs)
end
local function per_config(fn)
   for _, cfg in ipairs({ "release", "debug", "asan" }) do when(cfg); fn(cfg) end
   when(nil)
end

project "qlengine"
   kind "StaticLib"
   files { "engine/**.c", "engine/**.h" }
   per_config(function(cfg) targetdir(builddir .. "/lib/" .. cfg); objdir(builddir .. "/obj/" .. cfg) end)
   if use_cuda then
      prebuildcommands { "$(MAKE) --no-print-directory -f kernels.mk config=$(config)" }
   end

project "qlora"
   kind "ConsoleApp"
   files { "lua/*.c", "lua/*.h", "lua/host/*.c", "lua/host/*.h" }
   links { "qlengine" }
   per_config(function(cfg)
      targetdir(cfg == "release" and bindir or (bindir .. "/" .. cfg))
      objdir(builddir .. "/obj/" .. cfg)
      linkoptions(engine_link(cfg, lua_static))
   end)

project "qlora_module"
   kind "SharedLib"
   targetname "qlora"
   targetprefix ""
   files { "lua/*.c", "lua/*.h" }
   defines { "QL_LUA_MODULE=1" }
   links { "qlengine" }
   per_config(function(cfg)
      targetdir(cfg == "release" and bindir or (bindir .. "/" .. cfg))
      objdir(builddir .. "/obj/module-" .. cfg)
      linkoptions(engine_link(cfg))
   end)

project "qltest"
   kind "ConsoleApp"
   files { "tests/c/*.c", "tests/c/*.h" }
   links { "qlengine" }
   per_config(function(cfg)
      targetdir(cfg == "release" and bindir or (bindir .. "/" .. cfg))
      objdir(builddir .. "/obj/" .. cfg)
      linkoptions(engine_link(cfg))
   end)

-- one program per bench/*.c (bin/bench_matmul, bin/pdf_tool, ...)
for _, src in ipairs(os.matchfiles("bench/*.c")) do
   local name = src:match("([^/]+)%.c$")
   project(name)
      kind "ConsoleApp"
      files { src }
      links { "qlengine" }
      per_config(function(cfg)
         targetdir(cfg == "release" and bindir or (bindir .. "/" .. cfg))
         objdir(builddir .. "/obj/" .. cfg)
         linkoptions(engine_link(cfg))
      end)
end
