-- Tensor core against PyTorch's golden values (tests/gen/gen_tensor.py) and
-- against properties that need no reference (views, errors, lifetimes).
local T = ...
local tensor = qlora.tensor

local G, meta
local function golden()
  if not G then
    G, meta = tensor.load(T.fixture("tensor_golden.safetensors"))
    assert(G, meta)
  end
  return G
end

-- |a - r| <= atol + rtol * |r| everywhere; NaN only where r is NaN
local function allclose(a, r, atol, rtol, what)
  a, r = a:to("f32"), r:to("f32")
  T.eq(a.shape, r.shape, (what or "") .. " shape")
  local anan, rnan = a:ne(a), r:ne(r)
  T.eq(anan:eq(rnan):min():item(), 1, (what or "") .. ": NaN positions differ")
  local bad = (a - r):abs():gt(r:abs() * rtol + atol):mul(rnan:eq(0)):sum():item()
  if bad > 0 then
    local d = ((a - r):abs() * rnan:eq(0)):max():item()
    error(string.format("%s: %d elements differ, max abs diff %.3g", what or "", bad, d), 2)
  end
end

-- bit-exact equality through f32 (NaN == NaN)
local function same(a, r, what) allclose(a, r, 0, 0, what) end

T.test("reads HF safetensors: dtypes, shapes, metadata", function()
  local g = golden()
  T.eq(meta.generator, "tests/gen/gen_tensor.py")
  T.eq(g["int.i32"]:totable(), { { 1, -2, 3 }, { 2147483647, -2147483648, 0 } })
  T.eq(g["int.i64"]:totable(), { 2 ^ 40 + 3, -7, 0 })
  T.eq(g["int.u8"].dtype, "u8")
  T.eq(g["int.u8"]:totable(), { 0, 255, 7 })
  T.eq(g["empty"].shape, { 0, 3 })
  T.eq(g["scalar"]:item(), 2.5)
  T.eq(g["conv.bf16"].dtype, "bf16")
end)

T.test("f32 -> bf16 and f16 round to nearest even like torch", function()
  local g = golden()
  same(g["conv.in"]:to("bf16"), g["conv.bf16"], "bf16")
  same(g["conv.in"]:to("f16"), g["conv.f16"], "f16")
end)

T.test("every bf16 and f16 bit pattern widens like torch", function()
  local g = golden()
  -- torch widened every bit pattern to f32; narrowing those values back must give the same
  -- bf16/f16 values (exactly representable), and widening them torch's f32 again
  same(g["conv.bf16_all"]:to("bf16"):to("f32"), g["conv.bf16_all"], "bf16 round trip")
  same(g["conv.f16_all"]:to("f16"):to("f32"), g["conv.f16_all"], "f16 round trip")
end)

T.test("broadcasting binary ops match torch", function()
  local g = golden()
  local a, b = g["bin.a"], g["bin.b"]
  same(a + b, g["bin.add"], "add")
  same(a - b, g["bin.sub"], "sub")
  same(a * b, g["bin.mul"], "mul")
  same(a / b, g["bin.div"], "div")
  same(a:maximum(b), g["bin.maximum"], "maximum")
  same(a:lt(b), g["bin.lt"], "lt")
end)

T.test("unary ops match torch within f32 rounding", function()
  local g = golden()
  local x = g["un.x"]
  allclose(x:exp(), g["un.exp"], 0, 2e-6, "exp")
  allclose(x:silu(), g["un.silu"], 1e-7, 2e-6, "silu")
  -- gelu = x/2 (1 + erf(x/sqrt 2)) cancels for x << 0 in both implementations: absolute tolerance
  allclose(x:gelu(), g["un.gelu"], 1e-6, 2e-6, "gelu")
  allclose(x:sigmoid(), g["un.sigmoid"], 1e-7, 2e-6, "sigmoid")
  allclose(x:tanh(), g["un.tanh"], 1e-7, 2e-6, "tanh")
  allclose(x:abs():rsqrt(), g["un.rsqrt_abs"], 0, 2e-6, "rsqrt")
end)

T.test("reductions and softmax match torch (dims are 1-based)", function()
  local g = golden()
  local r = g["red.x"]
  allclose(r:sum(2), g["red.sum1"], 1e-6, 1e-6, "sum")
  allclose(r:mean(3), g["red.mean2"], 1e-6, 1e-6, "mean")
  same(r:max(1), g["red.max0"], "max")
  T.eq((r:argmax(3) - 1):totable(), g["red.argmax2"]:totable(), "argmax")
  allclose(r:softmax(2), g["red.softmax1"], 1e-7, 1e-6, "softmax dim 2")
  allclose(r:permute(3, 1, 2):softmax(), g["red.softmax_perm"], 1e-7, 1e-6, "softmax of a permuted view")
end)

T.test("matmul matches torch: transposed views, batch broadcast, bf16", function()
  local g = golden()
  allclose(g["mm.a"]:matmul(g["mm.b"]), g["mm.ab"], 1e-5, 1e-5, "a@b")
  allclose(g["mm.a"]:matmul(g["mm.bt"].T), g["mm.a_btT"], 1e-5, 1e-5, "a@bt.T")
  allclose(g["mm.ba"]:matmul(g["mm.bb"]), g["mm.ba_bb"], 1e-5, 1e-5, "batched")
  allclose(g["mm.bf16_a"]:matmul(g["mm.bf16_b"]):float(), g["mm.bf16_ab_f32"], 1e-2, 1e-2, "bf16")
end)

