"""A Toxiproxy-compatible fault proxy: TCP proxies with toxics, driven over Toxiproxy's HTTP API.

Real Toxiproxy clients drive it unchanged. Run it with ``dtq toxiproxy`` (or
``python -m dtq.chaos``), or in-process with :class:`ToxiproxyServer`.
"""

from .server import VERSION, ToxiproxyApp, ToxiproxyServer

__all__ = ["VERSION", "ToxiproxyApp", "ToxiproxyServer"]
