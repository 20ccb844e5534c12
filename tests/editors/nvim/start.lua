-- How the plugin finds (or fails to find) the server: run by tests/editors/test_nvim.py with a
-- PATH that has no vibrant-rpc on it. Writes a JSON record to $VIBRANT_TEST_RESULT.
local out_path = assert(os.getenv("VIBRANT_TEST_RESULT"))
local python = assert(os.getenv("VIBRANT_TEST_PYTHON")) -- has vibrant_rpc installed
vim.opt.runtimepath:prepend(assert(os.getenv("VIBRANT_NVIM_PLUGIN")))
local harness = dofile(vim.fs.joinpath(vim.fs.dirname(debug.getinfo(1, "S").source:sub(2)), "harness.lua"))

local R = { notifications = {} }
vim.notify = function(msg, level)
  R.notifications[#R.notifications + 1] = { msg = msg, level = level }
end

local function run()
  -- The plugin/ file alone defines the commands and starts nothing.
  vim.cmd("runtime! plugin/vibrant.lua")
  R.plugin_commands = vim.fn.exists(":VibrantStatus") == 2
  R.plugin_clients = #vim.lsp.get_clients({ name = "vibrant" })
  vim.cmd("help :VibrantComplete")
  R.help = { file = vim.fn.expand("%:t"), line = vim.api.nvim_get_current_line() }
  vim.cmd("helpclose")
  local vibrant = require("vibrant")

  -- A command that isn't there: an error saying how to install the server.
  vibrant.setup({ cmd = { "/nonexistent/vibrant-rpc" } })
  vim.cmd("VibrantStatus")
  R.missing = R.notifications[#R.notifications]
  R.missing_client = vibrant.client() ~= nil

  -- No vibrant-rpc on PATH, a python without the module: the same, naming python.
  vibrant.setup({ python = "/bin/false" })
  R.resolved_without_module = { require("vibrant.client").resolve_cmd() }

  -- No vibrant-rpc on PATH, a python with vibrant_rpc: `python -m vibrant_rpc`.
  vibrant.setup({ python = python, settings = { contextSize = 256 } })
  R.fallback_cmd = require("vibrant.client").resolve_cmd()
  local n = #R.notifications
  vim.cmd("VibrantStatus")
  assert(vim.wait(30000, function()
    return #R.notifications > n
  end, 20), "no answer from python -m vibrant_rpc")
  R.fallback_status = R.notifications[#R.notifications]
  R.fallback_server = vibrant.client().server_info
  harness.stop_server(vibrant)
end

harness.finish(R, out_path, run)
