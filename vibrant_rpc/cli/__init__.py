"""The ``vibrant`` command: argument parsing and the commands over the facade
(``commands``), and what they print (``render``). Starts without httpx or llama.cpp."""

from .commands import main

__all__ = ["main"]
