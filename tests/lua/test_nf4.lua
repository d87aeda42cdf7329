-- NF4 from Lua: the transformers 4-bit layout written by bitsandbytes
-- (tests/gen/gen_nf4_layout.py) read zero-copy, dequantized exactly as bnb
-- does, re-quantized byte-identically, and written back key for key.
local T = ...
local tensor, nf4 = qlora.tensor, qlora.nf4

local keys = {
  "model.layers.0.self_attn.q_proj.weight",
  "model.layers.0.mlp.down_proj.weight",
  "model.layers.0.mlp.up_proj.weight",
}

local function same(a, b, what)
  T.eq(a.shape, b.shape, what .. " shape")
  local d = (a:to("f32") - b:to("f32")):abs():max():item()
  T.eq(d, 0, what .. " max difference")
end

T.test("reads bnb's 4-bit layout and dequantizes exactly like bnb", function()
  local w = assert(nf4.load(T.fixture("nf4_layout.safetensors")))
  local ref = assert(tensor.load(T.fixture("nf4_layout.safetensors")))
  for _, k in ipairs(keys) do
    T.eq(w[k].dtype, "nf4", k)
    T.eq(w[k].shape, ref["source." .. k].shape, k)
    T.eq(ref["expected." .. k].dtype, "bf16")
    same(nf4.dequantize(w[k], "bf16"), ref["expected." .. k], k .. " bf16")
    same(w[k]:to("f32"), ref["expected_f32." .. k], k .. " f32")
  end
  T.eq(w["model.norm.weight"].dtype, "bf16")
  T.eq(w["model.layers.0.self_attn.q_proj.weight.absmax"], nil, "state keys are folded into the nf4 tensor")
  T.eq(nf4.info(w[keys[1]]).double_quant, true)
  T.eq(nf4.info(w[keys[3]]).double_quant, false)
end)

T.test("quantizing the bf16 source reproduces bnb's bytes", function()
  local ref = assert(tensor.load(T.fixture("nf4_layout.safetensors")))
  for _, k in ipairs(keys) do
    local dq = k ~= keys[3]
    local q = nf4.quantize(ref["source." .. k], { double_quant = dq })
    local dir = T.tmpdir()
    assert(nf4.save(dir .. "/q.safetensors", { [k] = q }))
    local mine = assert(tensor.load(dir .. "/q.safetensors"))
    for name, t in pairs(mine) do
      T.truthy(ref[name], "unexpected key " .. name)
      if name:find("quant_state") then
        -- the JSON text itself, nested_offset printed as Python's repr of the same float
        T.eq(string.char(table.unpack(t:totable())), string.char(table.unpack(ref[name]:totable())), name)
      else
        same(t, ref[name], name)
      end
    end
    os.execute("rm -rf '" .. dir .. "'")
  end
end)

T.test("round trip through nf4.save / nf4.load keeps the bytes", function()
  local w = assert(nf4.load(T.fixture("nf4_layout.safetensors")))
  local dir = T.tmpdir()
  assert(nf4.save(dir .. "/rt.safetensors", w, { format = "pt" }))
  local back, meta = assert(nf4.load(dir .. "/rt.safetensors"))
  T.eq(meta.format, "pt")
  for _, k in ipairs(keys) do same(back[k]:to("f32"), w[k]:to("f32"), k) end
  os.execute("rm -rf '" .. dir .. "'")
end)

T.test("incomplete 4-bit checkpoints are refused with the key named", function()
  local ref = assert(tensor.load(T.fixture("nf4_layout.safetensors")))
  local dir = T.tmpdir()
  local k = keys[1]
  local partial = {}
  for name, t in pairs(ref) do if name ~= k .. ".nested_absmax" then partial[name] = t end end
  assert(tensor.save(dir .. "/bad.safetensors", partial))
  local t, err = nf4.load(dir .. "/bad.safetensors")
  T.eq(t, nil)
  T.truthy(err:find("nested_absmax", 1, true) and err:find("bad.safetensors", 1, true), err)
  os.execute("rm -rf '" .. dir .. "'")
end)

T.test("nf4 tensors refuse views and math with a clear message", function()
  local q = nf4.quantize(tensor.randn({ 8, 64 }, { seed = 2 }))
  T.raises(function() return q.T end, "dequantize first")
  T.raises(function() return q + 1 end, "dequantize first")
  T.raises(function() return nf4.quantize(tensor.arange(64)) end, "floating%-point")
  T.raises(function() return nf4.quantize(tensor.randn { 64 }, { blocksize = 48 }) end, "power of two")
  -- matmul dequantizes an nf4 operand on the fly
  local w = nf4.quantize(tensor.randn({ 64, 8 }, { seed = 4 }))
  local x = tensor.randn({ 3, 64 }, { seed = 3 })
  local d = (x:matmul(w) - x:matmul(w:to("f32"))):abs():max():item()
  T.eq(d, 0)
end)
