"""vibrant's model backend: registry, selection, downloads, cache and runtime."""

__version__ = "0.1.0"
