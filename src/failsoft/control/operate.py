"""SLOs and incidents in a gateway: the observers, their timers, and their store.

``Operate`` subscribes the SLO book and the incidents to the bus, judges
burn rates and incident states every ``incidents.evaluate_every_s`` on the
injected clock, and saves what changed every ``incidents.persist_every_s``
(SLO buckets, incidents, the audit entries of state changes) on a thread
with a deadline: the request path never waits on the store. ``boot`` loads
the buckets and incidents back before the gateway serves, so a restart
resets neither a budget nor an incident. With the store down, the counting
and the incidents go on in memory and are saved once it answers.

Gateways sharing the store: after each save, a gateway reads the buckets the
others saved since it last looked (``merge_peers``), so its budgets, burn
rates and alerts are the whole fleet's; it reads them all at start-up and
every ``PEERS_FULL_EVERY_S``. Its own rows are the only ones it writes, so a
restart neither resets nor doubles anything: it loads its own buckets back
and reads the others' sums again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from failsoft.clock import Clock
from failsoft.control.incident_model import Incident, means
from failsoft.control.incidents import Incidents
from failsoft.control.slo import SloBook
from failsoft.control.storecall import store_call
from failsoft.data.feedback import FeedbackJoined
from failsoft.observe.events import Event, EventBus, RequestFinished

if TYPE_CHECKING:
    from failsoft.config import Config
    from failsoft.store import Store

__all__ = ["Operate"]

log = logging.getLogger("failsoft.operate")

PRUNE_EVERY_S = 3600.0  # buckets past their window leave the store this often
CLOSE_WITHIN_S = 5.0  # the last save on shutdown (alongside the last audit checkpoint)
# Reading what the other gateways saved since the latest save seen, less this: a save
# stamped a little earlier by a clock behind, or committed late, is read all the same
# (reading a bucket twice is harmless: it holds full counts).
PEERS_OVERLAP_S = 300.0
PEERS_FULL_EVERY_S = 3600.0  # and everything, this often, whatever the clocks did


class Operate:
    """The SLO book and the incidents of one gateway (see the module's docstring)."""

    def __init__(
        self,
        config: Config,
        bus: EventBus,
        clock: Clock,
        store: Store | None,
        *,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._bus = bus
        self._clock = clock
        self.store = store
        self.wall = wall
        self.book = SloBook(config.models, bus.emit, wall)
        self.incidents = Incidents(config.incidents, config.models, wall, bus.emit)
        self.incidents.set_replicas(replica_counts(config))
        self._subscribed: set[type[Event]] = set()
        bus.subscribe(self.book.observe, (RequestFinished,))
        bus.subscribe(self.book.observe_feedback, (FeedbackJoined,))
        self._subscribe_incidents()
        self._tasks: list[asyncio.Task[None]] = []
        self._saving = asyncio.Lock()
        self.saved_ok = store is None
        self._pruned_at = 0.0
        self._loaded = store is None  # what the store held is in memory
        self._peers_seen: float | None = None  # the latest peer save read (their clock)
        self._peers_full_at = 0.0  # when they were all read last (this clock)
        self.runbooks: Any = None  # control/runbooks.py, set by the app (approvals)
        self.gateway = ""  # this gateway's id in the store, kept in its data directory
        if store is not None:
            from failsoft.store.operate_rows import gateway_id

            self.gateway = gateway_id(store.data_dir)

    def _subscribe_incidents(self) -> None:
        """Subscribe to the event types known now (rollout and drift events are matched by
        name, so a module imported later is subscribed at ``start``)."""
        new = [kind for kind in self.incidents.kinds() if kind not in self._subscribed]
        if new:
            self._bus.subscribe(self.incidents.observe, new)
            self._subscribed.update(new)

    @property
    def options(self) -> Any:
        return self._config.incidents

    def reconfigure(self, config: Config) -> None:
        self._config = config
        self.book.configure(config.models)
        self.incidents.configure(config.incidents, config.models)
        self.incidents.set_replicas(replica_counts(config))
        if self.runbooks is not None:
            self.runbooks.configure(config.runbooks)

    # -- start-up and shutdown -------------------------------------------------------

    def boot(self) -> str | None:
        """Load SLO buckets and incidents from the store (blocking, before serving)."""
        if self.store is None:
            return None
        from failsoft.store import StoreError

        try:
            self._load(merge=False)
            self._take_peers(self._read_peers())
        except StoreError as error:
            return (
                f"the control store is unreachable ({error.message}): SLO budgets and "
                "incidents start empty here and are merged when it answers"
            )
        return None

    def _load(self, *, merge: bool) -> None:
        """Read what the store holds of this gateway's and take it in (blocking)."""
        from failsoft.store.operate_rows import load

        assert self.store is not None
        loaded = load(self.store, self.gateway, self.book.oldest_kept())
        self._take(loaded, merge=merge)

    def _take(self, loaded: Any, *, merge: bool) -> None:
        count = self.book.load(loaded.buckets, merge=merge)
        self.incidents.load(loaded.incidents, loaded.next_id, merge=merge)
        self._loaded = True
        self.saved_ok = True
        log.info(
            "SLO buckets and incidents " + ("merged" if merge else "loaded"),
            extra={"buckets": count, "incidents": len(loaded.incidents)},
        )

    def start(self) -> None:
        """Begin judging and saving (call on the running event loop)."""
        self._subscribe_incidents()
        self._tasks = [asyncio.ensure_future(self._judge_loop())]
        if self.store is not None:
            self._tasks.append(asyncio.ensure_future(self._save_loop()))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self.store is not None:
            await self.save(timeout=CLOSE_WITHIN_S)

    # -- every few seconds ------------------------------------------------------------

    async def _judge_loop(self) -> None:
        while True:
            await self._clock.sleep(self.options.evaluate_every_s)
            self.judge()

    def judge(self) -> None:
        """Burn-rate alerts (which may open incidents), then incident states."""
        self.book.evaluate()
        self.incidents.tick()
        for incident in self.incidents.incidents.values():
            if incident.active:
                self._measure_budget(incident)

    def _measure_budget(self, incident: Incident) -> None:
        allowed = self.book.allowed_bad(incident.model)
        if allowed is not None and allowed > 0:
            incident.budget_burned_pct = round(100.0 * incident.failed / allowed, 3)

    async def _save_loop(self) -> None:
        while True:
            await self._clock.sleep(self.options.persist_every_s)
            # Shielded: a shutdown waits for a save under way (on the lock) instead of
            # cutting it off between taking the changes and writing them.
            if await asyncio.shield(self.save()):
                await self.merge_peers()

    def _read_peers(self) -> tuple[list[Any], float | None, bool]:
        """The other gateways' buckets (blocking): what changed, or all now and then."""
        from failsoft.store.operate_rows import load_peers

        assert self.store is not None
        full = self._peers_seen is None or self.wall() - self._peers_full_at >= PEERS_FULL_EVERY_S
        since = None if full or self._peers_seen is None else self._peers_seen - PEERS_OVERLAP_S
        buckets, seen = load_peers(self.store, self.gateway, self.book.oldest_kept(), since)
        return buckets, seen, full

    def _take_peers(self, read: tuple[list[Any], float | None, bool]) -> None:
        buckets, seen, full = read
        self.book.merge_peers(buckets)
        if seen is not None:
            self._peers_seen = max(seen, self._peers_seen or seen)
        if full:
            # After reading everything, look from about now on, even when no other gateway
            # saved lately (none yet, or only rows from before saves were stamped).
            now = self.wall()
            self._peers_seen = max(self._peers_seen or now, now - PEERS_OVERLAP_S)
            self._peers_full_at = now

    async def merge_peers(self, timeout: float | None = 10.0) -> bool:  # noqa: ASYNC109
        """Read what the other gateways saved into the budgets; False when the store is down
        (the next round reads it)."""
        if self.store is None:
            return False
        from failsoft.store import StoreError

        try:
            read = await store_call(self.store, self._read_peers, timeout=timeout)
        except StoreError:
            return False  # the save beside it says so
        self._take_peers(read)
        return True

    async def save(self, timeout: float | None = 10.0) -> bool:  # noqa: ASYNC109
        """Write what changed; False (and kept for the next time) when the store is down."""
        if self.store is None:
            return False
        from failsoft.store import StoreError
        from failsoft.store.operate_rows import AuditItem, load, save

        async with self._saving:
            if not self._loaded:  # started while the store was down: merge first
                try:
                    loaded = await store_call(
                        self.store,
                        load,
                        self.store,
                        self.gateway,
                        self.book.oldest_kept(),
                        timeout=timeout,
                    )
                except StoreError:
                    self.saved_ok = False
                    return False
                self._take(loaded, merge=True)
            buckets = self.book.changed_buckets()
            dirty = sorted(self.incidents.dirty)
            self.incidents.dirty.clear()
            changed = [self.incidents.incidents[i] for i in dirty if i in self.incidents.incidents]
            audits = list(self.incidents.pending_audits)
            self.incidents.pending_audits.clear()
            items = [AuditItem(i, action, actor, detail) for i, action, actor, detail in audits]
            now = self.wall()
            prune = self.book.oldest_kept() if now - self._pruned_at >= PRUNE_EVERY_S else None
            try:
                await store_call(
                    self.store,
                    save,
                    self.store,
                    self.gateway,
                    buckets,
                    changed,
                    items,
                    prune,
                    now,
                    timeout=timeout,
                )
            except BaseException as error:
                self.book.mark_unsaved(buckets)
                self.incidents.dirty.update(dirty)
                self.incidents.pending_audits.extendleft(reversed(audits))
                if not isinstance(error, StoreError):
                    raise  # cancelled: what was taken is back for the next save
                if self.saved_ok:
                    log.warning(
                        "SLO state and incidents not saved; kept for later",
                        extra={"error": error.message},
                    )
                self.saved_ok = False
                return False
            if prune is not None:
                self._pruned_at = now
        self.saved_ok = True
        return True

    # -- reading ----------------------------------------------------------------------

    def slo_status(self) -> dict[str, Any]:
        return {"slos": self.book.status(), "saved": self.saved_ok}

    def incident_list(self, state: str | None = None) -> dict[str, Any]:
        found = sorted(self.incidents.incidents.values(), key=lambda i: -i.id)
        if state is not None:
            found = [i for i in found if i.state == state]
        return {
            "incidents": [summary(i) for i in found],
            "means": means(found),
        }

    async def incident(self, incident_id: int) -> Incident:
        found = self.incidents.incidents.get(incident_id)
        if found is None and self.store is not None:
            from failsoft.store.operate_rows import read_incident

            found = await store_call(
                self.store, read_incident, self.store, self.gateway, incident_id
            )
        if found is None:
            from failsoft.errors import NotFound

            raise NotFound(f"there is no incident {incident_id}")
        if found.active:
            self._measure_budget(found)
        return found

    # -- /metrics ---------------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        labels = ["model", "tenant", "objective"]
        left = GaugeMetricFamily(
            "failsoft_slo_budget_left",
            "Share of the error budget left over the SLO window (1 = untouched, < 0 = spent).",
            labels=labels,
        )
        burn = GaugeMetricFamily(
            "failsoft_slo_burn_rate",
            "Error budget burn rate over a window (1 = exactly the budget over the SLO window).",
            labels=[*labels, "window"],
        )
        alerts = GaugeMetricFamily(
            "failsoft_slo_alert_firing",
            "1 while a multi-window burn-rate alert fires.",
            labels=[*labels, "rule"],
        )
        for row in self.book.status():
            values = [row["model"], row["tenant"], row["objective"]]
            left.add_metric(values, row["budget_left"])
            for window, rate in row["burn"].items():
                burn.add_metric([*values, window], rate)
            for rule in row["alerts"]:
                alerts.add_metric([*values, rule], 1.0)
        events = CounterMetricFamily(
            "failsoft_slo_events", "Events counted by an SLO (valid requests).", labels=labels
        )
        bad = CounterMetricFamily(
            "failsoft_slo_bad_events", "Events that spent an SLO's error budget.", labels=labels
        )
        for key, total, spent in self.book.counters():
            events.add_metric(list(key), total)
            bad.add_metric(list(key), spent)
        active = GaugeMetricFamily(
            "failsoft_incidents", "Incidents by state.", labels=["model", "state"]
        )
        counts: dict[tuple[str, str], int] = {}
        for incident in self.incidents.incidents.values():
            if incident.active:
                where = (incident.model, incident.state)
                counts[where] = counts.get(where, 0) + 1
        for (model, state), count in sorted(counts.items()):
            active.add_metric([model, state], count)
        yield from (left, burn, alerts, events, bad, active)


def replica_counts(config: Config) -> dict[tuple[str, str], int]:
    """How many replicas each (model, version) runs."""
    counts: dict[tuple[str, str], int] = {}
    for model, options in config.models.items():
        for version, backend in options.versions.items():
            urls = getattr(backend, "urls", None)
            counts[(model, version)] = len(urls) if urls else int(getattr(backend, "replicas", 1))
    return counts


def summary(incident: Incident) -> dict[str, Any]:
    return {
        "id": incident.id,
        "state": incident.state,
        "model": incident.model,
        "cause": incident.cause,
        "title": incident.title,
        "opened_at": incident.opened_at,
        "resolved_at": incident.resolved_at,
        "failed": incident.failed,
        "degraded": incident.degraded,
        "mttd_s": incident.mttd_s,
        "mttm_s": incident.mttm_s,
        "mttr_s": incident.mttr_s,
    }
