-- vibrant.window on cases that tests/editors/test_nvim.py writes: runs the real module in
-- Neovim and writes back what it computed. Text travels as hex both ways, so that bytes
-- that are not UTF-8 reach the module, and its output is judged by Python's strict decoder.
--
--   VIBRANT_WINDOW_CASES=in.json VIBRANT_TEST_RESULT=out.json nvim --clean -l window_cases.lua
vim.opt.runtimepath:prepend(assert(os.getenv("VIBRANT_NVIM_PLUGIN")))
local window = require("vibrant.window")

local function unhex(h)
  return (h:gsub("..", function(x)
    return string.char(tonumber(x, 16))
  end))
end
local function hex(s)
  return (s:gsub(".", function(c)
    return string.format("%02x", c:byte())
  end))
end

local input = vim.json.decode(table.concat(vim.fn.readfile(assert(os.getenv("VIBRANT_WINDOW_CASES"))), "\n"))
local docs = {}
for i, doc in ipairs(input.docs) do
  docs[i] = vim.tbl_map(unhex, doc)
end
local out = {}
local started = vim.uv.hrtime()
for i, case in ipairs(input.cases) do
  local lines = docs[case.doc + 1]
  local w = window.compute(function(a, b)
    return vim.list_slice(lines, a + 1, b)
  end, #lines, case.row, case.col, case.opts)
  out[i] = {
    prompt = hex(w.prompt),
    suffix = hex(w.suffix),
    start_row = w.start_row,
    end_row = w.end_row,
    prompt_cut = w.prompt_cut,
    suffix_cut = w.suffix_cut,
  }
end
local f = assert(io.open(assert(os.getenv("VIBRANT_TEST_RESULT")), "w"))
f:write(vim.json.encode({ results = out, ms = (vim.uv.hrtime() - started) / 1e6 }))
f:close()
