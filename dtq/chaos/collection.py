"""All proxies of one server and the operations the API performs on them.

The checks and their order follow Toxiproxy 2.12 exactly, because clients branch on the
status codes: 400 for bad input, 404 for unknown names, 409 for duplicates, 500 (with the OS
or resolver text) when a listener cannot be bound. Callers serialise operations (the API
holds one lock), as the Go server's collection mutex does.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .addr import AddressError, resolve
from .errors import PROXY_EXISTS, PROXY_NOT_FOUND, ApiError, missing_field
from .gojson import get_bool, get_str
from .logs import event
from .metrics import Metrics
from .proxy import Proxy


@dataclass(frozen=True)
class ProxyInput:
    """One proxy as a client describes it in POST /proxies or /populate."""

    name: str
    listen: str
    upstream: str
    enabled: bool


class ProxyCollection:
    """Named proxies, with Toxiproxy's create, populate, update, delete and reset rules."""

    def __init__(self, rng: random.Random, metrics: Metrics) -> None:
        self._proxies: dict[str, Proxy] = {}
        self._rng = rng
        self._metrics = metrics

    def sorted(self) -> list[Proxy]:
        return [self._proxies[name] for name in sorted(self._proxies)]

    def get(self, name: str) -> Proxy:
        try:
            return self._proxies[name]
        except KeyError:
            raise ApiError(404, PROXY_NOT_FOUND) from None

    def _new(self, spec: ProxyInput) -> Proxy:
        return Proxy(spec.name, spec.listen, spec.upstream, rng=self._rng, metrics=self._metrics)

    async def create(self, spec: ProxyInput) -> Proxy:
        if not spec.name:
            raise missing_field("name")
        if not spec.upstream:
            raise missing_field("upstream")
        if spec.name in self._proxies:
            raise ApiError(409, PROXY_EXISTS)
        proxy = self._new(spec)
        if spec.enabled:
            await _start(proxy)
        self._proxies[spec.name] = proxy
        return proxy

    async def populate(self, specs: Sequence[ProxyInput]) -> tuple[list[Proxy], ApiError | None]:
        """Create or replace each proxy in order; stop at the first failure."""
        for number, spec in enumerate(specs, start=1):
            if not spec.name:
                return [], missing_field(f"name at proxy {number}")
            if not spec.upstream:
                return [], missing_field(f"upstream at proxy {number}")
        done: list[Proxy] = []
        for spec in specs:
            existing = self._proxies.get(spec.name)
            if existing is not None and not await _differs(existing, spec.listen, spec.upstream):
                done.append(existing)
                continue
            if existing is not None:
                existing.stop()
            proxy = self._new(spec)
            if spec.enabled:
                try:
                    await _start(proxy)
                except ApiError as exc:
                    return done, exc
            self._proxies[spec.name] = proxy
            done.append(proxy)
        return done, None

    async def update(self, proxy: Proxy, changes: Mapping[str, object]) -> None:
        """Apply ``listen``/``upstream``/``enabled`` changes; missing keys keep current values."""
        listen = get_str(changes, "listen", proxy.listen)
        upstream = get_str(changes, "upstream", proxy.upstream)
        enabled = get_bool(changes, "enabled", proxy.enabled)
        try:
            differs = await _differs(proxy, listen, upstream, strict=True)
        except AddressError as exc:
            raise ApiError(500, str(exc)) from None
        if differs:
            proxy.stop()
            proxy.listen, proxy.upstream = listen, upstream
        if enabled and not proxy.enabled:
            await _start(proxy)
        elif not enabled and proxy.enabled:
            proxy.stop()

    def delete(self, name: str) -> None:
        proxy = self.get(name)
        proxy.stop()
        del self._proxies[name]

    async def reset(self) -> None:
        """Enable every proxy and remove every toxic."""
        for proxy in list(self._proxies.values()):
            await _start(proxy)
            proxy.remove_all_toxics()
        event(logging.INFO, "Reset all proxies")

    def stop_all(self) -> None:
        for proxy in self._proxies.values():
            proxy.stop()


async def _start(proxy: Proxy) -> None:
    try:
        await proxy.start()
    except AddressError as exc:
        event(logging.ERROR, "Error starting proxy", name=proxy.name, error=str(exc))
        raise ApiError(500, str(exc)) from None


async def _differs(proxy: Proxy, listen: str, upstream: str, *, strict: bool = False) -> bool:
    """Whether a proxy must be restarted: ``listen`` is compared after resolution (#631)."""
    try:
        resolved = (await resolve(listen)).go_string()
    except AddressError:
        if strict:
            raise
        return True
    return not (proxy.listen == resolved and proxy.upstream == upstream)
