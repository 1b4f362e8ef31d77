"""Webhook notifications: a bounded queue and one sender with retries, off the request path.

``send`` only enqueues (False when the queue is full: the notice is dropped
and counted, never waited for). The sender posts generic JSON; a 5xx, 429
or a connection error is retried ``retries`` times with doubling backoff on
the injected clock; a 4xx is final.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import httpx

from failsoft.clock import Clock
from failsoft.control.runbook_model import WebhookOptions

__all__ = ["Delivery", "Notifier"]

log = logging.getLogger("failsoft.webhooks")


@dataclass
class Delivery:
    url: str
    payload: dict[str, Any]
    done: Callable[[bool, int, str], None] | None = None  # (delivered, attempts, detail)


class Notifier:
    def __init__(self, options: WebhookOptions, clock: Clock) -> None:
        self.options = options
        self._clock = clock
        self._queue: asyncio.Queue[Delivery] = asyncio.Queue(maxsize=options.queue_max)
        self._task: asyncio.Task[None] | None = None
        # One client per scheme, built in a thread. Only https needs the CA bundle, whose
        # loading holds the GIL for 0.1-1 s (a thread does not spare the event loop):
        # http:// hooks never pay it, https ones when configured, not as an incident opens.
        self._clients: dict[str, asyncio.Task[httpx.AsyncClient]] = {}
        self.dropped = 0
        self.delivered = 0
        self.failed = 0

    def send(self, delivery: Delivery) -> bool:
        try:
            self._queue.put_nowait(delivery)
        except asyncio.QueueFull:
            self.dropped += 1
            return False
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._run())
        return True

    def prepare(self, urls: Iterable[str]) -> None:
        """Build the clients these URLs need now, ahead of the first notice (on the loop)."""
        for url in urls:
            self._client("https" if url.lower().startswith("https:") else "http")

    def _client(self, scheme: str) -> asyncio.Task[httpx.AsyncClient]:
        found = self._clients.get(scheme)
        if found is None:
            build = asyncio.to_thread(_build, self.options.timeout_s, scheme == "https")
            found = self._clients[scheme] = asyncio.ensure_future(build)
        return found

    async def ready(self) -> None:
        """Wait for the clients being built."""
        await asyncio.gather(*self._clients.values(), return_exceptions=True)

    async def drain(self) -> None:
        """Wait until every queued delivery was tried (tests, shutdown)."""
        await self._queue.join()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            with contextlib.suppress(Exception):
                await (await client).aclose()

    async def _run(self) -> None:
        # The clients outlive this task: close() closes them.
        while True:
            delivery = await self._queue.get()
            try:
                scheme = "https" if delivery.url.lower().startswith("https:") else "http"
                http = await asyncio.shield(self._client(scheme))
                ok, attempts, detail = await self._deliver(http, delivery)
                if ok:
                    self.delivered += 1
                else:
                    self.failed += 1
                    log.warning("webhook not delivered", extra={"detail": detail})
                if delivery.done is not None:
                    delivery.done(ok, attempts, detail)
            finally:
                self._queue.task_done()

    async def _deliver(self, http: httpx.AsyncClient, delivery: Delivery) -> tuple[bool, int, str]:
        detail = ""
        for attempt in range(1, self.options.retries + 2):
            try:
                answer = await http.post(delivery.url, json=delivery.payload)
            except httpx.HTTPError as error:
                detail = f"connection failed ({type(error).__name__})"
            else:
                if answer.status_code < 300:
                    return True, attempt, f"HTTP {answer.status_code}"
                detail = f"HTTP {answer.status_code}"
                if answer.status_code < 500 and answer.status_code != 429:
                    return False, attempt, detail
            if attempt <= self.options.retries:
                await self._clock.sleep(self.options.backoff_s * 2 ** (attempt - 1))
        return False, self.options.retries + 1, detail


def _build(timeout_s: float, tls: bool) -> httpx.AsyncClient:
    """A client, and what its first request would import on the event loop (~60 ms)."""
    importlib.import_module("anyio._backends._asyncio")
    importlib.import_module("anyio.streams.memory")
    if tls:
        return httpx.AsyncClient(timeout=timeout_s)
    # Plain HTTP: no TLS to verify (and redirects are not followed).
    return httpx.AsyncClient(timeout=timeout_s, verify=False)
