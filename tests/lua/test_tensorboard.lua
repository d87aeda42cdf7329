-- TensorBoard event files (qlora.tfevents, the trainer's event log): qlora's bytes equal those
-- that TensorBoard's own writer made for the same events (tests/gen/gen_tfevents.py wrote
-- tests/fixtures/tfevents/ and read qlora's files back with TensorBoard's EventAccumulator);
-- CRC-32C against published check values; damage is found; a run's log holds the scalars of
-- metrics.jsonl; a run killed with SIGKILL leaves a readable log, and its resume says START.
local T = ...
local tfe, json, sys = qlora.tfevents, qlora.json, qlora.sys

local function read(p) local f = io.open(p, "rb"); if not f then return nil end local s = f:read("a"); f:close(); return s end
local function write(p, s) local f = assert(io.open(p, "wb")); f:write(s); f:close() end
local function f32(v) return (string.unpack("<f", string.pack("<f", v))) end
local SPECIAL = { nan = 0 / 0, inf = math.huge, ["-inf"] = -math.huge, ["-0.0"] = -0.0 }

local function scenario() return json.decode(read(T.fixture("tfevents/scenario.json"))) end

-- qlora writes the scenario's events with the scenario's wall times (the clock injected)
local function write_scenario(dir)
  local evs = scenario()
  local k = 0
  local w = assert(tfe.open(dir, { name = "events.out.tfevents.test", clock = function() k = k + 1; return evs[k].wall_time end }))
  for i = 2, #evs do
    local e = evs[i]
    if e.summary then
      local vals = {}
      for j, tv in ipairs(e.summary) do vals[j] = { tv[1], SPECIAL[tv[2]] or tv[2] } end
      w:scalars(e.step, vals)
    elseif e.session_log == 1 then
      w:restart(e.step)
    else
      w:add({ step = e.step, session_log = { status = e.session_log } })
    end
  end
  w:close()
  T.eq(k, #evs, "one clock reading per event")
  return dir .. "/events.out.tfevents.test"
end

local function event_files(dir)
  local t = {}
  for _, n in ipairs(sys.list_dir(dir) or {}) do if tfe.is_event_file(n) then t[#t + 1] = n end end
  table.sort(t)
  return t
end

local tiny, data = T.tiny_model, T.word_data

T.test("CRC-32C: the published check values; TensorFlow's mask", function()
  T.eq(tfe.crc32c(""), 0)
  T.eq(tfe.crc32c("123456789"), 0xE3069283)                 -- the CRC catalogue's check value
  T.eq(tfe.crc32c(string.rep("\0", 32)), 0x8A9136AA)        -- RFC 3720, B.4
  T.eq(tfe.crc32c(string.rep("\xff", 32)), 0x62A8AB43)
  local inc = {}
  for i = 0, 31 do inc[#inc + 1] = string.char(i) end
  T.eq(tfe.crc32c(table.concat(inc)), 0x46DD794E)
  -- mask: rotate right 15, add 0xa282ead8 (mod 2^32)
  local c = tfe.crc32c("123456789")
  T.eq(tfe.masked_crc("123456789"), ((((c >> 15) | (c << 17)) & 0xFFFFFFFF) + 0xa282ead8) & 0xFFFFFFFF)
end)

T.test("qlora's event file is byte for byte what TensorBoard's writer made (golden)", function()
  local golden = assert(read(T.fixture("tfevents/golden.tfevents")))
  local dir = T.tmpdir()
  local mine = read(write_scenario(dir))
  if mine ~= golden then
    local i = 1
    while mine:byte(i) == golden:byte(i) do i = i + 1 end
    error(string.format("differs from byte %d (of %d; golden %d)", i - 1, #mine, #golden))
  end
  -- every record's framing, by hand: length, masked CRC of the length, data, masked CRC of the data
  local pos, n = 1, 0
  while pos <= #golden do
    local len = string.unpack("<I8", golden, pos)
    T.eq(string.unpack("<I4", golden, pos + 8), tfe.masked_crc(golden:sub(pos, pos + 7)), "length CRC of record " .. n + 1)
    T.eq(string.unpack("<I4", golden, pos + 12 + len), tfe.masked_crc(golden:sub(pos + 12, pos + 11 + len)), "data CRC")
    pos, n = pos + 16 + len, n + 1
  end
  T.eq(pos, #golden + 1)
  T.eq(n, #scenario())
  os.execute("rm -rf '" .. dir .. "'")
end)

T.test("reading an event file back: every field of every event", function()
  local evs = assert(tfe.read(T.fixture("tfevents/golden.tfevents")))
  local want = scenario()
  T.eq(#evs, #want)
  T.eq(evs.truncated, nil)
  T.eq(evs[1].file_version, "brain.Event:2")
  for i, w in ipairs(want) do
    local e = evs[i]
    T.eq(e.wall_time, w.wall_time, "event " .. i .. " wall time")
    T.eq(e.step, w.step or 0, "event " .. i .. " step")
    T.eq(e.session_log and e.session_log.status, w.session_log, "event " .. i .. " session_log")
    T.eq(e.summary and #e.summary, w.summary and #w.summary)
    for j, tv in ipairs(w.summary or {}) do
      local v, got = SPECIAL[tv[2]] or tv[2], e.summary[j]
      T.eq(got.tag, tv[1])
      if v ~= v then T.truthy(got.value ~= got.value, tv[1] .. " is NaN")
      else T.eq(string.pack("<f", got.value), string.pack("<f", v), tv[1]) end   -- bits: -0.0, rounding to inf
    end
  end
end)

T.test("a damaged byte is found and named; a record cut short ends the list", function()
  local dir = T.tmpdir()
  local golden = assert(read(T.fixture("tfevents/golden.tfevents")))
  local first_len = string.unpack("<I8", golden)
  -- a flipped bit in the second record's data
  local at = 16 + first_len + 12 + 3
  write(dir .. "/bad", golden:sub(1, at - 1) .. string.char(golden:byte(at) ~ 1) .. golden:sub(at + 1))
  local evs, err = tfe.read(dir .. "/bad")
  T.eq(evs, nil)
  T.truthy(err:find(dir .. "/bad: byte " .. (16 + first_len) .. ": the record's data CRC", 1, true), err)
  -- a flipped bit in a length
  write(dir .. "/bad2", golden:sub(1, 16 + first_len) .. string.char(golden:byte(17 + first_len) ~ 4) .. golden:sub(18 + first_len))
  evs, err = tfe.read(dir .. "/bad2")
  T.truthy(not evs and err:find("length's CRC", 1, true), err)
  -- a writer killed in mid-record: the whole records before it read back
  write(dir .. "/cut", golden:sub(1, #golden - 5))
  evs = assert(tfe.read(dir .. "/cut"))
  T.eq(#evs, #scenario() - 1)
  T.truthy(evs.truncated, "the cut is reported")
  evs, err = tfe.read(dir .. "/missing")
  T.truthy(not evs and err:find(dir .. "/missing: cannot open", 1, true), err)
  os.execute("rm -rf '" .. dir .. "'")
end)

T.test("a training run's event log holds metrics.jsonl's scalars; tensorboard=false writes none", function()
  local dir = T.tmpdir()
  local m = assert(qlora.model.load(tiny(dir .. "/m"), { quant = "nf4" }))
  local tok = assert(qlora.tokenizer.load(dir .. "/m"))
  data(dir .. "/d.jsonl", 24)
  local function run(out, opts)
    local cfg = { model = m, tokenizer = tok, data = dir .. "/d.jsonl", out = out, lora = { r = 4 }, seq_len = 32,
                  batch_size = 2, lr = 5e-3, max_steps = 5, eval_every = 2, eval_fraction = 0.2, save_every = 0, seed = 3 }
    for k, v in pairs(opts or {}) do cfg[k] = v end
    return qlora.train.new(cfg):fit()
  end
  local t0 = os.time()
  run(dir .. "/run")
  local files = event_files(dir .. "/run")
  T.eq(#files, 1, "one event file")
  T.truthy(files[1]:match("^events%.out%.tfevents%.%d%d%d%d%d%d%d%d%d%d%.[^.]+.*%.%d+%.%d+$"), files[1])
  local evs = assert(tfe.read(dir .. "/run/" .. files[1]))
  T.eq(evs[1].file_version, "brain.Event:2")
  T.truthy(math.abs(evs[1].wall_time - t0) <= 5, "wall time in Unix seconds: " .. evs[1].wall_time)
  T.eq({ evs[2].step, evs[2].session_log }, { 1, { status = 1 } }, "the run's SessionLog START")
  local rows = {}
  for line in io.lines(dir .. "/run/metrics.jsonl") do rows[#rows + 1] = json.decode(line) end
  T.eq(#evs, 2 + #rows, "one event per step")
  local last = evs[1].wall_time
  for i, r in ipairs(rows) do
    local e = evs[i + 2]
    T.eq(e.step, r.step)
    T.truthy(e.wall_time >= last and e.wall_time <= os.time() + 1, "wall times increase")
    last = e.wall_time
    local got = {}
    for _, v in ipairs(e.summary) do got[v.tag] = v.value end
    local want = { ["train/loss"] = r.loss, ["train/learning_rate"] = r.lr, ["train/grad_norm"] = r.grad_norm,
                   ["train/tokens_per_s"] = r.tokens_per_s, ["eval/loss"] = r.eval_loss, ["eval/perplexity"] = r.eval_perplexity }
    for tag, v in pairs(want) do T.eq(got[tag], f32(v), "step " .. r.step .. " " .. tag) end
    for tag in pairs(got) do T.truthy(want[tag], "step " .. r.step .. ": unexpected tag " .. tag) end
    T.eq(got["eval/loss"] ~= nil, r.step % 2 == 0 or r.step == 5, "eval scalars at the eval steps")
  end
  -- a new run into the folder replaces the old log; tensorboard=false leaves none
  run(dir .. "/run", { tensorboard = false })
  T.eq(event_files(dir .. "/run"), {})
  T.truthy(read(dir .. "/run/metrics.jsonl"), "metrics.jsonl is still written")
  -- the event files are a run's outputs: a recipe refuses to mix runs in one folder
  sys.remove_tree(dir .. "/run")
  run(dir .. "/run")
  local outs = qlora.train.run_outputs(dir .. "/run")
  T.eq(outs[3], event_files(dir .. "/run")[1], table.concat(outs, ", "))
  -- wall times from an injected clock (what the byte-for-byte test does for the writer)
  local k = 0
  run(dir .. "/clocked", { clock = function() k = k + 1; return 1.5e9 + k / 4 end })
  local got = {}
  for i, e in ipairs(assert(tfe.read(dir .. "/clocked/" .. event_files(dir .. "/clocked")[1]))) do got[i] = e.wall_time end
  T.eq(got, { 1.5e9 + 0.25, 1.5e9 + 0.5, 1.5e9 + 0.75, 1.5e9 + 1, 1.5e9 + 1.25, 1.5e9 + 1.5, 1.5e9 + 1.75 })
  os.execute("rm -rf '" .. dir .. "'")
end)

T.test("a run killed with SIGKILL leaves a readable log; the resumed run's file starts with START", function()
  local dir = T.tmpdir()
  tiny(dir .. "/m")
  data(dir .. "/d.jsonl", 40)
  local cmd = T.qlora .. " recipes/train.lua model=" .. dir .. "/m data=" .. dir .. "/d.jsonl out=" .. dir .. "/run " ..
              "seq_len=32 batch=2 steps=6 lr=5e-3 r=4 save_every=2 eval_every=3 seed=1"
  local out, rc = T.sh("QLORA_KILL_AT=3 " .. cmd)
  T.truthy(rc ~= 0, "killed: " .. out)
  local files = event_files(dir .. "/run")
  T.eq(#files, 1)
  local evs = assert(tfe.read(dir .. "/run/" .. files[1]))
  T.eq(evs.truncated, nil, "every record whole")
  T.eq(#evs, 5, "the header, START and steps 1-3")
  T.eq(evs[5].step, 3)
  out, rc = T.sh(cmd .. " resume=" .. dir .. "/run/checkpoint-2")
  T.eq(rc, 0, out)
  files = event_files(dir .. "/run")
  T.eq(#files, 2, "the resumed run adds a file")
  local first = assert(tfe.read(dir .. "/run/" .. files[1]))
  local second = assert(tfe.read(dir .. "/run/" .. files[2]))
  if #first ~= 5 then first, second = second, first end   -- two names in the same second: by pid
  T.eq(#first, 5, "the killed run's file is left as it was")
  T.eq(second[1].file_version, "brain.Event:2")
  T.eq(second[2].step, 3)
  T.eq(second[2].session_log, { status = 1 })
  local steps = {}
  for i = 3, #second do steps[#steps + 1] = second[i].step end
  T.eq(steps, { 3, 4, 5, 6 })
  os.execute("rm -rf '" .. dir .. "'")
end)
