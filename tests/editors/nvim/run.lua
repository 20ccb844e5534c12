-- Headless Neovim driving the vibrant plugin against the real vibrant-rpc: run by
-- tests/editors/test_nvim.py, which reads the JSON this writes to $VIBRANT_TEST_RESULT.
--
--   nvim --headless --clean -u NONE -c "luafile tests/editors/nvim/run.lua"
--
-- Every step records what the user would see (notifications, $/progress, buffers);
-- the assertions live in pytest. Any Lua error ends Neovim with a non-zero code.
local out_path = assert(os.getenv("VIBRANT_TEST_RESULT"), "VIBRANT_TEST_RESULT not set")
local plugin_dir = assert(os.getenv("VIBRANT_NVIM_PLUGIN"), "VIBRANT_NVIM_PLUGIN not set")
local model = os.getenv("VIBRANT_TEST_MODEL") or "gemma-270m"

local R = { steps = {}, notifications = {}, progress = {}, lsp_status = {}, downloads = {}, selects = {} }
local t0 = vim.uv.hrtime()
local function now_s()
  return (vim.uv.hrtime() - t0) / 1e9
end

local function write_results()
  local f = assert(io.open(out_path, "w"))
  f:write(vim.json.encode(R))
  f:close()
end

local function step(name, fn)
  local started = now_s()
  fn()
  R.steps[#R.steps + 1] = { name = name, seconds = now_s() - started }
end

local function wait(ms, cond, what)
  if not vim.wait(ms, cond, 20) then
    error("timed out waiting for " .. what, 2)
  end
end

local function vibrant_clients()
  return vim.tbl_map(function(c)
    return c.id
  end, vim.lsp.get_clients({ name = "vibrant" }))
end

-- What the user sees ------------------------------------------------------------------

vim.notify = function(msg, level)
  R.notifications[#R.notifications + 1] = { msg = msg, level = level or vim.log.levels.INFO, t = now_s() }
end

local function notified(pattern, since)
  for i = (since or 0) + 1, #R.notifications do
    if R.notifications[i].msg:find(pattern) then
      return R.notifications[i]
    end
  end
end

vim.api.nvim_create_autocmd("LspProgress", {
  callback = function(ev)
    local p = ev.data.params
    local v = p.value or {}
    R.progress[#R.progress + 1] = {
      token = p.token,
      kind = v.kind,
      title = v.title,
      message = v.message,
      percentage = v.percentage,
      t = now_s(),
    }
    -- What a status line built on vim.lsp.status() (or fidget.nvim) would show now.
    R.lsp_status[#R.lsp_status + 1] = vim.lsp.status()
  end,
})

vim.api.nvim_create_autocmd("User", {
  pattern = "VibrantDownloadProgress",
  callback = function(ev)
    local d = ev.data
    R.downloads[#R.downloads + 1] =
      { modelId = d.modelId, state = d.state, downloadedBytes = d.downloadedBytes, totalBytes = d.totalBytes }
  end,
})

-- vim.ui.select answered by the test: each call takes the next chooser.
local choosers = {}
vim.ui.select = function(items, opts, on_choice)
  local shown = {}
  for i, item in ipairs(items) do
    shown[i] = opts.format_item and opts.format_item(item) or tostring(item)
  end
  R.selects[#R.selects + 1] = { prompt = opts.prompt, items = shown }
  local chooser = table.remove(choosers, 1)
  local choice = chooser and chooser(items, shown) or nil
  vim.schedule(function()
    on_choice(choice)
  end)
end

-- The Hub stand-in's control API (faults, new commits), through the test's python.
local function hub_post(path, body)
  local hub, python = os.getenv("VIBRANT_TEST_HUB"), os.getenv("VIBRANT_TEST_PYTHON")
  local code = "import sys, urllib.request; urllib.request.urlopen(urllib.request.Request("
    .. "sys.argv[1], data=sys.argv[2].encode(), method='POST', "
    .. "headers={'Content-Type': 'application/json'})).read()"
  local r = vim.system({ python, "-c", code, hub .. path, vim.json.encode(body) }):wait(30000)
  assert(r.code == 0, "POST " .. path .. " failed: " .. tostring(r.stderr))
end

-- The steps ---------------------------------------------------------------------------

local function run()
  vim.opt.runtimepath:prepend(plugin_dir)
  local vibrant = require("vibrant")

  step("setup", function()
    vibrant.setup({
      settings = { threads = 2, contextSize = 1024, keepAliveS = 0 },
      complete = { max_tokens = 16, temperature = 0 },
    })
    R.after_setup = {
      clients = #vibrant_clients(),
      client = vibrant.client() ~= nil,
      commands = vim.fn.exists(":VibrantComplete") == 2,
    }
  end)

  step("models", function()
    choosers = {
      function(items)
        for _, m in ipairs(items) do
          if m.id == model then
            return m
          end
        end
      end,
      function(items)
        return items[#items] -- "Later": the download is the next step's
      end,
    }
    local n = #R.notifications
    vim.cmd("VibrantModels")
    R.models_pending_client = vibrant.client() ~= nil -- started by the command, right now
    wait(20000, function()
      return notified("completions now use", n) ~= nil
    end, "the model picker")
    R.models_result = vibrant.state.models
    R.chosen = vibrant.state.model
    R.first_client = vibrant.client().id
    R.server_info = vibrant.client().server_info
  end)

  step("download", function()
    local n = #R.notifications
    vim.cmd("VibrantDownload")
    wait(120000, function()
      return notified("downloaded", n) ~= nil or notified("failed", n) ~= nil
    end, "the download")
    -- The $/progress end arrives before the reply; let the last ones land.
    vim.wait(200, function()
      return false
    end)
  end)

  step("checkhealth", function()
    vim.cmd("checkhealth vibrant")
    R.health = vim.api.nvim_buf_get_lines(0, 0, -1, false)
    vim.cmd("silent! tabclose")
    vim.cmd("enew!")
  end)

  step("complete", function()
    local lines = { "# Add two numbers.", "def add(a, b):", "    return ", "", "", "print(add(1, 2))" }
    vim.api.nvim_buf_set_lines(0, 0, -1, false, lines)
    vim.api.nvim_win_set_cursor(0, { 3, #lines[3] })
    local ctx = require("vibrant.completion").context(0)
    R.complete_context = { ctx.prompt, ctx.suffix }
    R.before = vim.api.nvim_buf_get_lines(0, 0, -1, false)
    local n = #R.notifications
    local done, err = false, nil
    require("vibrant.completion").complete(function(e)
      done, err = true, e
    end)
    wait(120000, function()
      return done
    end, "the completion")
    R.complete_error = err
    R.completion = vibrant.state.last_completion
    R.after = vim.api.nvim_buf_get_lines(0, 0, -1, false)
    R.cursor_after = vim.api.nvim_win_get_cursor(0)
    R.complete_notifications = vim.list_slice(R.notifications, n + 1)

    -- A second request while one runs cancels it: the text is inserted once.
    vim.cmd("enew!")
    vim.api.nvim_buf_set_lines(0, 0, -1, false, { "The quick brown fox" })
    vim.api.nvim_win_set_cursor(0, { 1, 18 })
    local first, second = nil, nil
    require("vibrant.completion").complete(function(e, r)
      first = { err = e, result = r }
    end)
    require("vibrant.completion").complete(function(e, r)
      second = { err = e, result = r }
    end)
    wait(120000, function()
      return second ~= nil
    end, "the second completion")
    vim.wait(300, function()
      return first ~= nil
    end, 20)
    R.superseded = { first = first, second = second, lines = vim.api.nvim_buf_get_lines(0, 0, -1, false) }
  end)

  step("status_and_cache", function()
    local n = #R.notifications
    vim.cmd("VibrantStatus")
    wait(10000, function()
      return notified("^vibrant: ", n) ~= nil
    end, ":VibrantStatus")
    R.status_text = notified("^vibrant: ", n).msg
    n = #R.notifications
    vim.cmd("VibrantCache")
    wait(10000, function()
      return notified("^vibrant cache: ", n) ~= nil
    end, ":VibrantCache")
    R.cache_text = notified("^vibrant cache: ", n).msg
    R.statusline = vibrant.statusline()
    -- The picker again: the downloaded model comes first now. Dismissed.
    choosers = { function() return nil end }
    local before = #R.selects
    vim.cmd("VibrantModels")
    wait(10000, function()
      return #R.selects > before
    end, "the second model picker")
    R.picker_after_download = R.selects[#R.selects]
  end)

  step("updates", function()
    -- The server's vibrant/updateAvailable, through the client's handler, as it arrives.
    local client = vibrant.client()
    choosers = {
      function()
        return "Not now"
      end,
    }
    local n = #R.notifications
    client.handlers["vibrant/updateAvailable"](nil, {
      modelId = model,
      currentRevision = "1111111111111111111111111111111111111111",
      latestRevision = "2222222222222222222222222222222222222222",
      sizeBytes = 253113024,
    }, { client_id = client.id, method = "vibrant/updateAvailable" })
    wait(5000, function()
      return #R.selects > 0 and R.selects[#R.selects].prompt:find("update") ~= nil
    end, "the update prompt")
    R.update_notice = notified("update of", n)
    R.update_prompt = R.selects[#R.selects]
    -- A new commit on the Hub changes the model's file: :VibrantUpdate (no id) asks the
    -- server (vibrant/checkUpdates), offers the update, and applies the one chosen.
    hub_post("/_stub/publish", { repo_id = "test/gemma", files = { ["gemma.gguf"] = os.getenv("VIBRANT_TEST_GEMMA_V2") } })
    choosers = {
      function(items)
        return items[1]
      end,
    }
    n = #R.notifications
    local ns, np = #R.selects, #R.progress
    vim.cmd("VibrantUpdate")
    wait(120000, function()
      return notified("updated", n) ~= nil or notified("failed", n) ~= nil or notified("up to date", n) ~= nil
    end, ":VibrantUpdate")
    vim.wait(200, function()
      return false
    end)
    R.update_run = {
      picker = R.selects[ns + 1],
      notifications = vim.list_slice(R.notifications, n + 1),
      progress = vim.list_slice(R.progress, np + 1),
    }
  end)

  step("errors", function()
    local n = #R.notifications
    vim.cmd("VibrantDownload no-such-model")
    wait(10000, function()
      return notified("failed", n) ~= nil
    end, "the ModelNotFound error")
    R.not_found = notified("failed", n)
    n = #R.notifications
    vim.cmd("VibrantRemove " .. model)
    wait(20000, function()
      return notified("removed", n) ~= nil or notified("failed", n) ~= nil
    end, ":VibrantRemove")
    R.removed = vim.list_slice(R.notifications, n + 1)
    n = #R.notifications
    vim.cmd("VibrantComplete")
    wait(20000, function()
      return notified("failed", n) ~= nil
    end, "the NotCached error")
    R.not_cached = notified("failed", n)
  end)

  step("cancel_download", function()
    -- A slow Hub (throttled through the stand-in's control API), then :VibrantCancel.
    local function faults(body)
      hub_post("/_stub/faults", body)
    end
    faults({ throttle_bps = 4000000 })
    local n = #R.notifications
    local np = #R.progress
    vim.cmd("VibrantDownload " .. model)
    wait(30000, function()
      for i = np + 1, #R.progress do
        local p = R.progress[i]
        if p.kind == "report" and (p.percentage or 0) > 0 then
          return true
        end
      end
      return false
    end, "the throttled download to start")
    vim.cmd("VibrantCancel " .. model)
    wait(20000, function()
      return notified("stopped downloading", n) ~= nil
    end, ":VibrantCancel")
    wait(10000, function()
      for i = np + 1, #R.progress do
        if R.progress[i].kind == "end" then
          return true
        end
      end
      return false
    end, "the cancelled download's progress to end")
    faults({ throttle_bps = vim.NIL })
    R.cancelled = {
      notice = notified("stopped downloading", n),
      progress = vim.list_slice(R.progress, np + 1),
      after = vim.list_slice(R.notifications, n + 1),
    }
    n = #R.notifications
    vim.cmd("VibrantCache")
    wait(10000, function()
      return notified("^vibrant cache: ", n) ~= nil
    end, ":VibrantCache")
    R.cache_with_partial = notified("^vibrant cache: ", n).msg
  end)

  R.final = {
    clients = vibrant_clients(),
    client_id = vibrant.client() and vibrant.client().id,
    starts = vibrant.state.starts,
  }

  step("stop", function()
    local client = vibrant.client()
    vibrant.stop()
    wait(10000, function()
      return client:is_stopped()
    end, "the server to stop")
    R.stopped = true
  end)
end

local ok, err = xpcall(run, debug.traceback)
R.ok = ok
R.error = not ok and tostring(err) or nil
R.seconds = now_s()
pcall(write_results)
if ok then
  vim.cmd("qall!")
else
  io.stderr:write(tostring(err) .. "\n")
  vim.cmd("cquit 3")
end
