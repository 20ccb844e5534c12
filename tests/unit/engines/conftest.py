from tests.support.llama_server import llama_server_bin

__all__ = ["llama_server_bin"]  # the fixture, for the tests here
