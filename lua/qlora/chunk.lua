-- lua/qlora/chunk.lua — splits Markdown into chunks bounded in tokens.
--   chunk.split(md, opts) -> { {text=, headings={...}, source=, page_first=, page_last=, tokens=}, ... }
--     opts.max_tokens (512), opts.overlap (0: tokens of trailing sentences repeated
--     at the start of the next chunk when a section is cut), opts.source (file name),
--     opts.counter: a function(text) -> n, or an object with :count(text) (the
--     qlora.tokenizer interface); default chunk.approx_counter.
--   Code blocks and tables are never split unless one alone is over the limit
--   (then by lines); cuts prefer headings, then paragraphs, then sentences.
--   Budgets are exact: a chunk is counted as written, its blocks joined by
--   "\n\n" (and pieces of a code block in their own fences), so no chunk goes
--   over max_tokens unless one word alone does.
--   Page markers "<!-- page N -->" (pdf_to_md page_markers=true) give page ranges.
--   chunk.to_jsonl(chunks, {format="text"|"chat"|"instruct", meta=false}) -> string
--   chunk.write_jsonl(path, chunks, opts): written atomically (temp + rename)
local M = {}

-- about 1.3 tokens per word plus one per CJK character: a stand-in until qlora.tokenizer lands
function M.approx_counter(s)
  local words = 0
  for _ in s:gmatch("%S+") do words = words + 1 end
  local cjk = 0
  for c in s:gmatch("[\xE3-\xE9][\x80-\xBF][\x80-\xBF]") do cjk = cjk + 1 end
  return math.ceil(words * 1.3) + cjk
end

local function counter_of(opts)
  local c = opts.counter or M.approx_counter
  if type(c) == "function" then return c end
  return function(s) return c:count(s) end
end