T.test("integer math wraps modulo 2^64; pow takes log(exponent) steps", function()
  T.eq((tensor.from({ 3, -2 }) ^ 5):totable(), { 243, -32 })
  T.eq((tensor.from({ 2 }) ^ 64):totable(), { 0 })                       -- 2^64 mod 2^64
  local t0 = os.clock()
  T.eq((tensor.from({ 1, -1 }) ^ (1 << 62)):totable(), { 1, 1 })          -- an even exponent of 2^62
  T.truthy(os.clock() - t0 < 1, "a huge exponent must not loop once per unit")
  T.eq((-tensor.from({ math.mininteger })):totable(), { math.mininteger })  -- wraps, no overflow trap
end)

T.test("views share storage; contiguous copies", function()
  local a = tensor.arange(24):reshape(2, 3, 4)
  local t = a:transpose(1, 3)
  T.eq(t.shape, { 4, 3, 2 })
  T.eq(t:is_contiguous(), false)
  T.eq(t[4][3][2]:item(), a[2][3][4]:item())
  local s = a:slice(3, 2, 3)            -- columns 2..3 (inclusive)
  T.eq(s.shape, { 2, 3, 2 })
  T.eq(s:contiguous():totable()[1][1], { 1, 2 })
  T.eq(a:slice(2, -1).shape, { 2, 1, 4 })
  a:select(1, 1):copy_(7)
  T.eq(a[1][2][3]:item(), 7)             -- writes through the view
  T.eq(t:contiguous():reshape(-1):numel(), 24)
  T.raises(function() return t:view(24) end, "strides do not allow")
  T.eq(t:reshape(24).shape, { 24 })
end)

T.test("rand is a pure function of (seed, stream, index)", function()
  local x = tensor.randn({ 4, 5 }, { seed = 7 })
  local y = tensor.randn({ 20 }, { seed = 7 })
  same(x:reshape(20), y, "same numbers whatever the shape")
  local z = tensor.randn({ 20 }, { seed = 8 })
  T.eq(z:eq(y):sum():item() < 3, true)
  local u = tensor.rand({ 100000 }, { seed = 1 })
  T.near(u:mean():item(), 0.5, 0.01)
  T.eq(u:min():item() >= 0 and u:max():item() < 1, true)
  local n = tensor.randn({ 100000 }, { seed = 1 })
  T.near(n:mean():item(), 0, 0.02)
  T.near(n:square():mean():item(), 1, 0.02)
end)

T.test("clear errors for bad shapes, dtypes and devices", function()
  local a, b = tensor.zeros(2, 3), tensor.zeros(4, 5)
  T.raises(function() return a + b end, "do not broadcast")
  T.raises(function() return a:matmul(b) end, "inner dimensions differ")
  T.raises(function() return a:view(4, 2) end, "cannot view")
  T.raises(function() return tensor.zeros(2, { dtype = "f64" }) end, "unknown dtype")
  T.raises(function() return a:to("cuda:99") end, "cuda")
  T.raises(function() return a[0] end, "1%-based")
  T.raises(function() return tensor.from({ { 1, 2 }, { 3 } }) end, "ragged")
end)

T.test("safetensors round trip and atomic save", function()
  local dir = T.tmpdir()
  local path = dir .. "/x.safetensors"
  local src = { w = tensor.randn({ 3, 4 }, { seed = 3 }):to("bf16"), i = tensor.arange(5), t = tensor.randn({ 4, 3 }, { seed = 4 }).T }
  T.truthy(tensor.save(path, src, { note = "hi" }))
  local back, m = tensor.load(path)
  T.eq(m.note, "hi")
  same(back.w, src.w, "bf16")
  T.eq(back.i:totable(), { 0, 1, 2, 3, 4 })
  same(back.t, src.t, "strided source saved contiguous")
  -- a failing save leaves nothing behind
  local ok, err = tensor.save(dir .. "/missing/dir/y.safetensors", src)
  T.eq(ok, nil)
  T.truthy(err:find("cannot create"), err)
  os.execute("rm -rf '" .. dir .. "'")
end)

T.test("corrupt and truncated safetensors give clear errors", function()
  local dir = T.tmpdir()
  local good = dir .. "/g.safetensors"
  tensor.save(good, { a = tensor.randn({ 64 }, { seed = 1 }) })
  local data = io.open(good, "rb"):read("a")
  local function try(bytes, pattern)
    local p = dir .. "/bad.safetensors"
    local f = io.open(p, "wb"); f:write(bytes); f:close()
    local t, err = tensor.load(p)
    T.eq(t, nil)
    T.truthy(err:find(pattern), err)
    T.truthy(err:find("bad.safetensors", 1, true), "message names the file: " .. err)
  end
  try(data:sub(1, #data - 10), "truncated")
  try(data:sub(1, 5), "too short")
  try(string.pack("<I8", 1 << 40) .. data:sub(9), "does not fit")
  try(data:gsub('"F32"', '"X32"', 1), "unknown dtype")
  try(data:gsub('"shape":%[64%]', '"shape":[65]', 1), "need")
  local missing, err = tensor.load(dir .. "/nope.safetensors")
  T.eq(missing, nil)
  T.truthy(err:find("cannot open"), err)
  os.execute("rm -rf '" .. dir .. "'")
end)

T.test("tensors release their memory; <close> works", function()
  collectgarbage(); collectgarbage()
  local before = tensor.memory().in_use
  do
    local big <close> = tensor.zeros(1000, 1000)
    T.eq(tensor.memory().in_use - before >= 4000000, true)
  end
  collectgarbage(); collectgarbage()
  T.eq(tensor.memory().in_use, before)
  local t = tensor.zeros(3)
  t:release()
  T.raises(function() return t + 1 end, "released")
end)
