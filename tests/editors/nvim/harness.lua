-- What the headless test scripts share (loaded with dofile from beside them): stopping the
-- server, and ending Neovim with the record written where the pytest side reads it.
local M = {}

--- Stop the plugin's server and wait until its client has stopped.
function M.stop_server(vibrant)
  local client = vibrant.client()
  vibrant.stop()
  assert(
    vim.wait(10000, function()
      return client == nil or client:is_stopped()
    end, 20),
    "the server did not stop"
  )
  return client
end

--- Run `fn`, write the record R (with ok and error) to out_path as JSON, and quit Neovim:
--- exit code 0, or 3 with the error on stderr.
function M.finish(R, out_path, fn)
  local ok, err = xpcall(fn, debug.traceback)
  R.ok, R.error = ok, not ok and tostring(err) or nil
  local f = assert(io.open(out_path, "w"))
  f:write(vim.json.encode(R))
  f:close()
  if not ok then
    io.stderr:write(tostring(err) .. "\n")
  end
  vim.cmd(ok and "qall!" or "cquit 3")
end

return M
