"""The JSON-RPC transport: the only place pygls and lsprotocol are imported.

``wire`` frames messages and answers malformed ones; ``language_server`` is the pygls
server with its worker pool; ``work_done`` reports work-done progress (``$/progress``,
not a download's progress: that is ``download.progress``); ``handlers`` has one thin
function per method over ``vibrant_rpc.service``; ``main`` starts it all.
"""
