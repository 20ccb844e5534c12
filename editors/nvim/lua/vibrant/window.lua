-- The text around the cursor that a completion request sends: whole lines, in a window
-- whose start moves in steps of several lines, so that successive requests share their
-- start and the server reuses its cache of it while you type. Byte caps are a safety net
-- that cuts at line boundaries, and inside an over-long line only between characters:
-- a broken UTF-8 sequence would make the request unreadable to the server.
--
-- Pure: the buffer comes in as a get_lines function, so tests can drive it directly.
local M = {}

M.defaults = {
  prefix_lines = 256, -- lines before the cursor line (as llama.vim's n_prefix)
  suffix_lines = 64, -- lines after it (llama.vim's n_suffix)
  window_step = 32, -- the window's start moves in steps of this many lines
  max_prefix_chars = 16000, -- bytes; the start drops whole lines (steps first) to fit
  max_suffix_chars = 4000, -- bytes; the end drops whole lines to fit
}

local REPLACEMENT = "\239\191\189" -- U+FFFD

-- The length of the valid UTF-8 sequence that starts at byte i, or nil. As strict as
-- Python's decoder (the server's): no overlongs, surrogates or code points past U+10FFFF.
local function sequence_length(s, i)
  local c = s:byte(i)
  if c < 0x80 then
    return 1
  end
  local n
  if c >= 0xC2 and c <= 0xDF then
    n = 2
  elseif c >= 0xE0 and c <= 0xEF then
    n = 3
  elseif c >= 0xF0 and c <= 0xF4 then
    n = 4
  else
    return nil
  end
  for k = 1, n - 1 do
    local b = s:byte(i + k)
    if not b or b < 0x80 or b > 0xBF then
      return nil
    end
  end
  local c2 = s:byte(i + 1)
  if (c == 0xE0 and c2 < 0xA0) or (c == 0xED and c2 > 0x9F) or (c == 0xF0 and c2 < 0x90) or (c == 0xF4 and c2 > 0x8F) then
    return nil
  end
  return n
end

--- s with every byte that is not part of valid UTF-8 replaced by U+FFFD. A buffer can hold
--- such bytes (a file in another encoding, a binary); sent as they are, the request would
--- never be answered.
function M.sanitize(s)
  local i, from, out = 1, 1, nil
  while true do
    local j = s:find("[\128-\255]", i)
    if not j then
      break
    end
    local len = sequence_length(s, j)
    if len then
      i = j + len
    else
      out = out or {}
      out[#out + 1] = s:sub(from, j - 1)
      out[#out + 1] = REPLACEMENT
      i = j + 1
      from = i
    end
  end
  if not out then
    return s
  end
  out[#out + 1] = s:sub(from)
  return table.concat(out)
end

function M.is_valid(s)
  return M.sanitize(s) == s
end

--- The last at most `cap` bytes of s, starting on a character.
function M.tail(s, cap)
  if cap <= 0 then
    return ""
  elseif #s <= cap then
    return s
  end
  local k = #s - cap + 1
  if vim.str_utf_start(s, k) ~= 0 then
    k = k + vim.str_utf_end(s, k) + 1 -- inside a character: begin at the next one
  end
  return s:sub(k)
end

--- The first at most `cap` bytes of s, ending on a character.
function M.head(s, cap)
  if cap <= 0 then
    return ""
  elseif #s <= cap then
    return s
  end
  -- Byte cap + 1 begins a character or is inside the one to leave out whole.
  return s:sub(1, cap + vim.str_utf_start(s, cap + 1))
end

--- The first line of the window for a cursor on `row` (0-based): `prefix_lines` lines
--- back, rounded down to a multiple of `window_step`, so it stays put for `window_step`
--- lines of moving down or typing new lines.
function M.start_row(row, opts)
  local step = math.max(1, opts.window_step)
  local start = math.max(0, row - opts.prefix_lines)
  return start - start % step
end

--- The request's text for a cursor at (row, col): row 0-based, col a byte index into that
--- line (the text before it ends the prompt, the rest begins the suffix).
--- get_lines(first, last): lines first..last-1 (0-based, end-exclusive), as
--- nvim_buf_get_lines. Returns { prompt, suffix, start_row, end_row (exclusive),
--- prompt_cut, suffix_cut (cut inside a line) }.
function M.compute(get_lines, line_count, row, col, opts)
  opts = vim.tbl_extend("keep", opts or {}, M.defaults)
  local step = math.max(1, opts.window_step)
  local pcap = math.max(0, opts.max_prefix_chars)
  local scap = math.max(0, opts.max_suffix_chars)

  local start = M.start_row(row, opts)
  local before = get_lines(start, row + 1)
  local line = before[#before] or ""
  before[#before] = nil
  local head = line:sub(1, col)
  local tail = line:sub(col + 1)

  -- The prompt: lines start..row-1, each with its newline, then the head of the line.
  local size = #head
  for _, l in ipairs(before) do
    size = size + #l + 1
  end
  local first = 1 -- index in `before` of the window's first line
  local function drop(n)
    for i = first, first + n - 1 do
      size = size - #before[i] - 1
    end
    first = first + n
  end
  -- Whole steps first, so that the start still moves only every few lines.
  while size > pcap and first + step - 1 <= #before do
    drop(step)
  end
  while size > pcap and first <= #before do
    drop(1)
  end
  local prompt_cut = false
  if size > pcap then
    head = M.tail(head, pcap)
    prompt_cut = true
  end
  local kept = vim.list_slice(before, first, #before)
  kept[#kept + 1] = head
  local prompt = table.concat(kept, "\n")

  local last = math.min(line_count, row + 1 + opts.suffix_lines)
  local after = row + 1 < last and get_lines(row + 1, last) or {}
  size = #tail
  for _, l in ipairs(after) do
    size = size + 1 + #l
  end
  while size > scap and #after > 0 do
    size = size - 1 - #after[#after]
    after[#after] = nil
  end
  local suffix_cut = false
  if size > scap then
    tail = M.head(tail, scap)
    suffix_cut = true
  end
  table.insert(after, 1, tail)
  local suffix = table.concat(after, "\n")

  return {
    prompt = M.sanitize(prompt),
    suffix = M.sanitize(suffix),
    start_row = start + first - 1,
    end_row = row + #after,
    prompt_cut = prompt_cut,
    suffix_cut = suffix_cut,
  }
end

--- The window of a buffer at (row, col), reading only the lines it needs.
function M.of_buffer(buf, row, col, opts)
  return M.compute(function(a, b)
    return vim.api.nvim_buf_get_lines(buf, a, b, false)
  end, vim.api.nvim_buf_line_count(buf), row, col, opts)
end

return M
