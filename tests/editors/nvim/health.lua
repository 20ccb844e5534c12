-- :checkhealth vibrant in a real Neovim against the real vibrant-rpc: run by
-- tests/editors/test_nvim.py once per engine setup (none, a real llama-server, a closed
-- port), with the engine in $VIBRANT_HOME/config.toml or in $VIBRANT_TEST_SETTINGS (the
-- plugin's settings, sent as initializationOptions). Writes the health buffer's lines to
-- $VIBRANT_TEST_RESULT.
local out_path = assert(os.getenv("VIBRANT_TEST_RESULT"), "VIBRANT_TEST_RESULT not set")
vim.opt.runtimepath:prepend(assert(os.getenv("VIBRANT_NVIM_PLUGIN"), "VIBRANT_NVIM_PLUGIN not set"))

local harness = dofile(vim.fs.joinpath(vim.fs.dirname(debug.getinfo(1, "S").source:sub(2)), "harness.lua"))

local R = {}

harness.finish(R, out_path, function()
  local settings = vim.json.decode(os.getenv("VIBRANT_TEST_SETTINGS") or "{}")
  local vibrant = require("vibrant")
  vibrant.setup({ settings = settings, complete = { auto = false } })
  vim.cmd("checkhealth vibrant")
  R.health = vim.api.nvim_buf_get_lines(0, 0, -1, false)
  harness.stop_server(vibrant)
end)
