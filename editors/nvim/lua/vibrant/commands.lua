-- The :Vibrant* commands. Every one talks to the server asynchronously (the editor never
-- waits on it) and reports through vim.notify; long work reports $/progress, which
-- vim.lsp.status(), the LspProgress autocmd and fidget.nvim show. :VibrantComplete is
-- vibrant.completion's, :VibrantUpdate vibrant.updates'; they are defined here with the rest.
local client = require("vibrant.client")
local completion = require("vibrant.completion")
local config = require("vibrant.config")
local updates = require("vibrant.updates")
local util = require("vibrant.util")

local M = {}
local val = util.val
local levels = vim.log.levels
local state = client.state

-- Models --------------------------------------------------------------------------------

local function model_line(m, pick)
  local parts = { (m.id == pick and "★ " or "  ") .. m.id }
  local name = val(m.name)
  if name and name ~= m.id then
    parts[#parts + 1] = name
  end
  local size = val(m.sizeBytes) or val(m.downloadBytes)
  if size and size > 0 then
    parts[#parts + 1] = util.bytes(size)
  end
  if m.cached then
    parts[#parts + 1] = "downloaded"
  elseif val(m.partial) then
    local p = m.partial
    local total = val(p.totalBytes)
    parts[#parts + 1] = total and string.format("partial %d%%", math.floor(p.downloadedBytes * 100 / total))
      or "partial"
  end
  if m.loaded then
    parts[#parts + 1] = "loaded"
  end
  if m.id == pick then
    parts[#parts + 1] = "recommended for this machine"
  end
  if m.deprecated then
    parts[#parts + 1] = "deprecated" .. (val(m.replacedBy) and (", use " .. m.replacedBy) or "")
  end
  return table.concat(parts, " · ")
end

--- Models in picker order: downloaded first, then this machine's pick, then the registry's.
local function picker_order(result)
  local pick = val(result.recommended)
  local items = {}
  for i, m in ipairs(result.models or {}) do
    items[#items + 1] = { model = m, index = i }
  end
  table.sort(items, function(a, b)
    local ka = { a.model.cached and 0 or 1, a.model.id == pick and 0 or 1, a.index }
    local kb = { b.model.cached and 0 or 1, b.model.id == pick and 0 or 1, b.index }
    for i = 1, 3 do
      if ka[i] ~= kb[i] then
        return ka[i] < kb[i]
      end
    end
    return false
  end)
  return vim.tbl_map(function(it)
    return it.model
  end, items)
end
M.picker_order = picker_order

local function list_models(scope, cb)
  client.request("vibrant/listModels", { scope = scope }, function(err, result)
    if err then
      util.show_error(err, "listing the models")
      return
    end
    state.models = result
    cb(result)
  end)
end

--- :VibrantModels: pick a model; it is used for completions from then on.
function M.models()
  list_models("all", function(result)
    local pick = val(result.recommended)
    local models = picker_order(result)
    if #models == 0 then
      util.notify("vibrant: the registry has no models.", levels.WARN)
      return
    end
    vim.ui.select(models, {
      prompt = "vibrant: choose a model",
      kind = "vibrant.model",
      format_item = function(m)
        return model_line(m, pick)
      end,
    }, function(m)
      if not m then
        return
      end
      M.set_model(m)
    end)
  end)
end

function M.set_model(m)
  state.model = m.id
  if m.cached then
    util.notify(string.format("vibrant: completions now use %s.", m.id))
    return
  end
  local size = util.size_note(m.downloadBytes)
  util.notify(string.format("vibrant: completions now use %s, which is not downloaded yet%s.", m.id, size))
  vim.ui.select({ "Download now" .. size, "Later" }, {
    prompt = string.format("vibrant: download %s?", m.id),
    kind = "vibrant.confirm",
  }, function(choice)
    if choice and choice:match("^Download") then
      M.download(m.id)
    end
  end)
end

-- Downloads -------------------------------------------------------------------------------

--- :VibrantDownload [id]: id defaults to the chosen model, else the configured one, else
--- "auto" (the server's choice for this machine).
function M.download(id)
  id = (id and id ~= "") and id or state.model or config.options.settings.model or "auto"
  local token = util.work_token("download")
  util.notify(id == "auto" and "vibrant: downloading the model for this machine…" or string.format("vibrant: downloading %s…", id))
  client.request("vibrant/downloadModel", { modelId = id, workDoneToken = token }, function(err, result)
    if err then
      util.show_error(err, "downloading " .. id)
      return
    end
    local lines = { string.format("vibrant: %s downloaded (%s).", result.modelId, util.bytes(result.sizeBytes)) }
    local pruned = val(result.pruned)
    if type(pruned) == "table" and #pruned > 0 then
      lines[#lines + 1] = "Removed to stay under the cache limit: " .. table.concat(pruned, ", ")
    end
    util.notify(table.concat(lines, "\n"))
  end)
  return token
end

--- :VibrantCancel [id]: stop a running download (its partial is kept, to resume later).
function M.cancel(id)
  if not id or id == "" then
    id = next(state.downloads)
  end
  if not id then
    util.notify("vibrant: no download is running.", levels.WARN)
    return
  end
  client.request("vibrant/cancelDownload", { modelId = id }, function(err, result)
    -- (Neovim never hands a -32800 reply to a callback, so the download's own request
    -- says nothing: the message comes from here.)
    if err then
      util.show_error(err, "cancelling " .. id)
    elseif not result.cancelled then
      util.notify(string.format("vibrant: no download of %s is running.", id), levels.WARN)
    else
      util.notify(string.format("vibrant: stopped downloading %s; the partial download is kept (:VibrantDownload %s resumes it).", id, id))
    end
  end)
end

-- Cache -------------------------------------------------------------------------------

--- :VibrantRemove [id]: delete a downloaded model (a picker of downloaded ones without id).
function M.remove(id)
  local function remove(model_id)
    client.request("vibrant/removeModel", { modelId = model_id }, function(err, result)
      if err then
        util.show_error(err, "removing " .. model_id)
        return
      end
      state.models = nil
      util.notify(string.format("vibrant: removed %s (%s freed).", model_id, util.bytes(result.freedBytes)))
    end)
  end
  if id and id ~= "" then
    remove(id)
    return
  end
  list_models("cached", function(result)
    local models = result.models or {}
    if #models == 0 then
      util.notify("vibrant: no model is downloaded.")
      return
    end
    vim.ui.select(models, {
      prompt = "vibrant: remove which model?",
      kind = "vibrant.model",
      format_item = function(m)
        return string.format("%s · %s · last used %s", m.id, util.bytes(val(m.sizeBytes)), util.time(m.lastUsed))
      end,
    }, function(m)
      if m then
        remove(m.id)
      end
    end)
  end)
end

--- :VibrantCache: where the cache is, how full, and what is in it.
function M.cache()
  client.request("vibrant/cacheStats", nil, function(err, stats)
    if err then
      util.show_error(err, "reading the cache")
      return
    end
    list_models("all", function(result)
      local limit = val(stats.maxCacheBytes)
      local lines = {
        "vibrant cache: " .. stats.cacheDir,
        string.format(
          "%s used%s · %d model%s · %s of partial downloads",
          util.bytes(stats.totalBytes),
          limit and (" of " .. util.bytes(limit)) or " (no limit)",
          stats.models,
          stats.models == 1 and "" or "s",
          util.bytes(stats.partialBytes)
        ),
      }
      for _, m in ipairs(result.models or {}) do
        if m.cached then
          lines[#lines + 1] = string.format(
            "  %s  %s  last used %s, %d use%s%s",
            m.id,
            util.bytes(val(m.sizeBytes)),
            util.time(m.lastUsed),
            m.useCount or 0,
            m.useCount == 1 and "" or "s",
            m.loaded and " (loaded)" or ""
          )
        elseif val(m.partial) then
          local p = m.partial
          lines[#lines + 1] = string.format(
            "  %s  partial: %s of %s%s",
            m.id,
            util.bytes(p.downloadedBytes),
            util.bytes(val(p.totalBytes)),
            p.active and " (downloading)" or " (:VibrantDownload " .. m.id .. " resumes it)"
          )
        end
      end
      util.notify(table.concat(lines, "\n"))
    end)
  end)
end

-- Status ------------------------------------------------------------------------------

local function download_text(d)
  local total = val(d.totalBytes)
  local pct = total and total > 0 and string.format(" %d%%", math.floor(d.downloadedBytes * 100 / total)) or ""
  local text = string.format("%s %s%s", d.state, d.modelId, pct)
  if d.state == "downloading" and (val(d.bytesPerSecond) or 0) > 0 then
    text = text .. string.format(", %s/s", util.bytes(d.bytesPerSecond))
    if val(d.etaSeconds) then
      text = text .. ", " .. util.duration(d.etaSeconds) .. " left"
    end
  end
  return text
end

function M.status_text(s)
  local lines = {}
  local model = val(s.modelId)
  if s.state == "ready" then
    lines[1] = string.format(
      "vibrant: %s is ready%s (loaded %s, last used %s).",
      model,
      s.busy and ", completing" or "",
      util.time(s.loadedAt),
      util.time(s.lastUsed)
    )
  elseif s.state == "loading" then
    lines[1] = string.format("vibrant: loading %s…", model or "a model")
  elseif s.state == "failed" then
    lines[1] = string.format("vibrant: loading %s failed: %s", model or "the model", val(s.error) or "?")
  else
    lines[1] = "vibrant: no model loaded (the first completion loads one)."
  end
  if state.model then
    lines[#lines + 1] = "Completions use " .. state.model .. " (chosen with :VibrantModels)."
  end
  for _, d in ipairs(s.downloads or {}) do
    lines[#lines + 1] = "Download: " .. download_text(d)
  end
  return table.concat(lines, "\n")
end

--- :VibrantStatus
function M.status()
  client.request("vibrant/status", nil, function(err, s)
    if err then
      util.show_error(err, "asking the status")
      return
    end
    util.notify(M.status_text(s))
  end)
end

--- For a status line: "" before the server started, else the model's state or a download.
function M.statusline()
  if not client.running() then
    return ""
  end
  for _, d in pairs(state.downloads) do
    if d.state ~= "done" then
      return "vibrant: " .. download_text(d)
    end
  end
  local ms = state.model_state
  if not ms then
    return "vibrant: not loaded"
  end
  if ms.state == "ready" then
    return "vibrant: " .. (val(ms.modelId) or "") .. " ready"
  end
  return "vibrant: " .. ms.state
end

-- Definitions -------------------------------------------------------------------------

local function model_ids(filter)
  return function(arglead)
    local result = state.models
    if not result then
      result = client.request_sync("vibrant/listModels", { scope = "all" }, 5000)
      state.models = result
    end
    local out = {}
    for _, m in ipairs(result and result.models or {}) do
      if (not filter or filter(m)) and vim.startswith(m.id, arglead) then
        out[#out + 1] = m.id
      end
    end
    return out
  end
end

function M.define()
  local cmd = vim.api.nvim_create_user_command
  cmd("VibrantModels", function()
    M.models()
  end, { desc = "vibrant: choose the model for completions" })
  cmd("VibrantDownload", function(a)
    M.download(a.args)
  end, {
    nargs = "?",
    complete = model_ids(function(m)
      return not m.cached
    end),
    desc = "vibrant: download a model (default: the chosen one, else this machine's pick)",
  })
  cmd("VibrantCancel", function(a)
    M.cancel(a.args)
  end, { nargs = "?", complete = model_ids(), desc = "vibrant: stop a download (kept to resume)" })
  cmd("VibrantRemove", function(a)
    M.remove(a.args)
  end, {
    nargs = "?",
    complete = model_ids(function(m)
      return m.cached
    end),
    desc = "vibrant: delete a downloaded model",
  })
  cmd("VibrantCache", function()
    M.cache()
  end, { desc = "vibrant: cache folder, usage and downloaded models" })
  cmd("VibrantStatus", function()
    M.status()
  end, { desc = "vibrant: the model's state and running downloads" })
  cmd("VibrantComplete", function()
    completion.complete()
  end, { desc = "vibrant: insert a completion at the cursor" })
  cmd("VibrantUpdate", function(a)
    updates.update(a.args)
  end, {
    nargs = "?",
    complete = model_ids(function(m)
      return m.cached
    end),
    desc = "vibrant: update a model, or check for updates",
  })
end

return M
