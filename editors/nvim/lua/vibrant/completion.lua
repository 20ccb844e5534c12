-- Completion at the cursor: the text around it (vibrant.window), the vibrant/complete
-- request built from it, and :VibrantComplete, which inserts the answer. The ghost text
-- (vibrant.ghost) sends the same request and shows the answer instead.
local client = require("vibrant.client")
local config = require("vibrant.config")
local util = require("vibrant.util")
local window = require("vibrant.window")

local M = {}
local levels = vim.log.levels

-- The code of a request cancelled by a newer one: nothing to tell the user.
local CANCELLED = -32800

--- Where a completion goes in a window, and the text around it: { buf, row (0-based),
--- col (a byte index), prompt, suffix, start_row (the first line sent) }. Whole lines
--- around the cursor (see vibrant.window), never a broken character.
function M.context(win)
  local buf = vim.api.nvim_win_get_buf(win)
  local row, col = unpack(vim.api.nvim_win_get_cursor(win)) -- row 1-based, col a byte index
  -- In insert mode (a <Cmd> mapping) the cursor is between two characters; in normal mode
  -- it is on one, and the completion goes after it, as `a` would insert.
  if not vim.api.nvim_get_mode().mode:match("^[iR]") then
    local line = vim.api.nvim_buf_get_lines(buf, row - 1, row, false)[1] or ""
    if #line > 0 then
      col = col + vim.str_utf_end(line, col + 1) + 1
    end
  end
  local w = window.of_buffer(buf, row - 1, col, config.options.complete)
  return { buf = buf, row = row - 1, col = col, prompt = w.prompt, suffix = w.suffix, start_row = w.start_row }
end

--- vibrant/complete's params for a context: the `complete` options and the chosen model.
function M.params(ctx)
  local opts = config.options.complete or {}
  return {
    prompt = ctx.prompt,
    suffix = ctx.suffix,
    maxTokens = opts.max_tokens,
    temperature = opts.temperature,
    stop = opts.stop,
    modelId = client.state.model,
  }
end

--- Ask for a completion of ctx; cb(err, result). An error is shown, unless a newer request
--- cancelled this one; an answer is kept as state.last_completion. Returns the request,
--- for M.cancel.
function M.request(ctx, cb)
  local req = {}
  client.request("vibrant/complete", M.params(ctx), function(err, result)
    if err then
      if err.code ~= CANCELLED then
        util.show_error(err, "completion")
      end
    else
      client.state.last_completion = result
    end
    cb(err, result)
  end, {
    on_id = function(id)
      req.id = id
    end,
  })
  return req
end

--- Cancel a request from M.request (nil: nothing to cancel).
function M.cancel(req)
  if req then
    client.cancel(req.id)
  end
end

-- :VibrantComplete ------------------------------------------------------------------------

local ns = vim.api.nvim_create_namespace("vibrant")
local pending -- the insertion in flight: { req, buf, mark }

-- Insert text at (r, c) of buf; the cursor moves past it if it is still at (r, c).
local function insert(win, buf, r, c, text)
  local new = vim.split(text, "\n", { plain = true })
  local set, why = pcall(vim.api.nvim_buf_set_text, buf, r, c, r, c, new)
  if not set then
    return tostring(why)
  end
  if vim.api.nvim_win_is_valid(win) and vim.api.nvim_win_get_buf(win) == buf then
    local cur = vim.api.nvim_win_get_cursor(win)
    if cur[1] - 1 == r and cur[2] == c then
      local end_row = r + #new - 1
      local end_col = (#new == 1 and c or 0) + #new[#new]
      vim.api.nvim_win_set_cursor(win, { end_row + 1, end_col })
    end
  end
  return nil
end

--- :VibrantComplete: fill in the middle at the cursor. The text is inserted where the
--- cursor was when asked (tracked with an extmark), whatever happened meanwhile; a new
--- request cancels the one still running. cb(err, result), when given.
function M.complete(cb)
  local win = vim.api.nvim_get_current_win()
  local ctx = M.context(win)
  local buf = ctx.buf
  if pending then
    M.cancel(pending.req)
    pcall(vim.api.nvim_buf_del_extmark, pending.buf, ns, pending.mark)
    pending = nil
  end
  local mark = vim.api.nvim_buf_set_extmark(buf, ns, ctx.row, ctx.col, { right_gravity = false })
  local this = { buf = buf, mark = mark }
  pending = this
  this.req = M.request(ctx, function(err, result)
    if pending == this then
      pending = nil
    end
    local ok, pos = pcall(vim.api.nvim_buf_get_extmark_by_id, buf, ns, mark, {})
    pcall(vim.api.nvim_buf_del_extmark, buf, ns, mark)
    if err then
      if cb then
        cb(err, nil)
      end
      return
    end
    local text = result.text or ""
    if text == "" then
      util.notify("vibrant: the model had nothing to add here.")
    elseif ok and pos[1] and vim.api.nvim_buf_is_valid(buf) then
      local why = insert(win, buf, pos[1], pos[2], text)
      if why then
        util.notify("vibrant: could not insert the completion: " .. why, levels.ERROR)
        if cb then
          cb({ code = -32099, message = why }, result)
        end
        return
      end
    end
    if cb then
      cb(nil, result)
    end
  end)
end

return M
