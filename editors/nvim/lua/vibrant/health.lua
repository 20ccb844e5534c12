-- :checkhealth vibrant: the server, its version, the cache folder, this machine's RAM
-- and the model it gets. Starts the server if it is not running yet.
local client = require("vibrant.client")
local config = require("vibrant.config")
local util = require("vibrant.util")

local M = {}
local val = util.val
local health = vim.health

function M.check()
  health.start("vibrant: Neovim")
  if vim.fn.has("nvim-0.10") == 1 then
    health.ok("Neovim " .. tostring(vim.version()))
  else
    health.error("Neovim 0.10 or newer is needed.")
  end

  health.start("vibrant: server")
  local cmd, why = client.resolve_cmd()
  if not cmd then
    health.error("Server not found: " .. why, {
      "pip install -e /path/to/vibrant-rpc (from its repository)",
      'or require("vibrant").setup({ cmd = { "/path/to/vibrant-rpc" } })',
    })
    return
  end
  local exe = vim.fn.exepath(cmd[1])
  health.ok(string.format("Server found: %s (%s)", table.concat(cmd, " "), exe ~= "" and exe or cmd[1]))

  local started_here = not client.running()
  local lsp, err = client.ensure_sync(30000)
  if not lsp then
    health.error("The server did not start: " .. tostring(err), { "See :LspLog for its output." })
    return
  end
  local info = lsp.server_info or {}
  health.ok(string.format("Server version: %s %s", info.name or "vibrant-rpc", info.version or "(unknown)"))
  health.info(started_here and "Started for this check (client id " .. lsp.id .. ")." or "Running (client id " .. lsp.id .. ").")
  local settings = config.init_options()
  if next(settings) then
    health.info("Settings sent: " .. vim.json.encode(settings))
  end

  health.start("vibrant: cache")
  local stats, serr = client.request_sync("vibrant/cacheStats", nil, 15000)
  if not stats then
    health.error((util.error_text(serr, "vibrant/cacheStats")))
  else
    health.ok("Cache folder: " .. stats.cacheDir)
    local limit = val(stats.maxCacheBytes)
    health.info(string.format(
      "%s used by %d model%s%s; %s of partial downloads",
      util.bytes(stats.totalBytes),
      stats.models,
      stats.models == 1 and "" or "s",
      limit and (", limit " .. util.bytes(limit)) or ", no limit",
      util.bytes(stats.partialBytes)
    ))
  end

  health.start("vibrant: model for this machine")
  local sel, selerr = client.request_sync("vibrant/selectModel", nil, 15000)
  if not sel then
    local text, kind = util.error_text(selerr, "vibrant/selectModel")
    if kind == "InsufficientRam" then
      health.warn(text)
    else
      health.error(text)
    end
    return
  end
  health.ok(string.format(
    "RAM: %s total, %s usable for a model",
    util.bytes(sel.totalRamBytes),
    util.bytes(sel.usableRamBytes)
  ))
  health.ok(string.format("Selected model: %s (%s)", sel.modelId, sel.reason))
  if val(sel.warning) then
    health.warn(sel.warning)
  end
  local fits = val(sel.fits)
  if type(fits) == "table" and #fits > 0 then
    health.info("Models that fit: " .. table.concat(fits, ", "))
  end
  local entry = client.request_sync("vibrant/modelInfo", { modelId = sel.modelId }, 15000)
  if entry and not entry.cached then
    health.warn(
      string.format("%s is not downloaded yet%s.", sel.modelId, util.size_note(entry.downloadBytes)),
      { ":VibrantDownload " .. sel.modelId }
    )
  elseif entry then
    health.ok(string.format("%s is downloaded (%s).", sel.modelId, util.bytes(val(entry.sizeBytes))))
  end
  local status = client.request_sync("vibrant/status", nil, 5000)
  if status then
    health.info(require("vibrant.commands").status_text(status))
  end
end

return M
