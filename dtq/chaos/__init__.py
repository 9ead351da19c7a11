"""A Toxiproxy-compatible fault proxy: TCP proxies with toxics, driven over Toxiproxy's HTTP API.

Real Toxiproxy clients (toxiproxy-python among them) drive it unchanged. Run it with
``dtq toxiproxy`` (or ``python -m dtq.chaos``), or in-process with :class:`ToxiproxyServer`.

Where things live: ``server`` (the app and the threaded helper), ``cli`` (the command),
``api`` and ``httpd`` (HTTP), ``collection`` and ``proxy`` (proxies and connections),
``link``, ``pipeline`` and ``toxics`` (the data path), ``gojson`` and ``addr`` (Go
compatibility), ``listener``, ``metrics``, ``logs``, ``errors``, and ``testkit`` (loopback
servers and assertions for tests that go through the proxy).
"""

from .server import VERSION, ToxiproxyApp, ToxiproxyServer

__all__ = ["VERSION", "ToxiproxyApp", "ToxiproxyServer"]
