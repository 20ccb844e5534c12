"""``python -m vibrant_rpc``: the JSON-RPC server on stdio, as ``vibrant-rpc``."""

import sys

from .server import main

sys.exit(main())
