"""The xdist scheduler of a distributed replay (imported only under pytest-xdist): the replay items
of partition J form one work unit sent to worker gwJ at the start; other tests are load-balanced
by module as with --dist loadscope."""

from __future__ import annotations

from collections.abc import Callable

from xdist.scheduler import LoadScopeScheduling

from ..distribute import worker_index

_PARTITION = "pytest-replay-partition-"  # the scheduler's scope of the replay items of one partition


class ReplayScheduling(LoadScopeScheduling):
    """LoadScope scheduling where the replay items of partition J form one work unit sent to worker
    gwJ at the start (the worker planned exactly those lanes); other tests are load-balanced by
    module as with --dist loadscope."""

    def __init__(self, config, log, part_of: Callable[[str], int | None],
                 on_lost: Callable[[object, list[str]], None] | None = None) -> None:
        super().__init__(config, log)
        self._part_of = part_of
        self._on_lost = on_lost  # told of a worker that went down with replay items not done
        # LoadScope counts a node's pending tests by walking its whole workload, after every test:
        # with one unit of 50,000 replay items that is quadratic (minutes for 100k items). Counted
        # here instead, as units are assigned and tests complete.
        self._pending: dict[int, int] = {}  # id(assigned_work[node]) -> tests not completed
        self._scopes: dict[str, str] = {}  # node id -> its scope: LoadScope asks after every test

    def _split_scope(self, nodeid: str) -> str:
        scope = self._scopes.get(nodeid)
        if scope is None:
            part = self._part_of(nodeid)
            scope = self._scopes[nodeid] = (f"{_PARTITION}{part}" if part is not None
                                            else super()._split_scope(nodeid))
        return scope

    def _pending_of(self, workload: dict[str, dict[str, bool]]) -> int:
        count = self._pending.get(id(workload))
        return super()._pending_of(workload) if count is None else count

    def _assign_work_unit(self, node) -> None:
        scope, unit = next(iter(self.workqueue.items()))
        super()._assign_work_unit(node)
        self._track(node, sum(not done for done in unit.values()))

    def _track(self, node, added: int) -> None:
        """Keep the count of the node's pending tests after `added` more were assigned to it."""
        workload = self.assigned_work[node]
        if id(workload) in self._pending:
            self._pending[id(workload)] += added
        else:  # first assignment: count everything, the new tests included
            self._pending[id(workload)] = super()._pending_of(workload)

    def mark_test_complete(self, node, item_index: int, duration: float = 0) -> None:
        nodeid = self.registered_collections[node][item_index]
        workload = self.assigned_work[node]
        unit = workload[self._split_scope(nodeid)]
        if not unit[nodeid] and id(workload) in self._pending:
            self._pending[id(workload)] -= 1
        super().mark_test_complete(node, item_index, duration)

    def remove_node(self, node):
        """A worker went down. Its replay partition is not put back in the queue, as LoadScope
        would: that worker's engine held the schedule of those connections, no other worker planned
        them. Its unfinished replay items go to `on_lost`; other tests are rescheduled as usual."""
        workload = self.assigned_work.get(node, {})
        self._pending.pop(id(workload), None)
        lost = []
        for scope in [scope for scope in workload if scope.startswith(_PARTITION)]:
            lost += [nodeid for nodeid, done in workload.pop(scope).items() if not done]
        if lost and self._on_lost is not None:
            self._on_lost(node, lost)
        return super().remove_node(node)

    def schedule(self) -> None:
        if self.collection is not None or not self._check_nodes_have_same_collection():
            return super().schedule()
        super_collection = list(next(iter(self.registered_collections.values())))
        if not super_collection:
            self.collection = super_collection
            return
        replay_units: dict[str, dict[str, bool]] = {}
        for nodeid in super_collection:
            scope = self._split_scope(nodeid)
            units = replay_units if scope.startswith(_PARTITION) else self.workqueue
            units.setdefault(scope, {})[nodeid] = False
        # Hand each worker its own partition first; then let LoadScope share out the rest.
        for node in self.nodes:
            scope = f"{_PARTITION}{worker_index(node.workerinput['workerid'])}"
            unit = replay_units.pop(scope, None)
            self.assigned_work.setdefault(node, {})
            if unit:
                self.assigned_work[node][scope] = unit
                self._track(node, len(unit))
                position = {nodeid: i for i, nodeid in enumerate(self.registered_collections[node])}
                node.send_runtest_some([position[nodeid] for nodeid in unit])
        if replay_units:  # partitions without a worker (cannot happen: one partition per worker)
            raise RuntimeError(f"replay partitions without a worker: {sorted(replay_units)}")
        self.collection = super_collection
        for node in self.nodes:
            if self.workqueue:
                self._reschedule(node)
        if not self.workqueue:  # as LoadScope: a worker stops once its queue is done
            for node in self.nodes:
                node.shutdown()
