-- qlora.tfevents — TensorBoard event files (events.out.tfevents.*), written and read in Lua.
--
-- No C or Lua library that writes these is packaged in Debian (TensorBoard's own writer is
-- Python, tensorboardX too), and the format is small, so qlora has its own encoder; it is
-- checked byte for byte against files written by the `tensorboard` Python package, and its
-- files are read back by TensorBoard's EventAccumulator (tests/gen/gen_tfevents.py).
--
-- The file: TFRecord framing of protobuf `Event` messages. Each record is
--   uint64 length (little-endian) | uint32 masked CRC-32C of those 8 bytes | data | uint32 masked CRC-32C of data
-- (mask: rotate right by 15, add 0xa282ead8). The messages, from tensorboard/compat/proto:
--   Event      { double wall_time = 1; int64 step = 2; oneof { string file_version = 3; Summary summary = 5;
--                SessionLog session_log = 7; ... } }
--   Summary    { repeated Value value = 1; }   Value { string tag = 1; oneof { float simple_value = 2; ... } }
--   SessionLog { SessionStatus status = 1; }   (START = 1: a reader drops the events of steps >= this one)
-- The first event of a file carries file_version "brain.Event:2". Fields are written in field-number
-- order and proto3 defaults left out, as protobuf's serializer does, so files match byte for byte.
--
--   local tfe = require("qlora.tfevents")        -- also qlora.tfevents
--   local w = assert(tfe.open("runs/x"))         -- runs/x/events.out.tfevents.<time>.<host>.<pid>.<n>
--   w:scalars(12, {{"train/loss", 2.31}, {"train/learning_rate", 2e-4}})   -- one event, flushed
--   w:restart(5)       -- SessionLog START at step 5: TensorBoard drops steps >= 5 seen before (a resumed run)
--   w:close()
--   tfe.read(path) -> events (a list of {wall_time, step, file_version, summary = {{tag, value}}, session_log})
--                     or nil, message; every record's two CRCs are checked
--
-- Every record is written whole and flushed at once, so a crash (kill -9) leaves a file whose
-- records all read back. Values are float32 as TensorBoard stores them (NaN written as the
-- canonical quiet NaN 0x7fc00000, finite values past float32's range as +-inf, as protobuf does).
local M = {}
local sys = qlora.sys

-- ---------------------------------------------------------------- CRC-32C (Castagnoli)

local CRC = {}
for i = 0, 255 do
  local c = i
  for _ = 1, 8 do c = (c & 1 ~= 0) and ((c >> 1) ~ 0x82F63B78) or (c >> 1) end
  CRC[i] = c
end

-- CRC-32C of a string (reflected polynomial 0x82F63B78, initial and final xor 0xFFFFFFFF)
function M.crc32c(s)
  local c = 0xFFFFFFFF
  local byte = string.byte
  for i = 1, #s do c = CRC[(c ~ byte(s, i)) & 0xFF] ~ (c >> 8) end
  return c ~ 0xFFFFFFFF
end

-- TensorFlow's masked CRC (crc32c.h: rotate right by 15 bits, add a constant)
function M.masked_crc(s)
  local c = M.crc32c(s)
  return ((((c >> 15) | (c << 17)) & 0xFFFFFFFF) + 0xa282ead8) & 0xFFFFFFFF
end

-- one TFRecord around data
function M.record(data)
  local len = string.pack("<I8", #data)
  return len .. string.pack("<I4", M.masked_crc(len)) .. data .. string.pack("<I4", M.masked_crc(data))
end

-- ---------------------------------------------------------------- protobuf encoding

local function varint(n)          -- n: a 64-bit integer (negative ones take 10 bytes, as int64 does)
  local t = {}
  repeat
    local b = n & 0x7F
    n = n >> 7                     -- logical shift: a negative n ends after 10 bytes
    if n ~= 0 then b = b | 0x80 end
    t[#t + 1] = string.char(b)
  until n == 0
  return table.concat(t)
end

local function bytes_field(tag_byte, s) return tag_byte .. varint(#s) .. s end

local F32_ROUNDS_TO_INF = 0x1.ffffffp+127   -- FLT_MAX + half an ulp: from here on a float32 is inf
local function f32(v)
  if v ~= v then return "\0\0\xc0\x7f" end
  if v >= F32_ROUNDS_TO_INF then v = math.huge elseif v <= -F32_ROUNDS_TO_INF then v = -math.huge end
  return string.pack("<f", v)
end

local ZERO8 = string.rep("\0", 8)

-- the bytes of one Event: ev.wall_time (seconds), ev.step (integer), and one of ev.file_version
-- (string), ev.summary (a list of {tag, value}: simple_value scalars), ev.session_log ({status = n})
function M.encode_event(ev)
  local p = {}
  if ev.wall_time then
    local d = string.pack("<d", ev.wall_time)
    if d ~= ZERO8 then p[#p + 1] = "\x09" .. d end
  end
  local step = ev.step and math.tointeger(ev.step)
  if ev.step and not step then error("tfevents: step must be an integer, not " .. tostring(ev.step), 2) end
  if step and step ~= 0 then p[#p + 1] = "\x10" .. varint(step) end
  if ev.file_version then p[#p + 1] = bytes_field("\x1a", ev.file_version) end
  if ev.summary then
    local vals = {}
    for i, v in ipairs(ev.summary) do
      local tag, value = v[1] or v.tag, v[2] or v.value
      if type(tag) ~= "string" or type(value) ~= "number" then
        error("tfevents: summary value " .. i .. " must be {tag (string), value (number)}", 2)
      end
      vals[#vals + 1] = bytes_field("\x0a", bytes_field("\x0a", tag) .. "\x15" .. f32(value))
    end
    p[#p + 1] = bytes_field("\x2a", table.concat(vals))
  end
  if ev.session_log then
    local status = math.tointeger(ev.session_log.status or 0)
    p[#p + 1] = bytes_field("\x3a", status ~= 0 and "\x08" .. varint(status) or "")
  end
  return table.concat(p)
end

-- ---------------------------------------------------------------- decoding (reading files back)

local function read_varint(s, i)
  local n, shift = 0, 0
  while true do
    local b = s:byte(i)
    if not b then return nil end
    n = n | ((b & 0x7F) << shift)
    i = i + 1
    if b < 0x80 then return n, i end
    shift = shift + 7
    if shift > 63 then return nil end
  end
end

-- the fields of a message: calls fn(field, wire, value) for each; false, why when malformed
local function fields(s, fn)
  local i = 1
  while i <= #s do
    local key
    key, i = read_varint(s, i)
    if not key then return false, "a truncated field key" end
    local field, wire = key >> 3, key & 7
    local v
    if wire == 0 then
      v, i = read_varint(s, i)
      if not v then return false, "a truncated varint" end
    elseif wire == 1 then
      if i + 7 > #s then return false, "a truncated 64-bit field" end
      v = s:sub(i, i + 7); i = i + 8
    elseif wire == 5 then
      if i + 3 > #s then return false, "a truncated 32-bit field" end
      v = s:sub(i, i + 3); i = i + 4
    elseif wire == 2 then
      local n
      n, i = read_varint(s, i)
      if not n or n < 0 or i + n - 1 > #s then return false, "a truncated length-delimited field" end
      v = s:sub(i, i + n - 1); i = i + n
    else
      return false, "wire type " .. wire .. " (not written by TensorBoard)"
    end
    fn(field, wire, v)
  end
  return true
end

-- an Event's bytes -> {wall_time, step, file_version, summary = {{tag, value}}, session_log = {status}}
function M.decode_event(data)
  local ev = { wall_time = 0.0, step = 0 }
  local ok, why = fields(data, function(f, w, v)
    if f == 1 and w == 1 then ev.wall_time = string.unpack("<d", v)
    elseif f == 2 and w == 0 then ev.step = v
    elseif f == 3 and w == 2 then ev.file_version = v
    elseif f == 5 and w == 2 then
      ev.summary = ev.summary or {}
      fields(v, function(f2, w2, val)
        if f2 == 1 and w2 == 2 then
          local item = {}
          fields(val, function(f3, w3, x)
            if f3 == 1 and w3 == 2 then item.tag = x
            elseif f3 == 2 and w3 == 5 then item.value = string.unpack("<f", x) end
          end)
          item[1], item[2] = item.tag, item.value
          ev.summary[#ev.summary + 1] = item
        end
      end)
    elseif f == 7 and w == 2 then
      ev.session_log = { status = 0 }
      fields(v, function(f2, w2, x) if f2 == 1 and w2 == 0 then ev.session_log.status = x end end)
    end
  end)
  if not ok then return nil, why end
  return ev
end

-- the events of a file, every record's length and data CRCs checked; nil, message (naming the
-- file and the byte offset) on a bad CRC or a malformed event. A record cut short at the end
-- (a writer killed in mid-write) ends the list: events.truncated is then its offset.
function M.read(path)
  local f, err = io.open(path, "rb")
  if not f then return nil, path .. ": cannot open (" .. tostring(err) .. ")" end
  local s = f:read("a")
  f:close()
  local events, i = {}, 1
  while i <= #s do
    if i + 11 > #s then events.truncated = i - 1; break end
    local lenb = s:sub(i, i + 7)
    local len, lcrc = string.unpack("<I8", lenb), string.unpack("<I4", s, i + 8)
    if lcrc ~= M.masked_crc(lenb) then
      return nil, string.format("%s: byte %d: the record length's CRC does not match (not an event file, or damaged)", path, i - 1)
    end
    if len < 0 or i + 12 + len + 3 > #s then events.truncated = i - 1; break end
    local data = s:sub(i + 12, i + 11 + len)
    if string.unpack("<I4", s, i + 12 + len) ~= M.masked_crc(data) then
      return nil, string.format("%s: byte %d: the record's data CRC does not match (damaged)", path, i - 1)
    end
    local ev, why = M.decode_event(data)
    if not ev then return nil, string.format("%s: byte %d: %s", path, i - 1, why) end
    events[#events + 1] = ev
    i = i + 16 + len
  end
  return events
end

-- ---------------------------------------------------------------- the writer

local function hostname()
  local f = io.open("/proc/sys/kernel/hostname", "rb")
  local h = f and f:read("l")
  if f then f:close() end
  h = h or os.getenv("HOSTNAME") or "localhost"
  h = h:gsub("[^%w%.%-_]", "_")
  return h ~= "" and h or "localhost"
end

local Writer = {}
Writer.__index = Writer
local uid = 0

-- a new event file in dir (made if missing), its first event (file_version) written and flushed.
-- opts.clock: a function returning the wall time in Unix seconds (default: the system clock, to
-- the millisecond); opts.name: the file name (default TensorBoard's events.out.tfevents.<time>.<host>.<pid>.<n>).
-- Returns the writer or nil, message.
function M.open(dir, opts)
  opts = opts or {}
  local ok, why = sys.mkdir(dir)
  if not ok then return nil, dir .. ": cannot make the folder for the event file (" .. tostring(why) .. ")" end
  local name = opts.name
  if not name then
    repeat
      name = string.format("events.out.tfevents.%010d.%s.%d.%d", os.time(), hostname(), sys.pid(), uid)
      uid = uid + 1
    until not sys.exists(dir .. "/" .. name)
  end
  local path = dir .. "/" .. name
  local f, err = io.open(path, "wb")
  if not f then return nil, path .. ": cannot write the event file (" .. tostring(err) .. ")" end
  local clock = opts.clock
  if not clock then
    -- Lua's os.time() has whole seconds; the new file's modification time is the wall clock to the
    -- millisecond, and the monotonic clock carries it on from there
    local t0, m0 = sys.mtime(path) or os.time(), sys.now()
    clock = function() return t0 + (sys.now() - m0) end
  end
  local w = setmetatable({ f = f, path = path, clock = clock }, Writer)
  local wok, werr = pcall(w.add, w, { file_version = "brain.Event:2" })
  if not wok then f:close(); return nil, tostring(werr) end
  return w
end

-- writes one event (ev.wall_time defaults to the clock) as one record, flushed; raises on a write error
function Writer:add(ev)
  if not self.f then error(self.path .. ": the event file is closed", 2) end
  if ev.wall_time == nil then
    local e = {}
    for k, v in pairs(ev) do e[k] = v end
    e.wall_time = self.clock()
    ev = e
  end
  local ok, err = self.f:write(M.record(M.encode_event(ev)))
  if ok then ok, err = self.f:flush() end
  if not ok then error(self.path .. ": cannot write the event file (" .. tostring(err) .. ")", 0) end
end

-- scalars of one step in one event: values is a list of {tag, value}
function Writer:scalars(step, values, wall_time)
  self:add({ step = step, summary = values, wall_time = wall_time })
end

-- SessionLog START at step: readers drop the events of steps >= step written before it
-- (what a run resumed from a checkpoint does again)
function Writer:restart(step, wall_time)
  self:add({ step = step, session_log = { status = 1 }, wall_time = wall_time })
end

-- closes the file (also when collected, or at the end of a `local w <close>` scope); idempotent
function Writer:close()
  if self.f then self.f:close(); self.f = nil end
end
Writer.__close = Writer.close
Writer.__gc = Writer.close

-- whether a file name is an event file's (TensorBoard reads every file whose name holds "tfevents")
function M.is_event_file(name) return name:match("^events%.out%.tfevents%.") ~= nil end

return M
