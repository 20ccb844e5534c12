-- Completion at the cursor: the text around it (vibrant.window), the vibrant/complete
-- request built from it, and :VibrantComplete, which inserts the answer. The ghost text
-- (vibrant.ghost) sends the same request and shows the answer instead.
local client = require("vibrant.client")
local config = require("vibrant.config")
local ring = require("vibrant.ring")
local util = require("vibrant.util")
local window = require("vibrant.window")

local M = {}
local levels = vim.log.levels

-- The code of a request cancelled by a newer one: nothing to tell the user.
local CANCELLED = -32800

-- Neovim's filetypes where VS Code's language ids (what the server knows a language by)
-- differ; any other filetype is its own id (python, lua, go, rust, java, c, cpp,
-- javascript, typescript, javascriptreact, typescriptreact are the same in both).
local LANGUAGE_IDS = {
  sh = "shellscript",
  bash = "shellscript",
  zsh = "shellscript",
  cs = "csharp",
  objc = "objective-c",
  objcpp = "objective-cpp",
  make = "makefile",
  tex = "latex",
  text = "plaintext",
  dosbatch = "bat",
  ps1 = "powershell",
  gitcommit = "git-commit",
  gitrebase = "git-rebase",
  ["javascript.jsx"] = "javascriptreact",
  ["typescript.tsx"] = "typescriptreact",
}

--- The language id the server knows a filetype by (nil for none).
function M.language_id(filetype)
  if not filetype or filetype == "" then
    return nil
  end
  local id = LANGUAGE_IDS[filetype] or filetype:match("^[^.]+") -- "python.django": python
  return #id <= 100 and id or nil
end

--- A file's name as sent: relative to `cwd` when inside it, else absolute; nil for none.
function M.filename(name, cwd)
  if not name or name == "" then
    return nil
  end
  local full = vim.fs.normalize(vim.fn.fnamemodify(name, ":p"))
  local root = vim.fs.normalize(cwd)
  if root ~= "/" and full:sub(1, #root + 1) == root .. "/" then
    full = full:sub(#root + 2)
  end
  return window.tail(window.sanitize(full), 1000) -- the server takes 1,000 at most
end

-- Chunks of other files (vibrant.ring): yanked text, and the lines around the cursor of a
-- buffer entered, left or saved, as llama.vim picks them.
M.ring = ring.new()

local function buffer_name(buf)
  return M.filename(vim.api.nvim_buf_get_name(buf), vim.fn.getcwd())
end

-- The lines around the cursor of the current window, if its buffer is the event's (`:wall`
-- writes others) and a file saved as it is shown (llama.vim's no_mod: a modified buffer's
-- text may be half typed).
local function pick_around_cursor(ev)
  local buf = vim.api.nvim_get_current_buf()
  if ev.buf ~= buf then
    return
  end
  local bo = vim.bo[buf]
  if bo.modified or bo.buftype ~= "" or not bo.buflisted or vim.fn.filereadable(vim.api.nvim_buf_get_name(buf)) ~= 1 then
    return
  end
  local n = M.ring.opts.chunk_lines
  local first = math.max(0, vim.api.nvim_win_get_cursor(0)[1] - 1 - math.floor(n / 2))
  ring.pick(M.ring, vim.api.nvim_buf_get_lines(buf, first, first + n, false), buffer_name(buf))
end

--- The autocmds that feed the ring (created once; setup() calls it). `opts` are
--- vibrant.ring's options (`context` in setup()).
function M.collect(opts)
  M.ring = ring.new(opts)
  local group = vim.api.nvim_create_augroup("vibrant.ring", { clear = true })
  vim.api.nvim_create_autocmd("TextYankPost", {
    group = group,
    callback = function(ev)
      if vim.v.event.operator == "y" then
        ring.pick(M.ring, vim.v.event.regcontents, buffer_name(ev.buf))
      end
    end,
  })
  -- Entered: a moment later, once the cursor is where the buffer was left.
  vim.api.nvim_create_autocmd("BufEnter", {
    group = group,
    callback = function(ev)
      vim.defer_fn(function()
        pick_around_cursor(ev)
      end, 100)
    end,
  })
  vim.api.nvim_create_autocmd({ "BufLeave", "BufWritePost" }, { group = group, callback = pick_around_cursor })
end

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
  return {
    buf = buf,
    row = row - 1,
    col = col,
    prompt = w.prompt,
    suffix = w.suffix,
    start_row = w.start_row,
    language_id = M.language_id(vim.bo[buf].filetype),
    filename = buffer_name(buf),
    context = ring.context(M.ring, w.prompt .. w.suffix),
  }
end

--- vibrant/complete's params for a context: the `complete` options and the chosen model.
--- `multiline` is left out: the server decides one line or several by its rule (several
--- only at the end of a line or on an empty one, outside a line comment), from the same
--- text the shim sends, and with each language's line comment and strings, which a shim
--- would have to copy (and keep in step with) to decide it.
function M.params(ctx)
  local opts = config.options.complete or {}
  return {
    prompt = ctx.prompt,
    suffix = ctx.suffix,
    maxTokens = opts.max_tokens,
    temperature = opts.temperature,
    stop = opts.stop,
    modelId = client.state.model,
    languageId = ctx.language_id,
    filename = ctx.filename,
    context = #ctx.context > 0 and ctx.context or nil,
  }
end

--- Ask for a completion of ctx; cb(err, result). An error is shown, unless a newer request
--- cancelled this one or `quiet` (a request the user didn't ask for: the caller decides);
--- an answer is kept as state.last_completion. Returns the request, for M.cancel.
function M.request(ctx, cb, quiet)
  local req = {}
  client.request("vibrant/complete", M.params(ctx), function(err, result)
    if err then
      if err.code ~= CANCELLED and not quiet then
        util.show_error(err, "completion")
      end
    else
      client.state.last_completion = result
    end
    cb(err, result)
  end, {
    quiet = quiet,
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
