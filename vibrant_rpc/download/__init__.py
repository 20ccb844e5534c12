"""Downloads from the Hugging Face Hub into the cache.

``hub`` speaks the Hub's HTTP API; ``transfer`` moves one file's bytes over ranged
connections while hashing them; ``state`` is a partial download's record on disk;
``downloader`` owns one model's download from resolve to install; ``jobs`` shares the
downloads running in a process among the requests that wait for them.

Nothing is imported here: ``httpx`` costs a sixth of a second, and the CLI imports
only what a command needs.
"""
