"""``python -m vibrant_rpc``: the JSON-RPC server on stdio, as ``vibrant-rpc``."""

import sys

from .server.main import main

sys.exit(main())
