-- Define the :Vibrant* commands with default options, so the plugin works without a
-- setup() call; setup() redefines them with its options. Nothing starts here.
if vim.g.loaded_vibrant then
  return
end
vim.g.loaded_vibrant = true
if vim.fn.has("nvim-0.10") ~= 1 then
  vim.notify("vibrant needs Neovim 0.10 or newer.", vim.log.levels.WARN)
  return
end
require("vibrant.commands").define()
