-- Small helpers shared by the vibrant modules: values from JSON, sizes, messages.
local M = {}

--- A JSON value that may be null (vim.NIL) or missing, as a Lua value or nil.
function M.val(v)
  if v == vim.NIL then
    return nil
  end
  return v
end

--- Bytes in the units people read: "253.1 MB".
function M.bytes(n)
  n = M.val(n)
  if type(n) ~= "number" then
    return "?"
  end
  local units = { "B", "kB", "MB", "GB", "TB" }
  local i = 1
  while n >= 1000 and i < #units do
    n = n / 1000
    i = i + 1
  end
  if i == 1 then
    return string.format("%d B", n)
  end
  return string.format("%.1f %s", n, units[i])
end

--- " (253.1 MB)" for a known size, "" for an unknown one (0 or null).
function M.size_note(n)
  n = M.val(n)
  if type(n) ~= "number" or n <= 0 then
    return ""
  end
  return " (" .. M.bytes(n) .. ")"
end

--- Seconds as "42 s", "3 min 5 s", "1 h 2 min".
function M.duration(s)
  s = M.val(s)
  if type(s) ~= "number" then
    return "?"
  end
  s = math.floor(s + 0.5)
  if s < 60 then
    return s .. " s"
  elseif s < 3600 then
    return string.format("%d min %d s", math.floor(s / 60), s % 60)
  end
  return string.format("%d h %d min", math.floor(s / 3600), math.floor(s % 3600 / 60))
end

--- An ISO 8601 time from the server, shortened to "2025-01-31 14:03".
function M.time(t)
  t = M.val(t)
  if type(t) ~= "string" then
    return "never"
  end
  local d, hm = t:match("^(%d%d%d%d%-%d%d%-%d%d)T(%d%d:%d%d)")
  if d then
    return d .. " " .. hm
  end
  return t
end

local token_seq = 0
--- A fresh $/progress token (workDoneToken) for a long request: unique in this editor.
function M.work_token(kind)
  token_seq = token_seq + 1
  return string.format("vibrant-%s-%d-%d", kind, vim.fn.getpid(), token_seq)
end

function M.notify(msg, level)
  vim.notify(msg, level or vim.log.levels.INFO, { title = "vibrant" })
end

-- The server's hints name CLI commands; in Neovim the commands are these.
local CLI_TO_EX = {
  { "`vibrant model download ([^`]*)`", ":VibrantDownload %1" },
  { "`vibrant model remove ([^`]*)`", ":VibrantRemove %1" },
  { "`vibrant model update ([^`]*)`", ":VibrantUpdate %1" },
  { "`vibrant model list[^`]*`", ":VibrantModels" },
  { "`vibrant cache[^`]*`", ":VibrantCache" },
}

function M.ex_hint(hint)
  for _, rule in ipairs(CLI_TO_EX) do
    hint = hint:gsub(rule[1], rule[2])
  end
  return hint
end

--- The text of an error the server answered with (a JSON-RPC error: code, message and
--- data {kind, ...}), with what the user can do about it.
function M.error_text(err, what)
  if type(err) ~= "table" then
    return string.format("vibrant: %s failed: %s", what, tostring(err))
  end
  local data = type(M.val(err.data)) == "table" and err.data or {}
  local kind = M.val(data.kind)
  local msg = M.val(err.message) or "unknown error"
  local lines = { string.format("vibrant: %s failed: %s", what, msg) }
  if kind == "NotCached" and M.val(data.modelId) then
    lines[#lines + 1] =
      string.format("Download it with :VibrantDownload %s%s.", data.modelId, M.size_note(data.downloadBytes))
  elseif kind == "ModelNotFound" then
    local s = M.val(data.suggestions)
    if type(s) == "table" and #s > 0 then
      lines[#lines + 1] = "Did you mean " .. table.concat(s, " or ") .. "? :VibrantModels lists them."
    else
      lines[#lines + 1] = ":VibrantModels lists the known models."
    end
  elseif kind == "MethodNotFound" or err.code == -32601 then
    lines[#lines + 1] = "This vibrant-rpc is too old for this command: upgrade it."
  elseif M.val(data.hint) then
    lines[#lines + 1] = M.ex_hint(data.hint)
  end
  return table.concat(lines, "\n"), kind
end

--- Show a server error at ERROR level (a cancellation is only an INFO).
function M.show_error(err, what)
  if type(err) == "table" and err.reported then
    return -- said already (the server could not start)
  end
  if type(err) == "table" and err.code == -32800 then
    M.notify(string.format("vibrant: %s cancelled.", what), vim.log.levels.INFO)
    return
  end
  M.notify((M.error_text(err, what)), vim.log.levels.ERROR)
end

return M
