"""redis-proxy's internals; the card's files at the top (redis_proxy.py, http_server.py) are the front door."""

__version__ = "0.2.0"  # the one product version: RESP INFO, the upstream User-Agent, pyproject.toml
