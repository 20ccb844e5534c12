-- Suggestions shown as ghost text (virtual text) at the cursor in insert mode. Typing the
-- start of a suggestion keeps showing its rest at once, without asking the server again;
-- typing anything else drops it. With `complete.auto` (the default, as in llama.vim), a
-- pause in typing asks for one.
--
-- An automatic request never downloads anything (the server answers NotCached instead, and
-- names the model and its size) and loads only a downloaded model: the one chosen, else the
-- server's pick among those downloaded. It is the user's request that tells them what is
-- wrong: an automatic one that fails says nothing and pauses the automatic suggestions
-- until a download finishes, another model is chosen or the user asks (suggest(),
-- :VibrantComplete), so that typing without a model never nags.
local client = require("vibrant.client")
local completion = require("vibrant.completion")
local config = require("vibrant.config")

local M = {}

M.defaults = {
  auto = true, -- suggest as you type (after debounce_ms without a keystroke)
  debounce_ms = 150,
}

local CANCELLED = -32800

--- Why automatic suggestions are paused (nil: they are not): { code, message, and what
--- ends the pause when it changes: model (the model chosen then), last (the last completion
--- the user's own requests got then) }.
M.paused = nil

local ns = vim.api.nvim_create_namespace("vibrant.ghost")
vim.api.nvim_set_hl(0, "VibrantGhost", { link = "Comment", default = true })

--- What was sent and shown, newest last (tests read it): { prompt, suffix, start_row,
--- text (the answer), usage, timings, shown, typed_through, err }.
M.history = {}

-- The suggestion shown: buf, anchor (extmark where it was asked; stays left of what is
-- typed there), text (the whole completion), rest (what is shown now), mark (the display).
local current
local pending -- the request in flight: { req, buf, tick }
local timer

local function opts()
  return vim.tbl_extend("keep", config.options.complete or {}, M.defaults)
end

local function remember(record)
  M.history[#M.history + 1] = record
  if #M.history > 50 then
    table.remove(M.history, 1)
  end
end

local function cursor_pos()
  local r, c = unpack(vim.api.nvim_win_get_cursor(0))
  return r - 1, c
end

--- Remove the ghost text (the suggestion is forgotten).
function M.dismiss()
  if current and vim.api.nvim_buf_is_valid(current.buf) then
    vim.api.nvim_buf_clear_namespace(current.buf, ns, 0, -1)
  end
  current = nil
end

local function render(row, col)
  local lines = vim.split(current.rest, "\n", { plain = true })
  local virt_lines = {}
  for i = 2, #lines do
    virt_lines[#virt_lines + 1] = { { lines[i], "VibrantGhost" } }
  end
  current.mark = vim.api.nvim_buf_set_extmark(current.buf, ns, row, col, {
    id = current.mark,
    virt_text = { { lines[1], "VibrantGhost" } },
    virt_text_pos = "inline",
    virt_lines = #virt_lines > 0 and virt_lines or nil,
    right_gravity = false,
  })
end

--- The suggestion's rest now, after what was typed since it was shown; nil (and the
--- ghost text gone) when what was typed is not its start.
local function follow()
  if not current then
    return nil
  end
  local buf = vim.api.nvim_get_current_buf()
  local ok, anchor = pcall(vim.api.nvim_buf_get_extmark_by_id, current.buf, ns, current.anchor, {})
  if buf ~= current.buf or not ok or not anchor[1] then
    M.dismiss()
    return nil
  end
  local row, col = cursor_pos()
  local arow, acol = anchor[1], anchor[2]
  if row < arow or (row == arow and col < acol) then
    M.dismiss()
    return nil
  end
  local typed = table.concat(vim.api.nvim_buf_get_text(buf, arow, acol, row, col, {}), "\n")
  if typed == "" then
    current.rest = current.text
  elseif #typed < #current.text and current.text:sub(1, #typed) == typed then
    current.rest = current.text:sub(#typed + 1)
  else
    M.dismiss()
    return nil
  end
  render(row, col)
  return current.rest, typed
end

local function show(buf, row, col, text)
  M.dismiss()
  current = {
    buf = buf,
    anchor = vim.api.nvim_buf_set_extmark(buf, ns, row, col, { right_gravity = false }),
    text = text,
    rest = text,
  }
  render(row, col)
end

local attached = false

--- Ask for a suggestion at the cursor and show it as ghost text. cb(err, record).
--- `auto`: asked by a pause in typing, not by the user (see the top of this file).
function M.suggest(cb, auto)
  if not attached then
    M.attach()
  end
  local ctx = completion.context(vim.api.nvim_get_current_win())
  local buf, row, col = ctx.buf, ctx.row, ctx.col
  if pending then
    completion.cancel(pending.req)
  end
  local this = { buf = buf, tick = vim.api.nvim_buf_get_changedtick(buf) }
  pending = this
  local record = { prompt = ctx.prompt, suffix = ctx.suffix, start_row = ctx.start_row, auto = auto or nil }
  this.req = completion.request(ctx, function(err, result)
    if pending == this then
      pending = nil
    end
    record.err = err
    remember(record)
    if err and err.code ~= CANCELLED and auto then
      local state = client.state
      M.paused = { code = err.code, message = err.message, model = state.model, last = state.last_completion }
    end
    if not err then
      local text = result.text or ""
      record.text = text
      record.usage, record.timings = result.usage, result.timings
      -- Shown only where it was asked: the buffer unchanged and the cursor still there.
      local r, c = cursor_pos()
      if
        text ~= ""
        and vim.api.nvim_get_current_buf() == buf
        and vim.api.nvim_buf_get_changedtick(buf) == this.tick
        and r == row
        and c == col
        and vim.api.nvim_get_mode().mode:match("^i")
      then
        show(buf, row, col, text)
        record.shown = text
      end
    end
    if cb then
      cb(err, record)
    end
  end, auto)
end

--- Insert the suggestion's rest at the cursor. Returns whether there was one: a mapping
--- can fall back to its key, e.g. <Tab>, when there was not.
function M.accept()
  local rest = follow()
  if not rest then
    return false
  end
  local buf = current.buf
  local row, col = cursor_pos()
  M.dismiss()
  local lines = vim.split(rest, "\n", { plain = true })
  vim.api.nvim_buf_set_text(buf, row, col, row, col, lines)
  local end_row = row + #lines - 1
  local end_col = (#lines == 1 and col or 0) + #lines[#lines]
  vim.api.nvim_win_set_cursor(0, { end_row + 1, end_col })
  return true
end

--- What is shown now (nil: nothing).
function M.shown()
  return current and current.rest or nil
end

local function on_text_changed()
  local rest, typed = follow()
  if rest then
    if typed ~= "" then
      remember({ typed_through = true, shown = rest })
    end
    return
  end
  local o = opts()
  if not o.auto or vim.bo.buftype ~= "" then
    return -- a prompt, a terminal, a scratch list: not code
  end
  local paused = M.paused
  if paused and paused.model == client.state.model and paused.last == client.state.last_completion then
    return
  end
  M.paused = nil -- another model was chosen since, or a request of the user's was answered
  if timer then
    timer:stop()
  end
  timer = timer or vim.uv.new_timer()
  timer:start(o.debounce_ms, 0, vim.schedule_wrap(function()
    if vim.api.nvim_get_mode().mode:match("^i") and not current then
      M.suggest(nil, true)
    end
  end))
end

--- The autocmds that follow typing (created once; setup() calls it).
function M.attach()
  attached = true
  local group = vim.api.nvim_create_augroup("vibrant.ghost", { clear = true })
  vim.api.nvim_create_autocmd("TextChangedI", { group = group, callback = on_text_changed })
  vim.api.nvim_create_autocmd("CursorMovedI", {
    group = group,
    callback = function()
      follow()
    end,
  })
  -- A model downloaded: worth asking again.
  vim.api.nvim_create_autocmd("User", {
    group = group,
    pattern = "VibrantDownloadProgress",
    callback = function(ev)
      if type(ev.data) == "table" and ev.data.state == "done" then
        M.paused = nil
      end
    end,
  })
  vim.api.nvim_create_autocmd({ "InsertLeave", "BufLeave" }, {
    group = group,
    callback = function()
      if timer then
        timer:stop()
      end
      M.dismiss()
    end,
  })
end

return M
