"""The wire protocol: the messages (``messages``) and the method table (``methods``).

These types are the contract editors code against; ``protocol/`` (README and JSON
Schemas) and the editors' generated files come from this package through
``vibrant_rpc.protocol.docs``. Callers use it as one namespace: ``from . import protocol
as p``; ``p.CompleteParams``, ``p.METHODS``.
"""

from .messages import *
from .methods import *
