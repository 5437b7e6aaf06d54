"""The units' book: where sharding puts every unit, who holds it now, and the handoffs in between.

The target placement comes from ``engine.sharding.place`` (sticky to the one in force, kept in
SQLite so a restarted scheduler moves nothing). A unit's route names its target owner and the
workers that still hold it: the owner takes the unit only once they have drained and released it
(drain-first handoff), so no record is handled by two workers at once.

Moves go a half of the partitions at a time (``phase``): a unit to move away from the worker serving
it waits while half the partitions have units in motion, so every pipeline keeps partitions whose
whole path (its own unit and its steps' model-gateway units) is served where it is, and the pipeline
gateways write new calls there (``engine/node.py``) instead of into a handover. A partition's turn
is announced ``ANNOUNCE_S`` before its units move (their routes say ``soon``): new calls leave it
first, and the calls in flight there finish before the handover instead of waiting for it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

from headrace.engine.scheduler.store import Store
from headrace.engine.sharding import MODEL_GATEWAY, PIPELINE, ShardingConfig, Unit, place
from headrace.gateway.control import Handover, UnitRoute

log = logging.getLogger("headrace.scheduler")

ACTIVE = "active"
DRAINING = "draining"
#: How long a partition's turn to move is announced before its units move: longer than a call takes
#: (a 2-step pipeline's p99 is 20-40 ms on two busy cores), so the calls written there before the
#: workers saw the announcement are answered where they are. Calls in flight on a moving partition
#: waited for its handover (drain, then take: 100-200 ms) and were the slowest at a rebalance.
ANNOUNCE_S = 0.1


class UnitBook:
    def __init__(self, store: Store, config: ShardingConfig) -> None:
        self._store = store
        self.config = config
        self.target: dict[Unit, str] = {}
        for text, worker in store.units().items():
            try:
                self.target[Unit.parse(text)] = worker
            except ValueError:
                log.warning("stored unit %r cannot be read, dropping it", text)
        self.moves = 0  # units whose target owner changed since start (for status and benchmarks)
        # partitions whose units may move now (at most half of them, see the module's docstring)
        self.phase: set[int] = set()
        self.deferred = 0  # units waiting for their partition's turn to move (for status)
        self.announced: dict[int, float] = {}  # partition -> when its turn to move was announced
        self.due: float | None = None  # when the earliest announced partition's units move

    def replan(self, workers: Iterable[str], pipelines: Iterable[str], slots: Iterable[int]) -> bool:
        """Place every unit of these pipelines and model-gateway slots on these workers (sticky to the
        placement in force); True when any unit's target changed. With no worker to place on, the
        placement in force stays (a cluster restarting, or every worker stopping)."""
        pool = sorted(set(workers))
        if not pool:
            return False
        resources = [(PIPELINE, p) for p in pipelines] + [(MODEL_GATEWAY, str(s)) for s in slots]
        new = place(pool, resources, self.config, previous=self.target)
        if new == self.target:
            return False
        self.moves += sum(1 for unit, worker in new.items() if self.target.get(unit, worker) != worker)
        self.target = new
        self._store.put_units({str(u): w for u, w in new.items()})
        return True

    def set_config(self, config: ShardingConfig) -> None:
        self.config = config

    def routes(
        self,
        held: Mapping[str, Mapping[str, str]],
        released: Mapping[str, Mapping[str, Handover]] | None = None,
        leaving: frozenset[str] = frozenset(),
        now: float | None = None,
    ) -> dict[str, UnitRoute]:
        """Each unit's route, given what live workers hold (worker -> unit -> state) and what they
        handed over (worker -> unit -> handover). A worker holding a unit it is not the target of is
        waited for; a unit held by nobody else goes to its owner, with where to start and the records
        to handle again. Of two handovers of one unit (it moved again before its owner took it up),
        the later offsets win, and the records to handle again are the later handover's: its holder
        handled the earlier one's, except those it lists again. A unit whose partition's turn to move
        has not come stays with the worker serving it (``_deferred``), and so does one whose turn was
        announced less than ANNOUNCE_S before ``now`` (its route says ``soon``; without ``now`` turns
        are not announced); a leaving worker's units all take their turn at once."""
        holders: dict[str, list[str]] = {}
        for worker, units in held.items():
            for unit in units:
                holders.setdefault(unit, []).append(worker)
        deferred = self._deferred(holders, held, released or {}, leaving, now)
        starts: dict[str, dict[tuple[str, int], int]] = {}
        replays: dict[str, tuple[int, set[tuple[str, int, int]]]] = {}
        for handed in (released or {}).values():
            for unit, handover in handed.items():
                mine = starts.setdefault(unit, {})
                for topic, partition, offset in handover.starts:
                    mine[(topic, partition)] = max(offset, mine.get((topic, partition), -1))
                records = {(str(a), int(b), int(c)) for a, b, c in handover.replay}
                generation, known = replays.get(unit, (-1, set()))
                if handover.generation > generation:
                    replays[unit] = (handover.generation, records)
                elif handover.generation == generation:
                    known |= records
        out: dict[str, UnitRoute] = {}
        for target, owner in sorted(self.target.items()):
            key = str(target)
            if key in deferred:
                holder, soon = deferred[key]
                out[key] = UnitRoute(owner=holder, active=True, soon=soon)
                continue
            waiting = sorted(w for w in holders.get(key, ()) if w != owner)
            active = held.get(owner, {}).get(key) == ACTIVE and not waiting
            if active or key not in starts:
                out[key] = UnitRoute(owner=owner, waiting=waiting, active=active)
                continue
            out[key] = UnitRoute(
                owner=owner,
                waiting=waiting,
                starts=sorted((t, p, o) for (t, p), o in starts[key].items()),
                replay=sorted(replays[key][1]),
                generation=replays[key][0],
            )
        return out

    def _deferred(
        self,
        holders: Mapping[str, list[str]],
        held: Mapping[str, Mapping[str, str]],
        released: Mapping[str, Mapping[str, Handover]],
        leaving: frozenset[str],
        now: float | None = None,
    ) -> dict[str, tuple[str, bool]]:
        """Units that stay, for now, with the one worker serving them (unit -> that worker, and
        whether their turn to move was announced).

        A partition is in motion while a unit of it is draining, released and not yet served by its
        owner, or taken by its owner while another worker still holds it; such moves go on. A unit
        served by one worker that is not its owner is movable: it moves when its partition is in
        ``phase``, which keeps the partitions in motion and is topped up with movable ones, lowest
        first, while fewer than half the partitions are in it (a leaving worker's join it at once).
        So a change moving units of at most half the partitions goes at once (a worker joining or
        leaving: partition affinity gives it the same partitions of every resource), one moving units
        of every partition (a multiplier change) by halves. With ``now``, a partition added to the
        phase is announced first: its movable units stay for ANNOUNCE_S more (``due`` says until
        when)."""
        handed = {unit for units in released.values() for unit in units}
        movable: dict[str, tuple[int, str]] = {}
        moving: set[int] = set()
        urgent: set[int] = set()  # partitions with units of a leaving worker: their turn is now
        for unit, owner in self.target.items():
            key = str(unit)
            others = [w for w in holders.get(key, ()) if w != owner]
            if not others:
                if key in handed and held.get(owner, {}).get(key) != ACTIVE:
                    moving.add(unit.partition)
                continue
            holder = others[0]
            if (
                len(others) == 1
                and owner not in holders.get(key, ())
                and key not in handed
                and held[holder][key] == ACTIVE
            ):
                movable[key] = (unit.partition, holder)
                if holder in leaving:
                    urgent.add(unit.partition)
            else:
                moving.add(unit.partition)
        waiting = {p for p, _ in movable.values()}
        self.phase = (self.phase & (waiting | moving)) | moving
        cap = max(1, self.config.partitions // 2)
        for partition in sorted(urgent - self.phase) + sorted(waiting - self.phase - urgent):
            if len(self.phase) >= cap and partition not in urgent:
                break
            self.phase.add(partition)
            if now is not None:
                self.announced[partition] = now
        self.announced = {p: at for p, at in self.announced.items() if p in self.phase}
        due = {p: at + ANNOUNCE_S for p, at in self.announced.items()}
        quiet = {p: at for p, at in due.items() if now is not None and now < at}
        self.due = min(quiet.values(), default=None)
        out = {
            key: (holder, p in quiet)
            for key, (p, holder) in movable.items()
            if p not in self.phase or p in quiet
        }
        self.deferred = len(out)
        return out

    def units_of(self, kind: str, name: str) -> dict[int, str]:
        """partition -> target worker of one resource."""
        return {u.partition: w for u, w in self.target.items() if u.kind == kind and u.name == name}
