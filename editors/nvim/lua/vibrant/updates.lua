-- Model updates: :VibrantUpdate, and the server's vibrant/updateAvailable notice. Updates
-- report $/progress like downloads; a prompt never interrupts typing.
local client = require("vibrant.client")
local config = require("vibrant.config")
local util = require("vibrant.util")

local M = {}
local val = util.val

local function update(id)
  local token = util.work_token("update")
  client.request("vibrant/updateModel", { modelId = id, workDoneToken = token }, function(err, result)
    if err then
      util.show_error(err, "updating " .. id)
      return
    end
    client.state.updates[id] = nil
    local rev = val(result and result.revision)
    util.notify(string.format("vibrant: %s updated%s; the new file is used from its next load.", id, rev and (" to " .. rev:sub(1, 12)) or ""))
  end)
  return token
end

-- "1111111 → 2222222, 253.1 MB" (what is known of it).
local function update_details(u)
  local parts = {}
  local from, to = val(u.currentRevision), val(u.latestRevision)
  if type(from) == "string" and type(to) == "string" then
    parts[#parts + 1] = from:sub(1, 7) .. " → " .. to:sub(1, 7)
  end
  if (val(u.sizeBytes) or 0) > 0 then
    parts[#parts + 1] = util.bytes(u.sizeBytes)
  end
  return table.concat(parts, ", ")
end

local function update_line(u)
  local details = update_details(u)
  return details ~= "" and (u.modelId .. " (" .. details .. ")") or u.modelId
end

--- :VibrantUpdate [id]: update one model; without id, check the Hub and offer the updates.
function M.update(id)
  if id and id ~= "" then
    util.notify(string.format("vibrant: updating %s…", id))
    update(id)
    return
  end
  client.request("vibrant/checkUpdates", nil, function(err, result)
    if err then
      util.show_error(err, "checking for updates")
      return
    end
    local updates = result.updates or {}
    if #updates == 0 then
      util.notify("vibrant: every downloaded model is up to date.")
      return
    end
    local items = vim.deepcopy(updates)
    if #updates > 1 then
      items[#items + 1] = { all = true }
    end
    vim.ui.select(items, {
      prompt = "vibrant: updates available",
      kind = "vibrant.update",
      format_item = function(u)
        return u.all and "Update all" or update_line(u)
      end,
    }, function(choice)
      if not choice then
        return
      end
      for _, u in ipairs(choice.all and updates or { choice }) do
        update(u.modelId)
      end
    end)
  end)
end

-- Once the user is out of insert and command-line mode: a prompt never interrupts typing.
local function when_idle(fn)
  local mode = vim.api.nvim_get_mode().mode
  if mode:match("^[iRc]") then
    vim.api.nvim_create_autocmd({ "InsertLeave", "CmdlineLeave" }, {
      once = true,
      callback = function()
        vim.schedule(function()
          when_idle(fn)
        end)
      end,
    })
    return
  end
  fn()
end

--- vibrant/updateAvailable: a notice, and an "Update" action through vim.ui.select.
function M.update_available(u)
  local details = update_details(u)
  util.notify(string.format(
    "vibrant: an update of %s is available%s. Run :VibrantUpdate %s to get it.",
    u.modelId,
    details ~= "" and (" (" .. details .. ")") or "",
    u.modelId
  ))
  if not config.options.update_prompt then
    return
  end
  vim.schedule(function()
    when_idle(function()
      vim.ui.select({ "Update", "Not now" }, {
        prompt = string.format("vibrant: update %s?", u.modelId),
        kind = "vibrant.confirm",
      }, function(choice)
        if choice == "Update" then
          M.update(u.modelId)
        end
      end)
    end)
  end)
end

return M
