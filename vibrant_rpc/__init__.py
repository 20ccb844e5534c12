"""vibrant's local models: registry, selection, downloads, cache and completions."""

__version__ = "0.1.0"
