-- The plugin's options: defaults merged with what setup() was given.
local M = {}

-- Server settings (initializationOptions), snake_case; the server reads snake_case or
-- camelCase. settings.lua is generated from the server's own list.
M.setting_names = {}
for _, setting in ipairs(require("vibrant.settings")) do
  table.insert(M.setting_names, setting.snake)
end

M.defaults = {
  -- The server command: a list (or a string, one executable). nil: `vibrant-rpc` on
  -- PATH, else `<python> -m vibrant_rpc`.
  cmd = nil,
  python = nil, -- for the fallback; nil: python3, else python
  cmd_env = nil, -- extra environment for the server
  -- Sent as initializationOptions; any of M.setting_names, snake_case or camelCase.
  settings = {},
  complete = {
    max_tokens = 128,
    temperature = 0.2,
    stop = nil, -- a list of strings
    max_prefix_chars = 16000, -- text before the cursor sent as the prompt
    max_suffix_chars = 4000, -- text after the cursor sent as the suffix
  },
  -- Chunks of other files sent with each completion (vibrant.ring): chunks = 0 sends none.
  context = { chunks = 16, chunk_lines = 32 },
  -- On vibrant/updateAvailable: also offer "Update" through vim.ui.select (after the
  -- notification), once you are out of insert mode.
  update_prompt = true,
}

M.options = vim.deepcopy(M.defaults)

local function camel(name)
  return (name:gsub("_(%a)", function(c)
    return c:upper()
  end))
end

local function is_setting(key)
  for _, name in ipairs(M.setting_names) do
    if key == name or key == camel(name) then
      return true
    end
  end
  return false
end

function M.set(opts)
  opts = opts or {}
  local merged = vim.tbl_deep_extend("force", vim.deepcopy(M.defaults), opts)
  merged.settings = vim.deepcopy(opts.settings or {})
  -- Settings may also be given at the top level: setup({ model = "...", threads = 4 }).
  for key, value in pairs(opts) do
    if is_setting(key) then
      merged.settings[key] = value
      merged[key] = nil
    end
  end
  M.options = merged
  return merged
end

--- initializationOptions: the settings, camelCase.
function M.init_options()
  local out = {}
  for key, value in pairs(M.options.settings or {}) do
    out[camel(key)] = value
  end
  if next(out) == nil then
    return vim.empty_dict()
  end
  return out
end

return M
