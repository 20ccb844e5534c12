-- Chunks of other files for the model to see before the cursor's window (vibrant/complete's
-- `context`), collected as llama.vim collects its "ring" (autoload/llama.vim: s:pick_chunk,
-- s:ring_chunks): a few dozen lines of text the user yanked, and around the cursor of a
-- buffer entered, left or saved. The ring holds at most `chunks` of them, oldest first, the
-- order the server puts them in; the oldest goes when it is full.
--
-- Two kinds of chunk are dropped, as llama.vim drops them:
-- - a new chunk nearly the same as one already held (Jaccard similarity of their lines over
--   `similar`, as llama.vscode measures it) replaces it: the same code twice is room wasted;
-- - a chunk whose lines are mostly in the text around the cursor (over `in_window` of them)
--   is evicted when a request is built: the model already sees that code, and seeing it
--   twice makes it repeat it. It is evicted, not skipped for one request, so that the
--   context only changes when something is picked, and the server's cache of the prompt's
--   start (the chunks come first) holds while the user types.
-- A chunk is picked deterministically (the first `chunk_lines` lines of the text given;
-- llama.vim picks a random half of its 64 lines), so that tests can say what is sent.
--
-- Pure: no editor state; the autocmds that feed it are in vibrant.completion.
local window = require("vibrant.window")

local M = {}

M.defaults = {
  chunks = 16, -- the most chunks held and sent (the server takes 16 at most)
  -- Lines in a chunk. llama.vim's chunks are half its ring_chunk_size of 64; the server
  -- gives all chunks together about 1024 tokens, which 64-line chunks (500+ tokens each)
  -- would leave to one or two.
  chunk_lines = 32,
  min_lines = 3, -- fewer lines say too little (llama.vim's limit)
  max_chars = 16000, -- bytes of a chunk's text (the server's cap is 16,000 characters)
  similar = 0.9, -- Jaccard similarity over which a new chunk replaces an old one
  in_window = 0.5, -- share of a chunk's lines in the window over which it is evicted
}

local function options(opts)
  return vim.tbl_extend("keep", opts or {}, M.defaults)
end

-- The lines that say what a chunk is: trailing blanks stripped, blank lines left out.
local function line_set(lines)
  local set, n = {}, 0
  for _, line in ipairs(lines) do
    local l = line:gsub("%s+$", "")
    if l ~= "" and not set[l] then
      set[l] = true
      n = n + 1
    end
  end
  return set, n
end

--- Jaccard similarity of two lists of lines (as sets of their non-blank lines), 0..1.
function M.similarity(a, b)
  local sa, na = line_set(a)
  local sb, nb = line_set(b)
  if na + nb == 0 then
    return 1
  end
  local common = 0
  for l in pairs(sa) do
    if sb[l] then
      common = common + 1
    end
  end
  return common / (na + nb - common)
end

--- A new, empty ring: { chunks = { {filename, text, lines} ... } oldest first,
--- evicted = how many were dropped as near duplicates or as in the window, opts }.
function M.new(opts)
  return { chunks = {}, evicted = 0, opts = options(opts) }
end

--- Pick a chunk from `lines` (a yank, or lines around a cursor) of `filename`. Returns the
--- chunk added, or nil and why not ("small", "blank", "held").
function M.pick(ring, lines, filename)
  local o = ring.opts
  if o.chunks <= 0 then
    return nil, "off"
  end
  local chunk = {}
  local size = 0
  for i = 1, math.min(#lines, o.chunk_lines) do
    local line = window.sanitize(lines[i])
    if size + #line + 1 > o.max_chars then
      break -- whole lines only
    end
    chunk[#chunk + 1] = line
    size = size + #line + 1
  end
  if #chunk < o.min_lines then
    return nil, "small"
  end
  local _, n = line_set(chunk)
  if n == 0 then
    return nil, "blank"
  end
  local text = table.concat(chunk, "\n") .. "\n"
  for _, c in ipairs(ring.chunks) do
    if c.text == text then
      return nil, "held"
    end
  end
  for i = #ring.chunks, 1, -1 do
    if M.similarity(ring.chunks[i].lines, chunk) > o.similar then
      table.remove(ring.chunks, i)
      ring.evicted = ring.evicted + 1
    end
  end
  local name = (filename and filename ~= "") and window.sanitize(filename) or "untitled"
  local added = { filename = window.tail(name, 1000), text = text, lines = chunk }
  ring.chunks[#ring.chunks + 1] = added
  while #ring.chunks > o.chunks do
    table.remove(ring.chunks, 1)
  end
  return added
end

--- The chunks to send with a request whose window (prompt .. suffix) is `window_text`:
--- chunks mostly inside the window are evicted first. A list of { filename, text }.
function M.context(ring, window_text)
  local o = ring.opts
  local in_window = line_set(vim.split(window_text or "", "\n", { plain = true }))
  for i = #ring.chunks, 1, -1 do
    local set, n = line_set(ring.chunks[i].lines)
    local inside = 0
    for l in pairs(set) do
      if in_window[l] then
        inside = inside + 1
      end
    end
    if n > 0 and inside / n > o.in_window then
      table.remove(ring.chunks, i)
      ring.evicted = ring.evicted + 1
    end
  end
  local out = {}
  for i, c in ipairs(ring.chunks) do
    out[i] = { filename = c.filename, text = c.text }
  end
  return out
end

return M