-- blocks: {kind="heading"|"code"|"table"|"list"|"para"|"page", text=, level=, page=}
local function blocks_of(md)
  local blocks, page = {}, 1
  local lines = {}
  for l in (md .. "\n"):gmatch("(.-)\n") do lines[#lines + 1] = l end
  local i = 1
  local function add(kind, text, extra)
    local b = extra or {}
    b.kind, b.text, b.page = kind, text, page
    blocks[#blocks + 1] = b
  end
  while i <= #lines do
    local l = lines[i]
    local pn = l:match("^<!%-%- page (%d+) %-%->$")
    if pn then page = tonumber(pn); i = i + 1
    elseif l:match("^%s*```") then
      local j = i + 1
      while j <= #lines and not lines[j]:match("^%s*```") do j = j + 1 end
      add("code", table.concat(lines, "\n", i, math.min(j, #lines)))
      i = j + 1
    elseif l:match("^#+%s") then
      local h, t = l:match("^(#+)%s+(.*)$")
      add("heading", l, { level = #h, title = t })
      i = i + 1
    elseif l:match("^%s*|") then
      local j = i
      while j + 1 <= #lines and lines[j + 1]:match("^%s*|") do j = j + 1 end
      add("table", table.concat(lines, "\n", i, j)); i = j + 1
    elseif l:match("^%s*[-*+]%s") or l:match("^%s*%d+[.)]%s") then
      local j = i
      while j + 1 <= #lines and (lines[j + 1]:match("^%s*[-*+]%s") or lines[j + 1]:match("^%s*%d+[.)]%s")
                                 or lines[j + 1]:match("^%s%s+%S")) do j = j + 1 end
      add("list", table.concat(lines, "\n", i, j)); i = j + 1
    elseif l:match("%S") then
      local j = i
      while j + 1 <= #lines and lines[j + 1]:match("%S") and not lines[j + 1]:match("^#+%s")
            and not lines[j + 1]:match("^%s*```") and not lines[j + 1]:match("^<!%-%- page") do j = j + 1 end
      add("para", table.concat(lines, "\n", i, j)); i = j + 1
    else i = i + 1 end
  end
  return blocks
end

local function sentences(s)
  local out, start = {}, 1
  for pos in s:gmatch("[%.!?。！？][\"')%]]*%s+()") do
    out[#out + 1] = s:sub(start, pos - 1); start = pos
  end
  if start <= #s then out[#out + 1] = s:sub(start) end
  return out
end

-- splits one block that alone is over the limit into pieces within it
local function split_big(b, max, count)
  local units, sep
  if b.kind == "para" then units, sep = sentences(b.text), ""
  else units, sep = {}, "\n"; for l in (b.text .. "\n"):gmatch("(.-)\n") do units[#units + 1] = l end end
  local pieces, cur = {}, {}
  local fence = b.kind == "code" and units[1] or nil
  -- a piece of a code block is closed in fences of its own: they count too
  local function piece(t)
    if fence and not t:match("^%s*```") then t = fence .. "\n" .. t end
    if fence and not t:match("```%s*$") then t = t .. "\n```" end
    return t
  end
  local function flush()
    if #cur > 0 then pieces[#pieces + 1] = piece(table.concat(cur, sep)); cur = {} end
  end
  for _, u in ipairs(units) do
    if count(piece(u)) > max then
      -- a single sentence or line over the limit: cut by words
      flush()
      local words = {}
      for w in u:gmatch("%S+") do
        words[#words + 1] = w
        if #words > 1 and count(piece(table.concat(words, " "))) > max then
          table.remove(words); pieces[#pieces + 1] = piece(table.concat(words, " ")); words = { w }
        end
      end
      if #words > 0 then pieces[#pieces + 1] = piece(table.concat(words, " ")) end
    else
      cur[#cur + 1] = u
      if count(piece(table.concat(cur, sep))) > max then table.remove(cur); flush(); cur = { u } end
    end
  end
  flush()
  return pieces
end

function M.split(md, opts)
  opts = opts or {}
  local max = opts.max_tokens or 512
  local overlap = opts.overlap or 0
  local count = counter_of(opts)
  local chunks = {}
  local path = {}
  -- cur_tokens is always the count of the chunk as written: its blocks joined
  -- by the "\n\n" separators, counted whole (a tokenizer may merge across them)
  local cur, cur_tokens, first_page, last_page, cur_path = {}, 0, nil, nil, nil
  local last_kind
  local function joined(text)   -- tokens of the current chunk with text appended
    if #cur == 0 then return count(text) end
    return count(table.concat(cur, "\n\n") .. "\n\n" .. text)
  end
  local function heading_list() local t = {}; for i = 1, #path do t[i] = path[i] end; return t end
  local function flush(cut_inside)
    if #cur == 0 then return end
    local text = table.concat(cur, "\n\n")
    chunks[#chunks + 1] = { text = text, headings = cur_path or heading_list(), source = opts.source,
                            page_first = first_page, page_last = last_page, tokens = count(text) }
    cur, cur_tokens, first_page, cur_path = {}, 0, nil, nil
    if cut_inside and overlap > 0 and last_kind == "para" then
      -- carry trailing sentences of the last paragraph
      local ss = sentences(text:match("([^\n]*)$") or "")
      local carry, n = {}, 0
      for k = #ss, 1, -1 do
        local c = count(ss[k]); if n + c > overlap then break end
        table.insert(carry, 1, ss[k]); n = n + c
      end
      if #carry > 0 then cur[1] = table.concat(carry, ""); cur_tokens = count(cur[1]); first_page = last_page end
    end
  end
  -- tokens: the count of the chunk with text appended (joined(text))
  local function add(text, page, tokens)
    if #cur == 0 or first_page == nil then first_page = first_page or page; cur_path = cur_path or heading_list() end
    cur[#cur + 1] = text; cur_tokens = tokens; last_page = page
  end
  -- adds text to a chunk just flushed; the overlap carried over gives way
  -- when the two would not fit together
  local function add_fresh(text, page)
    local n = joined(text)
    if n > max and #cur > 0 then cur, cur_tokens, first_page = {}, 0, nil; n = count(text) end
    add(text, page, n)
  end
  for _, b in ipairs(blocks_of(md)) do
    if b.kind == "heading" then
      -- a heading ends the chunk when it is at least half full
      if cur_tokens >= max / 2 then flush(false) end
      for k = #path, b.level, -1 do path[k] = nil end
      for k = 1, b.level - 1 do path[k] = path[k] or "" end
      path[b.level] = b.title
      if #cur == 0 then cur_path = nil end
    end
    local t = count(b.text)
    local prev_kind = last_kind
    last_kind = b.kind
    local nt = t <= max and joined(b.text) or max + 1
    if nt <= max then add(b.text, b.page, nt)
    elseif t <= max then last_kind = prev_kind; flush(b.kind ~= "heading"); last_kind = b.kind; add_fresh(b.text, b.page)
    else
      flush(true)
      for _, piece in ipairs(split_big(b, max, count)) do
        local pt = joined(piece)
        if pt <= max then add(piece, b.page, pt) else flush(b.kind == "para"); add_fresh(piece, b.page) end
      end
    end
  end
  flush(false)
  return chunks
end

local function json_string(s)
  return '"' .. s:gsub('[%c"\\]', function(c)
    local m = { ['"'] = '\\"', ['\\'] = '\\\\', ['\n'] = '\\n', ['\r'] = '\\r', ['\t'] = '\\t' }
    return m[c] or string.format("\\u%04x", c:byte())
  end) .. '"'
end

function M.to_jsonl(chunks, opts)
  opts = opts or {}
  local fmt = opts.format or "text"
  local out = {}
  for _, c in ipairs(chunks) do
    local hp = table.concat(c.headings or {}, " > ")
    local rec
    if fmt == "chat" then
      rec = '{"messages":[{"role":"user","content":' ..
        json_string("Write the section \"" .. hp .. "\"" .. (c.source and (" of " .. c.source) or "") .. ".") ..
        '},{"role":"assistant","content":' .. json_string(c.text) .. '}]'
    elseif fmt == "instruct" then
      rec = '{"instruction":' .. json_string("Write the section \"" .. hp .. "\"" ..
        (c.source and (" of " .. c.source) or "") .. ".") .. ',"output":' .. json_string(c.text)
    else
      rec = '{"text":' .. json_string(c.text)
    end
    if opts.meta then
      rec = rec .. ',"source":' .. json_string(c.source or "") .. ',"headings":' .. json_string(hp) ..
        ',"page_first":' .. tostring(c.page_first or 1) .. ',"page_last":' .. tostring(c.page_last or 1) ..
        ',"tokens":' .. tostring(c.tokens)
    end
    out[#out + 1] = rec .. "}"
  end
  return table.concat(out, "\n") .. (#out > 0 and "\n" or "")
end

function M.write_jsonl(path, chunks, opts)
  return require("qlora").sys.write_file(path, M.to_jsonl(chunks, opts))
end

M._blocks = blocks_of
return M
