"""Stores and transports by URL scheme: the one place that turns a URL into a backend.

    store = open_store("redis://127.0.0.1:6379/0", prefix="dtq")
    transport = open_transport("amqp://guest:guest@127.0.0.1:5672/%2F", namespace="dtq",
                               name="worker-1", quorum=True)

The scheme (what comes before `:`) picks an opener; the URL and every keyword go to it, so a
backend's own options (`quorum`, `work_bundle`, `client_name`, ...) pass straight through. Of
several comma-separated URLs the first one's scheme counts. An unknown scheme raises
`ConfigurationError` naming the known ones.

Built in: stores `redis`, `rediss`, `unix` (a Redis socket), `redis+sentinel`,
`rediss+sentinel` (`transports.redis.RedisStore`) and `memory` (`SimStore`, a fresh empty store
in this process); transports `amqp`, `amqps` (`transports.rabbitmq.RabbitTransport`). Openers
import their client library when they are called: importing this module imports neither pika
nor redis-py.

A new backend is one module with an opener per scheme, registered when it is imported:

    register_store("etcd", lambda url, *, prefix, **options: EtcdStore(url, prefix, **options))

A URL of a scheme nobody registered first loads the `dtq.backends` entry points (each names
such a module: `[project.entry-points."dtq.backends"] etcd = "dtq_etcd"`), once per process, so
a node or a command finds an installed backend without importing it itself. The backend
passes `dtq.testing.StoreConformance` / `TransportConformance` (README, "Extending dtq").

`BACKENDS` names the backends a scenario runs on (`dtq scenario run --transport NAME`): the
transport scheme and store scheme each stands for.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Mapping
from typing import Any, Protocol, TypeVar

from dtq.errors import ConfigurationError
from dtq.store import Store
from dtq.transport import Transport

__all__ = ["BACKENDS", "ENTRY_POINTS", "ClosingStore", "StoreOpener", "TransportOpener",
           "backend_names", "load_entry_points", "open_store", "open_transport",
           "register_store", "register_transport", "require", "scheme_of", "store_schemes",
           "transport_schemes", "unregister_store", "unregister_transport"]

T = TypeVar("T")


class ClosingStore(Store, Protocol):
    """A store that holds connections, or nothing, and lets them go on `close`."""

    def close(self) -> None: ...


class StoreOpener(Protocol):
    def __call__(self, url: str, *, prefix: str, **options: Any) -> ClosingStore: ...


class TransportOpener(Protocol):
    def __call__(self, url: str, *, namespace: str, name: str, **options: Any) -> Transport: ...


_stores: dict[str, StoreOpener] = {}
_transports: dict[str, TransportOpener] = {}
ENTRY_POINTS = "dtq.backends"
_loaded = False

BACKENDS: Mapping[str, tuple[str, str]] = {"memory": ("memory", "memory"),
                                           "rabbitmq": ("amqp", "redis")}
"""Backend name -> (transport scheme, store scheme)."""


def scheme_of(url: str) -> str:
    """The scheme of `url` (of the first of comma-separated URLs), lower case; "" if none."""
    first = url.strip().split(",", 1)[0]
    scheme, colon, _ = first.partition(":")
    return scheme.strip().lower() if colon else ""


def _key(scheme: str) -> str:
    key = scheme.strip().lower().rstrip(":/")
    if not key:
        raise ValueError("a backend needs a scheme")
    return key


def register_store(scheme: str, opener: StoreOpener) -> None:
    """Open stores whose URL starts `scheme:` with `opener(url, prefix=..., **options)`
    (replacing any opener the scheme had)."""
    _stores[_key(scheme)] = opener


def register_transport(scheme: str, opener: TransportOpener) -> None:
    """Open transports whose URL starts `scheme:` with `opener(url, namespace=..., name=...,
    **options)` (replacing any opener the scheme had)."""
    _transports[_key(scheme)] = opener


def unregister_store(scheme: str) -> None:
    _stores.pop(_key(scheme), None)


def unregister_transport(scheme: str) -> None:
    _transports.pop(_key(scheme), None)


def store_schemes() -> list[str]:
    return sorted(_stores)


def transport_schemes() -> list[str]:
    return sorted(_transports)


def backend_names() -> list[str]:
    """The backends of `BACKENDS` whose transport or store scheme is registered."""
    return sorted(name for name, (transport, store) in BACKENDS.items()
                  if transport in _transports or store in _stores)


def load_entry_points() -> None:
    """Import the modules the `dtq.backends` entry points name (they register on import);
    once per process."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for point in importlib.metadata.entry_points(group=ENTRY_POINTS):
        importlib.import_module(point.value.partition(":")[0])


def _opener(table: Mapping[str, T], what: str, url: str) -> T:
    scheme = scheme_of(url)
    if scheme not in table:
        load_entry_points()
    try:
        return table[scheme]
    except KeyError:
        shown = f"scheme {scheme!r}" if scheme else "no scheme"
        raise ConfigurationError(
            f"no {what} for {shown} (a {what} URL starts with one of: "
            f"{', '.join(f'{s}:' for s in sorted(table))})") from None


def open_store(url: str, *, prefix: str = "dtq", **options: Any) -> ClosingStore:
    """The store at `url`, its keys under `prefix` (the namespace); `options` go to the
    scheme's opener."""
    return _opener(_stores, "store", url)(url, prefix=prefix, **options)


def open_transport(url: str, *, namespace: str = "dtq", name: str = "dtq",
                   **options: Any) -> Transport:
    """A transport (not started) to the broker at `url`, for actor `name` in `namespace`;
    `options` go to the scheme's opener."""
    return _opener(_transports, "transport", url)(url, namespace=namespace, name=name, **options)


def require(value: object, kind: type[T], what: str) -> T:
    """`value` if it is a `kind`; else a `ConfigurationError`: `what` needs that backend."""
    if not isinstance(value, kind):
        raise ConfigurationError(f"{what} needs a {kind.__name__}, not a "
                                 f"{type(value).__name__}")
    return value


# --- the built-in backends ----------------------------------------------------------------------


def _redis_store(url: str, *, prefix: str, **options: Any) -> ClosingStore:
    from transports.redis import RedisStore

    return RedisStore.from_url(url, prefix=prefix, **options)


def _memory_store(url: str, *, prefix: str, **options: Any) -> ClosingStore:
    """A fresh, empty `SimStore` (`memory:`): this process's alone, whatever the prefix."""
    from transports.memory_store import SimStore

    return SimStore(**options)


def _rabbit_transport(url: str, *, namespace: str, name: str, **options: Any) -> Transport:
    from transports.rabbitmq import RabbitTransport

    return RabbitTransport(url, namespace=namespace, name=name, **options)


for _scheme in ("redis", "rediss", "unix", "redis+sentinel", "rediss+sentinel"):
    register_store(_scheme, _redis_store)
register_store("memory", _memory_store)
for _scheme in ("amqp", "amqps"):
    register_transport(_scheme, _rabbit_transport)
