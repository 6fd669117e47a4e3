"""The key sets RequestAuthentications name, fetched by the server (the I/O edge of JWT).

Istio's istiod fetches `jwksUri` itself and inlines the keys into each sidecar's JWT
filter, so that sidecars need no route to the issuer; so do we. Each source (a jwksUri,
or an issuer's OpenID discovery document) is fetched when the configuration first names
it, then every `refresh` seconds; a failure is retried sooner, with backoff. A source
never fetched has no keys, and translation gives its issuer a key set that verifies
nothing (translators.jwks.FAIL_CLOSED): tokens fail closed with 401. A refresh that
fails keeps the last good keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import aiohttp

from translators import jwks, model
from translators.request_authentication import OPENID_PREFIX, sources

log = logging.getLogger(__name__)
DEFAULT_TIMEOUT = 5.0


@dataclass
class SourceState:
    """What the debug API shows of one source."""

    ok: bool = False
    error: str = ""
    fetched_at: float = 0.0
    attempts: int = 0


class FetchError(Exception):
    pass


class JwksSource:
    def __init__(
        self,
        on_change: Callable[[Mapping[str, str]], None],
        refresh: float = 20 * 60,  # Istio's default key refresh interval
        retry: float = 1.0,
    ) -> None:
        self.on_change = on_change
        self.refresh = refresh
        self.retry = retry
        self.keys: dict[str, str] = {}
        self.states: dict[str, SourceState] = {}
        self._timeouts: dict[str, float] = {}
        self._tasks: dict[str, asyncio.Task] = {}
        self._tried: dict[str, asyncio.Event] = {}
        self._session: aiohttp.ClientSession | None = None

    def track(self, config: model.MeshConfig) -> None:
        """Fetch the sources `config` names and no others."""
        wanted = sources(config, DEFAULT_TIMEOUT)
        self._timeouts = wanted
        for source in list(self._tasks):
            if source not in wanted:
                self._tasks.pop(source).cancel()
                self._tried.pop(source, None)
                self.states.pop(source, None)
        if any(s not in wanted for s in self.keys):
            self.keys = {s: k for s, k in self.keys.items() if s in wanted}
            self.on_change(self.keys)
        for source in wanted:
            if source not in self._tasks:
                self._tried[source] = asyncio.Event()
                self.states[source] = SourceState()
                self._tasks[source] = asyncio.create_task(self._keep(source), name=f"jwks {source}")

    async def first_tries(self, limit: float) -> None:
        """Wait (at most `limit` seconds) until every source was tried once: the first
        push then has the keys that could be had."""
        events = [e.wait() for e in self._tried.values()]
        if events:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*events), limit)

    def report(self) -> dict[str, dict]:
        return {source: dataclasses.asdict(state) for source, state in sorted(self.states.items())}

    async def close(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        for task in self._tasks.values():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _keep(self, source: str) -> None:
        failures = 0
        while True:
            state = self.states[source]
            state.attempts += 1
            try:
                text = await self._fetch(source, self._timeouts.get(source, DEFAULT_TIMEOUT))
            except Exception as error:  # any failure is retried; the task never dies
                failures += 1
                state.ok, state.error = False, str(error)
                kept = "keeps the keys fetched before" if source in self.keys else "fails closed"
                log.error("JWKS %s: %s; its issuer's tokens %s", source, error, kept)
                delay = min(self.retry * 2 ** (failures - 1), self.refresh)
            else:
                failures = 0
                state.ok, state.error, state.fetched_at = True, "", time.time()
                if self.keys.get(source) != text:
                    self.keys = {**self.keys, source: text}
                    log.info("JWKS %s: keys fetched", source)
                    self.on_change(self.keys)
                delay = self.refresh
            event = self._tried.get(source)
            if event is not None:
                event.set()
            await asyncio.sleep(delay)

    async def _fetch(self, source: str, timeout: float) -> str:
        if source.startswith(OPENID_PREFIX):
            issuer = source[len(OPENID_PREFIX) :].rstrip("/")
            discovery = await self._get(f"{issuer}/.well-known/openid-configuration", timeout)
            try:
                uri = json.loads(discovery)["jwks_uri"]
                if not isinstance(uri, str):
                    raise TypeError(uri)
            except (ValueError, KeyError, TypeError) as error:
                raise FetchError(f"OpenID discovery names no jwks_uri ({error!r})") from None
            text = await self._get(uri, timeout)
        else:
            text = await self._get(source, timeout)
        found = jwks.problem(text)
        if found is not None:
            raise FetchError(f"not a usable key set: {found}")
        return text

    async def _get(self, url: str, timeout: float) -> str:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        try:
            async with self._session.get(
                url, timeout=aiohttp.ClientTimeout(total=timeout)
            ) as response:
                if response.status != 200:
                    raise FetchError(f"GET {url}: HTTP {response.status}")
                chunks, size = [], 0
                async for chunk in response.content.iter_chunked(64 * 1024):
                    chunks.append(chunk)
                    size += len(chunk)
                    if size > jwks.MAX_BYTES:
                        break
                body = b"".join(chunks)
        except (aiohttp.ClientError, TimeoutError, ValueError) as error:
            raise FetchError(f"GET {url}: {type(error).__name__} {error}".strip()) from None
        if len(body) > jwks.MAX_BYTES:
            raise FetchError(f"GET {url}: larger than {jwks.MAX_BYTES} bytes")
        try:
            return body.decode()
        except UnicodeDecodeError:
            raise FetchError(f"GET {url}: not UTF-8") from None
