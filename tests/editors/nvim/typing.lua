-- Headless Neovim typing as a person would (keys through nvim_input, handled by Neovim's
-- own input loop, so TextChangedI and friends fire as they do for a user) against the real
-- vibrant-rpc behind tests/support/stdio_tee.py, which keeps the bytes the server received.
-- Run by tests/editors/test_nvim.py; the assertions live there.
local out_path = assert(os.getenv("VIBRANT_TEST_RESULT"))
vim.opt.runtimepath:prepend(assert(os.getenv("VIBRANT_NVIM_PLUGIN")))
local model = assert(os.getenv("VIBRANT_TEST_MODEL"))
local server_cmd = vim.json.decode(assert(os.getenv("VIBRANT_TEST_SERVER_CMD")))

local R = { notifications = {}, steps = {} }
vim.notify = function(msg, level)
  R.notifications[#R.notifications + 1] = { msg = msg, level = level or vim.log.levels.INFO }
end

local function hex(s)
  return (s:gsub(".", function(c)
    return string.format("%02x", c:byte())
  end))
end

local co
local function sleep(ms)
  vim.defer_fn(function()
    local ok, err = coroutine.resume(co)
    if not ok then
      error(err)
    end
  end, ms)
  coroutine.yield()
end

local function wait_for(ms, cond, what)
  local deadline = vim.uv.now() + ms
  while not cond() do
    if vim.uv.now() > deadline then
      error("timed out waiting for " .. what, 2)
    end
    sleep(20)
  end
end

-- Keys typed as text: "<" and newlines in key notation.
local function type_text(s)
  vim.api.nvim_input((s:gsub("<", "<lt>"):gsub("\n", "<CR>")))
end

local vibrant, ghost

-- Ask at the cursor (insert mode) and wait for the answer; the record of what was sent.
local function suggest()
  local rec
  vibrant.suggest(function(_, r)
    rec = r
  end)
  wait_for(120000, function()
    return rec ~= nil
  end, "the completion")
  return {
    prompt = hex(rec.prompt),
    suffix = hex(rec.suffix),
    start_row = rec.start_row,
    err = rec.err,
    text = rec.text,
    total_ms = rec.timings and rec.timings.totalMs,
    prompt_tokens = rec.usage and rec.usage.promptTokens,
    shown = rec.shown,
  }
end

local function set_buffer(lines, row, col)
  vim.cmd("stopinsert")
  sleep(20)
  vim.cmd("enew!")
  vim.api.nvim_buf_set_lines(0, 0, -1, false, lines)
  vim.api.nvim_win_set_cursor(0, { row + 1, col })
  vim.api.nvim_input(col >= #lines[row + 1] and "A" or "i")
  wait_for(2000, function()
    return vim.api.nvim_get_mode().mode == "i"
  end, "insert mode")
  vim.api.nvim_win_set_cursor(0, { row + 1, col })
end

local function ghost_marks()
  local marks = vim.api.nvim_buf_get_extmarks(0, vim.api.nvim_get_namespaces()["vibrant.ghost"], 0, -1, { details = true })
  local out = {}
  for _, m in ipairs(marks) do
    local d = m[4]
    if d.virt_text then
      local lines = { d.virt_text[1][1] }
      for _, vl in ipairs(d.virt_lines or {}) do
        lines[#lines + 1] = vl[1][1]
      end
      out[#out + 1] = { row = m[2], col = m[3], text = table.concat(lines, "\n") }
    end
  end
  return out
end

local function errors_since(n)
  local out = {}
  for i = n + 1, #R.notifications do
    if R.notifications[i].level >= vim.log.levels.WARN then
      out[#out + 1] = R.notifications[i].msg
    end
  end
  return out
end

local function run()
  vim.o.autoindent = false -- a typed newline is only a newline
  vim.cmd("filetype on")
  vibrant = require("vibrant")
  ghost = require("vibrant.ghost")
  vibrant.setup({
    cmd = server_cmd,
    settings = { threads = 2, contextSize = 1024, keepAliveS = 0 },
    complete = { max_tokens = 8, temperature = 0, prefix_lines = 40, suffix_lines = 8, window_step = 16 },
  })

  -- Suggestions as you type are on by default; with no model downloaded the server answers
  -- NotCached (it downloads nothing), and the ghost text says nothing and stops asking.
  R.defaults = { auto = vibrant.config().complete.auto, ghost_auto = ghost.defaults.auto }
  set_buffer({ "def add(a, b):", "    return " }, 1, 11)
  local n = #R.notifications
  type_text("a")
  wait_for(60000, function()
    return #ghost.history > 0
  end, "the automatic request without a model")
  local first = ghost.history[1]
  type_text(" +")
  sleep(1000) -- several debounce periods
  type_text(" b")
  sleep(1000)
  R.no_model = {
    record = { prompt = hex(first.prompt), suffix = hex(first.suffix), auto = first.auto, err = first.err },
    requests = #ghost.history,
    paused = ghost.paused,
    errors = errors_since(n),
    marks = ghost_marks(),
  }

  vim.cmd("stopinsert")
  vim.cmd("VibrantDownload " .. model)
  wait_for(120000, function()
    for _, m in ipairs(R.notifications) do
      if m.msg:find("downloaded") or m.msg:find("failed") then
        return true
      end
    end
  end, "the download")
  R.no_model.paused_after_download = ghost.paused or vim.NIL
  -- The steps below ask by themselves (suggest()); the last one types with the default.
  vibrant.config().complete.auto = false

  -- Typing é, 中 and 😀 deep in a file: the window's start stays on its line.
  local lines = {}
  for i = 0, 119 do
    lines[#lines + 1] = string.format("# %d é 中文 %s x = %d", i, ("😀"):rep(i % 4), i)
  end
  set_buffer(lines, 100, #lines[101])
  R.lines = lines
  R.typing = { suggest() }
  for _, ch in ipairs({ "é", "中", "😀", " " }) do
    type_text(ch)
    wait_for(2000, function()
      return vim.endswith(vim.api.nvim_get_current_line(), ch)
    end, "the typed character")
    R.typing[#R.typing + 1] = suggest()
    R.typing[#R.typing].typed = ch
  end
  -- Moving down within the block of 16 lines keeps the start; past it, it moves 16.
  R.rows = {}
  for _, row in ipairs({ 103, 111, 112, 119 }) do
    vim.api.nvim_win_set_cursor(0, { row + 1, 2 })
    local s = suggest()
    s.row = row
    R.rows[#R.rows + 1] = s
  end

  -- One long line of each kind of character; each cap lands inside a character.
  R.cuts = {}
  for _, ch in ipairs({ "é", "中", "😀" }) do
    local long = "x" .. ch:rep(100)
    local cap = #ch * 10 + 1
    vibrant.config().complete.max_prefix_chars = cap
    vibrant.config().complete.max_suffix_chars = cap
    set_buffer({ "é 中文", long, long }, 1, #long)
    local at_end = suggest()
    vim.api.nvim_win_set_cursor(0, { 2, 1 })
    local at_start = suggest()
    R.cuts[#R.cuts + 1] = { char = ch, cap = cap, at_end = at_end, at_start = at_start }
  end
  vibrant.config().complete.max_prefix_chars = 16000
  vibrant.config().complete.max_suffix_chars = 4000

  -- Typed-through: the first character of the ghost text typed, the rest still shown.
  local prompt = { "def greet(name):", '    """Say hello to name."""', "    print(" }
  set_buffer(prompt, 2, #prompt[3])
  local s = suggest()
  R.ghost = { suggestion = s, marks_before = ghost_marks(), shown_before = ghost.shown() }
  local text = s.shown
  if text and #text > 1 then
    local first = text:sub(1, vim.str_utf_end(text, 1) + 1)
    local requests = #ghost.history
    local started = vim.uv.hrtime()
    type_text(first)
    wait_for(2000, function()
      return ghost.shown() ~= text
    end, "the ghost text to follow the typing")
    R.ghost.follow_ms = (vim.uv.hrtime() - started) / 1e6
    R.ghost.typed = first
    R.ghost.shown_after = ghost.shown()
    R.ghost.marks_after = ghost_marks()
    R.ghost.cursor = vim.api.nvim_win_get_cursor(0)
    R.ghost.new_records = vim.list_slice(ghost.history, requests + 1)
    -- Accept (as a <Tab> mapping to accept() would): the rest is inserted once.
    vim.api.nvim_input("<Cmd>lua require('vibrant').accept()<CR>")
    wait_for(2000, function()
      return ghost.shown() == nil
    end, "the accept")
    R.ghost.accepted = vim.api.nvim_buf_get_lines(0, 0, -1, false)
    -- Typing something else drops the ghost text.
    R.ghost.marks_after_accept = ghost_marks()
  end

  -- Context from other files, the language and the file's name; ghost text in mid-line.
  -- pkg/helpers.py entered (a chunk around the cursor), one line changed and saved (a chunk
  -- nearly the same: it replaces the first), a few lines yanked; then pkg/models.py, whose
  -- own chunk is what the window around the cursor holds.
  vim.cmd("stopinsert")
  vim.cmd("edit! pkg/helpers.py")
  sleep(300) -- BufEnter picks after 100 ms
  vim.cmd("normal! 5GA  # changed")
  vim.cmd("write")
  vim.cmd("normal! 34GV38Gy")
  vim.cmd("edit! pkg/models.py")
  sleep(300)
  local models = vim.api.nvim_buf_get_lines(0, 0, -1, false)
  local row
  for i, line in ipairs(models) do
    if line:find("print(, name)", 1, true) then
      row = i - 1
    end
  end
  local col = #"    print("
  vim.api.nvim_win_set_cursor(0, { row + 1, col })
  vim.api.nvim_input("i")
  wait_for(2000, function()
    return vim.api.nvim_get_mode().mode == "i"
  end, "insert mode")
  vim.api.nvim_win_set_cursor(0, { row + 1, col })
  R.ring = {
    filetype = vim.bo.filetype,
    held = vim.tbl_map(function(c)
      return { c.filename, c.text }
    end, require("vibrant.completion").ring.chunks),
  }
  local mid = suggest()
  R.mid_line = {
    suggestion = mid,
    rest = vim.api.nvim_get_current_line():sub(col + 1),
    marks = ghost_marks(),
    virt_lines = (function()
      local out = {}
      local marks = vim.api.nvim_buf_get_extmarks(0, vim.api.nvim_get_namespaces()["vibrant.ghost"], 0, -1, { details = true })
      for _, m in ipairs(marks) do
        if m[4].virt_text then -- the display, not the anchor
          out[#out + 1] = m[4].virt_lines and #m[4].virt_lines or 0
        end
      end
      return out
    end)(),
    result = vibrant.state.last_completion,
  }
  R.ring.sent = vim.tbl_map(function(c)
    return { c.filename, c.text }
  end, require("vibrant.completion").ring.chunks)
  ghost.dismiss()

  -- Automatic suggestions (the default): a pause after typing asks by itself.
  vibrant.config().complete.auto = nil
  set_buffer({ "def add(a, b):", "    return " }, 1, 11)
  local n = #ghost.history
  type_text("a")
  wait_for(120000, function()
    return #ghost.history > n and ghost.history[#ghost.history].prompt ~= nil
  end, "the automatic suggestion")
  local auto = ghost.history[#ghost.history]
  R.auto = { prompt = hex(auto.prompt), err = auto.err, shown = auto.shown, auto = auto.auto }
  vibrant.config().complete.auto = false

  vim.cmd("stopinsert")
  local client = vibrant.client()
  vibrant.stop()
  wait_for(10000, function()
    return client:is_stopped()
  end, "the server to stop")
end

co = coroutine.create(function()
  local ok, err = xpcall(run, debug.traceback)
  R.ok = ok
  R.error = not ok and tostring(err) or nil
  local f = assert(io.open(out_path, "w"))
  f:write(vim.json.encode(R))
  f:close()
  vim.schedule(function()
    vim.cmd(ok and "qall!" or "cquit 3")
  end)
end)
local ok, err = coroutine.resume(co)
assert(ok, err)
