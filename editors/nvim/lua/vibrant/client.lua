-- The one vibrant-rpc client: started on first use (never at setup), reused after.
local config = require("vibrant.config")
local util = require("vibrant.util")

local M = {}

local NAME = "vibrant"
local has_011 = vim.fn.has("nvim-0.11") == 1

-- What the server told us, for the status line and the commands.
M.state = {
  client_id = nil,
  starts = 0, -- how many servers this session started (1 unless one died)
  waiting = {}, -- callbacks for when the client is initialized
  model = nil, -- the model chosen with :VibrantModels (sent with completions)
  model_state = nil, -- the last vibrant/modelStateChanged
  downloads = {}, -- modelId -> the last vibrant/downloadProgress
  updates = {}, -- modelId -> the last vibrant/updateAvailable
  models = nil, -- the last vibrant/listModels result (for command-line completion)
}

-- Neovim 0.11 made client methods colon-calls; 0.10 has closures.
local function method(client, name, ...)
  if has_011 then
    return client[name](client, ...)
  end
  return client[name](...)
end
M.method = method

--- The server command: the option, else vibrant-rpc on PATH, else python -m vibrant_rpc.
--- Returns cmd (a list) or nil and a message saying how to install the server.
function M.resolve_cmd()
  local opts = config.options
  if opts.cmd then
    local cmd = type(opts.cmd) == "string" and { opts.cmd } or vim.deepcopy(opts.cmd)
    if vim.fn.executable(cmd[1]) ~= 1 then
      return nil, string.format("the server command %q is not executable (option `cmd`).", cmd[1])
    end
    return cmd
  end
  if vim.fn.executable("vibrant-rpc") == 1 then
    return { "vibrant-rpc" }
  end
  local python = opts.python or (vim.fn.executable("python3") == 1 and "python3" or "python")
  if vim.fn.executable(python) ~= 1 then
    return nil, "neither vibrant-rpc nor " .. python .. " is on PATH."
  end
  local probe = vim
    .system({ python, "-c", "import importlib.util, sys; sys.exit(importlib.util.find_spec('vibrant_rpc') is None)" })
    :wait(10000)
  if probe.code ~= 0 then
    return nil, string.format("vibrant-rpc is not on PATH and %s has no vibrant_rpc module.", python)
  end
  return { python, "-m", "vibrant_rpc" }
end

-- The error commands get when the server could not start; the user was told already.
function M.not_started(message)
  return { code = -32099, message = message, data = { kind = "ServerNotStarted" }, reported = true }
end

local INSTALL_HINT = "Install the server (`pip install -e /path/to/vibrant-rpc`, from its "
  .. "repository) or point setup({ cmd = {...} }) at it."

function M.get()
  local id = M.state.client_id
  if not id then
    return nil
  end
  local client = vim.lsp.get_client_by_id(id)
  if not client or method(client, "is_stopped") then
    M.state.client_id = nil
    return nil
  end
  return client
end

--- Is the server running (started and not stopped)? Does not start it.
function M.running()
  return M.get() ~= nil
end

local function flush_waiting(err, client)
  local waiting = M.state.waiting
  M.state.waiting = {}
  for _, fn in ipairs(waiting) do
    local ok, e = pcall(fn, err, client)
    if not ok then
      util.notify("vibrant: " .. tostring(e), vim.log.levels.ERROR)
    end
  end
end

-- Custom notifications from the server.
local handlers = {}

handlers["vibrant/downloadProgress"] = function(_, params)
  if type(params) ~= "table" or not params.modelId then
    return
  end
  M.state.downloads[params.modelId] = params
  local s = params.state
  if s == "done" or s == "failed" or s == "cancelled" then
    -- Keep the last one a moment for the status line, then forget it.
    vim.defer_fn(function()
      if M.state.downloads[params.modelId] == params then
        M.state.downloads[params.modelId] = nil
      end
    end, 3000)
  end
  vim.api.nvim_exec_autocmds("User", { pattern = "VibrantDownloadProgress", modeline = false, data = params })
end

handlers["vibrant/modelStateChanged"] = function(_, params)
  if type(params) ~= "table" then
    return
  end
  M.state.model_state = params
  local reason = util.val(params.reason)
  if params.state == "failed" then
    util.notify(
      string.format("vibrant: loading %s failed%s", util.val(params.modelId) or "the model", reason and (": " .. reason) or "."),
      vim.log.levels.ERROR
    )
  elseif params.state == "ready" and reason then
    -- A fallback: another model than the one asked for.
    util.notify(string.format("vibrant: %s is ready (%s)", util.val(params.modelId) or "?", reason), vim.log.levels.WARN)
  end
  vim.api.nvim_exec_autocmds("User", { pattern = "VibrantModelState", modeline = false, data = params })
