-- vibrant.ring, and the language ids and file names completions send, on cases that
-- tests/editors/test_nvim.py writes (tests/editors/ring_cases.py): runs the real modules in
-- Neovim and writes back what they answered.
--
--   VIBRANT_RING_CASES=in.json VIBRANT_TEST_RESULT=out.json nvim --clean -l ring_cases.lua
vim.opt.runtimepath:prepend(assert(os.getenv("VIBRANT_NVIM_PLUGIN")))
local ring = require("vibrant.ring")
local completion = require("vibrant.completion")

local input = vim.json.decode(table.concat(vim.fn.readfile(assert(os.getenv("VIBRANT_RING_CASES"))), "\n"))
local scenarios = {}
for i, s in ipairs(input.scenarios) do
  local r = ring.new(next(s.opts) and s.opts or nil)
  local answers = {}
  for j, op in ipairs(s.ops) do
    if op[1] == "pick" then
      local added, why = ring.pick(r, op[2], op[3])
      answers[j] = added and { added = added.filename } or { why = why }
    elseif op[1] == "context" then
      answers[j] = vim.tbl_map(function(c)
        return { c.filename, c.text }
      end, ring.context(r, op[2]))
    else
      answers[j] = ring.similarity(op[2], op[3])
    end
  end
  scenarios[i] = { answers = answers, evicted = r.evicted }
end

local languages = {}
for i, ft in ipairs(input.filetypes) do
  languages[i] = completion.language_id(ft) or vim.NIL
end
local names = {}
for i, c in ipairs(input.names) do
  names[i] = completion.filename(c[1], c[2]) or vim.NIL
end

local f = assert(io.open(assert(os.getenv("VIBRANT_TEST_RESULT")), "w"))
f:write(vim.json.encode({ scenarios = scenarios, languages = languages, names = names }))
f:close()
