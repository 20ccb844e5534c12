-- :checkhealth vibrant: the server, its version, the cache folder, where completions go
-- (this machine, or a team's engine: its health and model, asked now), this machine's RAM
-- and the model it gets. Starts the server if it is not running yet.
local client = require("vibrant.client")
local config = require("vibrant.config")
local util = require("vibrant.util")

local M = {}
local val = util.val
local health = vim.health

--- The engine's address as shown: scheme, host:port and path, never a user or password.
local function shown_url(url)
  return (tostring(url):gsub("^(%a[%w+.-]*://)[^/@]*@", "%1"))
end

--- What the user can do about an engine's error: the server's own hint, and where the
--- setting lives for the error's kind (EngineInfo.errorKind).
local function engine_advice(e)
  local kind = val(e.errorKind)
  local where = string.format("[engines.%s] ($VIBRANT_HOME/config.toml, or setup's settings)", e.name)
  local advice = {}
  if val(e.hint) then
    table.insert(advice, e.hint)
  end
  if kind == "EngineKeyRefused" then
    table.insert(advice, "Check the key: the variable api_key_env names (set where the editor starts) or api_key_file, in " .. where .. ".")
  elseif kind == "ModelNotServed" then
    table.insert(advice, "Set model in " .. where .. " to one it serves, or leave it out.")
  elseif kind == "EngineUnreachable" then
    table.insert(
      advice,
      "Start the engine (on its machine: vibrant model serve <model> --port <port>), or fix url in " .. where .. "."
    )
  else
    table.insert(advice, "Check the engine and " .. where .. "; :LspLog has the server's log.")
  end
  return advice
end

--- Where completions go: this machine's model, or the engine the `engine` setting names,
--- asked now (vibrant/listModels checks the engine: /health, or a probe of what it serves).
--- Returns the engine (EngineInfo) or nil.
local function completions_section()
  health.start("vibrant: where completions go")
  local res, err = client.request_sync("vibrant/listModels", nil, 30000)
  if not res then
    health.error((util.error_text(err, "vibrant/listModels")))
    return nil
  end
  local e = val(res.engine)
  if type(e) ~= "table" then
    health.ok("Completions run on this machine (engine = \"local\").")
    return nil
  end
  local kind = val(e.kind)
  local model = val(e.model)
  local slots = val(e.slots)
  health.info(string.format(
    "Completions go to the engine %s at %s (%s).",
    e.name,
    shown_url(e.url),
    kind and ("kind " .. kind) or "kind not known yet"
  ))
  if e.healthy == true then
    health.ok(string.format(
      "%s is healthy, serving %s%s.",
      e.name,
      model or "a model it does not name",
      slots and string.format(" (%d slot%s)", slots, slots == 1 and "" or "s") or ""
    ))
    if val(e.error) then
      health.warn("Its last completion failed: " .. e.error)
    end
  else
    health.error(
      string.format("%s is not healthy: %s", e.name, val(e.error) or "it did not answer"),
      engine_advice(e)
    )
  end
  if val(e.fallback) == "local" then
    health.info("Fallback: the local model answers when the engine can't be reached (fallback = \"local\").")
  else
    health.info("No fallback: completions fail while the engine can't be reached (fallback = \"local\" would use the local model).")
  end
  return e
end

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

  local engine = completions_section()

  -- With an engine, the local model matters only as its fallback.
  local needed = not engine or val(engine.fallback) == "local"
  if not engine then
    health.start("vibrant: model for this machine")
  else
    health.start(needed and "vibrant: local model (the fallback)" or "vibrant: local model (not used: no fallback)")
  end
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
    local text = string.format("%s is not downloaded yet%s.", sel.modelId, util.size_note(entry.downloadBytes))
    if needed then
      health.warn(text, { ":VibrantDownload " .. sel.modelId })
    else
      health.info(text)
    end
  elseif entry then
    health.ok(string.format("%s is downloaded (%s).", sel.modelId, util.bytes(val(entry.sizeBytes))))
  end
  local status = client.request_sync("vibrant/status", nil, 5000)
  if status then
    health.info(require("vibrant.commands").status_text(status))
  end
end

return M