end

handlers["vibrant/updateAvailable"] = function(_, params)
  if type(params) ~= "table" or not params.modelId then
    return
  end
  M.state.updates[params.modelId] = params
  require("vibrant.updates").update_available(params)
end

function M.handlers()
  return handlers
end

local function start_client(cmd)
  local opts = config.options
  local lsp_config = {
    name = NAME,
    cmd = cmd,
    cmd_env = opts.cmd_env,
    root_dir = vim.fn.getcwd(),
    init_options = config.init_options(),
    handlers = handlers,
    on_init = function(client)
      vim.schedule(function()
        flush_waiting(nil, client)
      end)
    end,
    on_exit = function(code, signal, client_id)
      vim.schedule(function()
        if M.state.client_id == client_id then
          M.state.client_id = nil
        end
        if #M.state.waiting > 0 then
          flush_waiting(M.not_started(string.format("the server exited (code %s) before it answered.", code)))
          util.notify(
            string.format("vibrant: the server (%s) exited with code %s before it started.\n%s\nSee :LspLog for its output.", table.concat(cmd, " "), code, INSTALL_HINT),
            vim.log.levels.ERROR
          )
        end
      end)
    end,
  }
  if has_011 then
    return vim.lsp.start(lsp_config, { attach = false, silent = true })
  end
  return vim.lsp.start_client(lsp_config)
end

--- Run fn(err, client) once the client is initialized, starting the server if needed.
--- `quiet`: a server that can't start is not told to the user (fn gets the error), for
--- requests the user didn't ask for.
function M.with_client(fn, quiet)
  local client = M.get()
  if client and client.initialized then
    fn(nil, client)
    return
  end
  table.insert(M.state.waiting, fn)
  if client then
    return -- started, initializing: fn runs from on_init
  end
  local cmd, why = M.resolve_cmd()
  if not cmd then
    if not quiet then
      util.notify("vibrant: cannot start the server: " .. why .. "\n" .. INSTALL_HINT, vim.log.levels.ERROR)
    end
    flush_waiting(M.not_started(why))
    return
  end
  local id = start_client(cmd)
  if not id then
    local msg = "could not start " .. table.concat(cmd, " ")
    if not quiet then
      util.notify("vibrant: " .. msg .. "\n" .. INSTALL_HINT, vim.log.levels.ERROR)
    end
    flush_waiting(M.not_started(msg))
    return
  end
  M.state.client_id = id
  M.state.starts = M.state.starts + 1
end

--- Send a request; cb(err, result). opts.on_id(request_id) gets the id (to cancel);
--- opts.quiet as in M.with_client.
function M.request(name, params, cb, opts)
  M.with_client(function(err, client)
    if err then
      cb(err, nil)
      return
    end
    if params == nil or next(params) == nil then
      params = vim.empty_dict() -- `{}`, not `[]`
    end
    local ok, request_id = method(client, "request", name, params, function(e, result)
      cb(e, result)
    end)
    if not ok then
      cb({ code = -32099, message = "the vibrant server is not running." }, nil)
    elseif opts and opts.on_id then
      opts.on_id(request_id)
    end
  end, opts and opts.quiet)
end

--- Cancel a request sent with M.request.
function M.cancel(request_id)
  local client = M.get()
  if client and request_id then
    method(client, "cancel_request", request_id)
  end
end

--- Start the server if needed and wait (at most timeout_ms) until it is initialized.
--- Returns the client, or nil and why.
function M.ensure_sync(timeout_ms)
  local done, failure = false, nil
  M.with_client(function(err)
    done, failure = true, err
  end)
  vim.wait(timeout_ms or 15000, function()
    return done
  end, 20)
  if not done then
    return nil, "the server did not answer initialize in time."
  end
  if failure then
    return nil, util.val(failure.message) or "the server did not start."
  end
  return M.get()
end

--- A request answered synchronously: result, or nil and the error.
function M.request_sync(name, params, timeout_ms)
  local client, why = M.ensure_sync(timeout_ms)
  if not client then
    return nil, { code = -32099, message = why }
  end
  if params == nil or next(params) == nil then
    params = vim.empty_dict()
  end
  local response, reason = method(client, "request_sync", name, params, timeout_ms or 15000)
  if not response then
    return nil, { code = -32099, message = "no answer: " .. tostring(reason) }
  end
  if response.err then
    return nil, response.err
  end
  return response.result
end

--- Stop the server (it is started again on the next use).
function M.stop()
  local client = M.get()
  if client then
    method(client, "stop")
  end
end

return M
