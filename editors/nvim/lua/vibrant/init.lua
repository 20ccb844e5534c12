-- vibrant for Neovim: local code completions from vibrant-rpc, the model backend.
--
--   require("vibrant").setup({
--     cmd = nil,            -- default: vibrant-rpc on PATH, else python3 -m vibrant_rpc
--     settings = { model = "qwen2.5-coder-3b-q4", contextSize = 4096, threads = 4,
--                  gpuLayers = 0, keepAliveS = 300, cacheSizeLimit = "20GB" },
--     -- contextSize and gpuLayers may be "auto": what fits this machine's memory
--   })
--
-- The server starts on the first command that needs it (not at setup) and is reused.
local M = {}

local config = require("vibrant.config")
local client = require("vibrant.client")
local commands = require("vibrant.commands")
local completion = require("vibrant.completion")
local ghost = require("vibrant.ghost")
local updates = require("vibrant.updates")

function M.setup(opts)
  config.set(opts)
  commands.define()
  ghost.attach()
  completion.collect(config.options.context)
  return M
end

M.config = function()
  return config.options
end

-- The public API, for mappings and status lines.
M.models = commands.models
M.download = commands.download
M.cancel = commands.cancel
M.remove = commands.remove
M.cache = commands.cache
M.status = commands.status
M.complete = completion.complete
M.update = updates.update
M.statusline = commands.statusline
-- Ghost text: suggest() shows one at the cursor, accept() inserts what is shown.
M.suggest = ghost.suggest
M.accept = ghost.accept
M.dismiss = ghost.dismiss
M.shown = ghost.shown

--- The vim.lsp client, or nil before the first use.
function M.client()
  return client.get()
end

--- Stop the server; the next command starts a new one (e.g. after changing settings).
function M.stop()
  client.stop()
end

--- Send any vibrant/* request: cb(err, result).
function M.request(method, params, cb)
  client.request(method, params, cb)
end

M.state = client.state

return M
