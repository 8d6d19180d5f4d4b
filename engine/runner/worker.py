"""The worker: claims ready steps with leases, executes them, records what happened.

One loop: finish runs whose steps all settled (render the report), decide
gates whose timeout passed, claim what is ready up to the worker's capacity,
then sleep until a step finishes or the poll interval passes. A heartbeat task
extends the leases of running steps and cancels any step this worker no longer
holds (its run was cancelled, or another worker took it over).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from engine.agents import Backend, ReplayBackend
from engine.config import Project
from engine.core.decisions import GiveUp, after_failure
from engine.core.plan import SETTLED, RunStatus, StepStatus
from engine.errors import Conflict, StoreError
from engine.model.documents import ApprovalStep
from engine.runner.execute import AttemptFailed, Done, Executor, Publish, Skip, StepFailed, Wait
from engine.runner.live import Sender
from engine.runner.render import Renderer, RenderError, StepView
from engine.runner.snapshot import CompiledFlow, Snapshot
from engine.runner.state import RunState
from engine.store.base import Capacity, Claim, Decision, Eager, Finish, RunRecord, Store

log = logging.getLogger("flowrunner.worker")

HEARTBEAT_SECONDS = 0.25
"""How often running steps are checked: a cancelled run stops well within a second."""

REAP_SECONDS = 5.0
"""How often leases held by dead workers on this host are looked for."""


def new_worker_id() -> str:
    """``host:pid:random``: unique, and tells which process held a lease."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Worker:
    """Executes the steps of every run in a store (or of one run)."""

    def __init__(
        self,
        store: Store,
        project: Project,
        backend: Backend,
        *,
        run_id: str | None = None,
        clock: Callable[[], float] = time.time,
        worker_id: str | None = None,
    ) -> None:
        self.store = store
        self.project = project
        self.settings = project.settings
        self.backend = backend
        self.run_id = run_id
        self.clock = clock
        self.id = worker_id or new_worker_id()
        self.subscribers: list[Publish] = []
        self.live = Sender(store, self.id)
        """Sends the live frames to ``serve`` processes (its own ``serve`` skips them)."""
        self.threads = ThreadPoolExecutor(self.settings.max_code, thread_name_prefix="fr-code")
        self.executor = Executor(
            store,
            project,
            Renderer(self.settings.max_render_bytes, self.settings.render_timeout),
            self.threads,
            clock,
            self.publish,
        )
        self.states: dict[str, RunState] = {}
        self.compiled: dict[str, CompiledFlow] = {}
        self.replays: dict[str, Backend] = {}
        self.active: dict[tuple[str, str], tuple[Claim, asyncio.Task[None]]] = {}
        self.lent = Capacity(0, 0)
        """Free slots lent to the claim or the settlements in flight, which may fill them:
        two of them must not both count a free slot, or the worker runs more steps than its
        limits."""
        self.saturated = True
        """The last claim may have left work (it took all it had room for)."""
        self.starved = False
        """The last claim had less room for slots lent out at the time."""
        self.draining = False
        """A step lost by a dead worker waits for a worker running nothing else: take no new
        work until this one is idle (see Store.claim)."""
        self.writing: set[tuple[str, str]] = set()
        """Claims whose outcome is being written: the store's fence decides, not a heartbeat."""
        self.wake = asyncio.Event()
        self.stopping = asyncio.Event()

    def publish(self, frame: dict[str, Any]) -> None:
        """A live frame (a prompt, token deltas, a change): passed to subscribers and to
        other processes, never stored."""
        for subscriber in self.subscribers:
            subscriber(frame)
        self.live.send(frame)

    async def run(
        self,
        *,
        until_idle: bool = False,
        until: Callable[[], Awaitable[bool]] | None = None,
        grace: float = 10.0,
    ) -> None:
        """Work until stopped, idle (``until_idle``), or ``until()`` says so."""
        self.store.subscribe(lambda run_id: self.wake.set(), work_only=True)  # work elsewhere
        heartbeat = asyncio.create_task(self._heartbeat())
        reaped_at = swept_at = 0.0
        try:
            while not self.stopping.is_set():
                now = self.clock()
                try:
                    if now - reaped_at >= REAP_SECONDS:
                        await self._reap_dead_owners(now)
                        reaped_at = now
                    if now - swept_at >= self.settings.poll_seconds:
                        await self._finish_runs(now)
                        await self._expire_gates(now)
                        self.draining = await self.store.has_lost(now, self.run_id)
                        swept_at = now
                    # Cleared before the claim, not before the sleep: a step that ends while
                    # the claim is in flight sets it, and the sleep below must not miss that.
                    self.wake.clear()
                    claimed = await self._claim(now)
                    if until is not None and await until():
                        break
                    idle = not self.active and not claimed
                    if until_idle and idle and not await self.store.has_work(now, self.run_id):
                        break
                except StoreError as exc:  # the store retried already: back off, never crash
                    log.warning("the store is unavailable; backing off: %s", exc)
                    claimed = False
                if not claimed:
                    await self._sleep()
        finally:
            await self._shutdown(grace)
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            await self.live.close()
            self.threads.shutdown(wait=False, cancel_futures=True)

    def stop(self) -> None:
        """Stop claiming; running steps get the grace period, then are handed back."""
        self.stopping.set()
        self.wake.set()

    async def _sleep(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wake.wait(), self.settings.poll_seconds)

    async def _shutdown(self, grace: float) -> None:
        tasks = [task for _, task in self.active.values()]
        if tasks:
            log.info("stopping: %d running step(s) get up to %gs to finish", len(tasks), grace)
            await asyncio.wait(tasks, timeout=grace)
        leftover = [claim for claim, task in self.active.values() if not task.done()]
        for _, task in self.active.values():
            task.cancel()
        if leftover:
            names = ", ".join(f"{claim.run_id}/{claim.step_id}" for claim in leftover)
            log.info("handing back %d step(s) for another worker: %s", len(leftover), names)
            with contextlib.suppress(StoreError):
                await self.store.release(leftover, self.clock())

    async def _reap_dead_owners(self, now: float) -> None:
        """End at once the leases of workers on this host whose process is gone.

        A crashed worker's steps would otherwise wait for their lease to expire;
        on one machine we can tell it is dead (its pid no longer exists). Other
        hosts' workers are left to their leases.
        """
        host = socket.gethostname()
        for owner in await self.store.lease_owners():
            owner_host, _, rest = owner.partition(":")
            pid = rest.partition(":")[0]
            if owner_host == host and pid.isdigit() and not _alive(int(pid)):
                log.info("taking over the steps of dead worker %s", owner)
                await self.store.expire_leases(owner, now)

    # Claiming and executing

    def _free(self) -> Capacity:
        """Slots neither running a step (or writing its outcome) nor lent out; none while
        a step runs alone, or while the worker drains to take over a lost step alone."""
        agents = alone = 0
        for claim, _ in self.active.values():
            agents += claim.kind == "agent"
            alone += claim.alone
        if alone or (self.draining and self.active):
            return Capacity(0, 0)
        others = len(self.active) - agents
        return Capacity(
            max(self.settings.max_agents - agents - self.lent.agents, 0),
            max(self.settings.max_code - others - self.lent.others, 0),
        )

    @contextlib.contextmanager
    def _lending(self, slots: Capacity) -> Iterator[None]:
        """Lend ``slots`` to a store call in flight; the steps it takes start (and hold
        their slots) before the loan ends, with no await in between."""
        self.lent = Capacity(self.lent.agents + slots.agents, self.lent.others + slots.others)
        try:
            yield
        finally:
            self.lent = Capacity(self.lent.agents - slots.agents, self.lent.others - slots.others)

    async def _claim(self, now: float) -> bool:
        capacity = self._free()
        self.starved = self.lent != Capacity(0, 0)
        if capacity.agents == capacity.others == 0:  # full: a slot that frees wakes the loop
            self.saturated = True
            return False
        alone = not self.active and self.lent == Capacity(0, 0)
        with self._lending(capacity):
            claims = await self.store.claim(
                self.id,
                now,
                self.settings.lease_seconds,
                capacity,
                self.settings.max_crashes,
                self.run_id,
                alone=alone,
            )
            agents = sum(claim.kind == "agent" for claim in claims)
            others = len(claims) - agents
            self.saturated = agents >= capacity.agents or others >= capacity.others
            for claim in claims:
                self._start(claim)
        return bool(claims)

    def _start(self, claim: Claim) -> None:
        if _key(claim) in self.active:  # a claim the store handed back again (adopted)
            return
        task = asyncio.create_task(self._execute(claim))
        self.active[_key(claim)] = (claim, task)

    async def _execute(self, claim: Claim) -> None:
        wake, freed = True, True
        try:
            state = await self._state(claim.run_id, claim.run)
            await self._ensure_views(state, state.needed(claim.step_id))
            step = state.plan[claim.step_id]
            loop = asyncio.get_running_loop()

            def load(step_ids: list[str]) -> None:
                asyncio.run_coroutine_threadsafe(self._ensure_views(state, step_ids), loop).result()

            try:
                async with asyncio.timeout(step.timeout):
                    outcome = await self.executor.run(state, claim, self._backend_for(state), load)
            except TimeoutError:
                raise AttemptFailed(f"timed out after {step.timeout:g}s") from None
            await self.live.flush()  # the deltas reach serve before the step's end event
            wake, freed = await self._record(state, claim, outcome)
        except AttemptFailed as exc:
            await self.live.flush()
            await self._failed(claim, exc.message, retryable=True, asked=exc.retry_after)
        except StepFailed as exc:
            await self._failed(claim, exc.message, retryable=False)
        except asyncio.CancelledError:
            pass  # the run was cancelled, another worker took the step, or we are stopping
        except StoreError as exc:
            log.warning("store error on %s/%s; its lease will expire: %s", *_key(claim), exc)
        except Exception as exc:  # an engine bug must not hang the run: fail the attempt
            log.exception("internal error running %s/%s", *_key(claim))
            await self._failed(claim, f"internal error: {type(exc).__name__}: {exc}", True)
        finally:
            self.active.pop(_key(claim), None)
            self.writing.discard(_key(claim))
            # Look for work when the settlement left some, or when the last claim was full
            # and a slot is free now (not when the settlement's eager claims filled them).
            if wake or (self.saturated and freed):
                self.wake.set()
            self.publish({"run_id": claim.run_id, "step_id": claim.step_id, "event": "changed"})

    async def _record(
        self, state: RunState, claim: Claim, outcome: Done | Skip | Wait
    ) -> tuple[bool, bool]:
        """Write an attempt's outcome. Returns whether the claim loop should look for work
        now (a settlement that left nothing ready and did not end its run gave it none), and
        whether a slot is left free (the settlement's eager claims did not fill this step's
        slot and the free slots lent to it)."""
        self.writing.add(_key(claim))
        now = self.clock()
        if isinstance(outcome, Wait):
            await self.store.wait_for_gate(claim, outcome.message, outcome.deadline, now)
            return True, True
        if isinstance(outcome, Done):
            result = outcome.result
            view = StepView("completed", result.output, dict(result.fields), result.data, False)
        else:
            view = StepView("skipped", "", {}, None, True)
        finish = await self._finish_ahead(state, claim.step_id, view)
        # The eager claims may fill this step's slot and the free ones, lent to them.
        agent = claim.kind == "agent"
        if self.stopping.is_set():  # a worker that is stopping claims nothing new
            lent = room = Capacity(0, 0)
        else:
            lent = self._free()
            room = Capacity(lent.agents + agent, lent.others + (not agent))
        eager = Eager(self.id, self.settings.lease_seconds, room.others, room.agents)
        with self._lending(lent):
            if isinstance(outcome, Done):
                settled = await self.store.complete_step(claim, outcome.result, now, eager, finish)
            else:
                settled = await self.store.skip_step(claim, outcome.reason, now, eager, finish)
            if settled is not None:
                for taken in settled.claims:
                    self._start(taken)
        if settled is None:
            return True, True
        state.add_view(claim.step_id, view)
        # A slot is free now if no eager claim of this step's kind took its slot, or if
        # lent slots came back unused while a claim had gone short of them.
        agents = sum(c.kind == "agent" for c in settled.claims)
        refilled = agents > 0 if agent else len(settled.claims) > agents
        spare = agents < room.agents or len(settled.claims) - agents < room.others
        freed = not refilled or (self.starved and spare)
        if settled.unsettled == 0:
            if settled.finished:
                self.states.pop(claim.run_id, None)
            else:
                await self._finish_run(claim.run_id, self.clock())
            return True, freed
        return settled.ready_left, freed

    async def _finish_ahead(self, state: RunState, step_id: str, view: StepView) -> Finish | None:
        """How the run ends, when this step looks like its last (see RunState.ends_with):
        the settlement then finishes the run in the same transaction, if it is."""
        if not state.ends_with(step_id):
            return None
        if state.compiled.flow.report is not None:  # it may read any step
            await self._ensure_views(state, [s for s in state.plan.steps if s != step_id])
        return await self._ending(state, {**state.views, step_id: view})

    async def _failed(self, claim: Claim, error: str, retryable: bool, asked: float = 0.0) -> None:
        self.writing.add(_key(claim))
        now = self.clock()
        retry_at: float | None = None
        if retryable:
            state = await self._state(claim.run_id)
            step = state.plan[claim.step_id]
            decision = after_failure(step, claim.failures + 1, now, error, asked)
            if isinstance(decision, GiveUp):
                error = decision.reason
            else:
                retry_at = decision.at
        with contextlib.suppress(StoreError):
            await self.store.fail_attempt(claim, error, retry_at, now)

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            claims = [claim for claim, _ in self.active.values()]
            if not claims:
                continue
            try:
                held = await self.store.heartbeat(
                    self.id, claims, self.clock(), self.settings.lease_seconds
                )
            except StoreError as exc:
                log.warning("heartbeat failed: %s", exc)
                continue
            for claim in claims:
                key = _key(claim)
                if key not in held and key in self.active and key not in self.writing:
                    self.active[key][1].cancel()
                    await self._count_lost(claim)

    async def _count_lost(self, claim: Claim) -> None:
        """A claim found lost by a heartbeat: unless the step was cancelled (with its run),
        another worker took it over while this one was paused or cut off. Its result
        will never be written; count that as a refused stale result."""
        with contextlib.suppress(StoreError):
            (step,) = await self.store.get_steps(claim.run_id, [claim.step_id])
            if step.status is not StepStatus.CANCELLED:
                await self.store.refuse_stale(claim, self.clock(), "heartbeat")

    # Runs

    async def _state(self, run_id: str, record: RunRecord | None = None) -> RunState:
        """The run as this worker keeps it; ``record`` (if the claim brought it) spares a read."""
        state = self.states.get(run_id)
        if state is None:
            if record is None:
                record = await self.store.get_run(run_id)
            compiled = self.compiled.get(record.snapshot_hash)
            if compiled is None:
                snapshot = Snapshot.from_json(await self.store.get_snapshot(run_id))
                compiled = self.compiled[record.snapshot_hash] = CompiledFlow.load(snapshot)
            if record.replay_of is not None:
                await self.prepare_replay(record.replay_of)
            state = self.states[run_id] = RunState(record, compiled)
        return state

    async def _ensure_views(self, state: RunState, step_ids: list[str]) -> None:
        missing = [step_id for step_id in step_ids if step_id not in state.views]
        if missing:
            for record in await self.store.get_steps(state.record.id, missing):
                if record.status in SETTLED:
                    state.add_view(record.id, StepView.of(record))

    def _backend_for(self, state: RunState) -> Backend:
        source = state.record.replay_of
        if source is None:
            return self.backend
        return self.replays[source]

    async def prepare_replay(self, source_run: str) -> None:
        """Load the recorded agent calls a replayed run answers from."""
        if source_run in self.replays:
            return
        latest: dict[tuple[str, int], tuple[int, str, bool]] = {}
        for call in await self.store.agent_calls(source_run):
            key = (call.step_id, call.sequence)
            if key not in latest or call.attempt >= latest[key][0]:
                latest[key] = (call.attempt, call.output, call.scripted)
        calls = {key: (output, scripted) for key, (_, output, scripted) in latest.items()}
        self.replays[source_run] = ReplayBackend(calls, source_run)

    async def _finish_runs(self, now: float) -> None:
        """Finish runs whose last step settled elsewhere (a gate decided by another process)."""
        for run_id in await self.store.runs_to_finish():
            if self.run_id is None or run_id == self.run_id:
                await self._finish_run(run_id, now)

    async def _finish_run(self, run_id: str, now: float) -> None:
        """Render the report of a run whose steps all settled, and mark it finished. The
        steps this worker settled are known already: only the others are read."""
        state = await self._state(run_id)
        await self._ensure_views(state, list(state.plan.steps))
        ending = await self._ending(state, state.views)
        await self.store.finish_run(run_id, ending.status, ending.report, ending.error, now)
        self.states.pop(run_id, None)

    async def _ending(self, state: RunState, views: dict[str, StepView]) -> Finish:
        """The run's report from its steps' views, or the error rendering it."""
        try:
            return Finish(RunStatus.COMPLETED, await self._report(state, views), None)
        except RenderError as exc:
            return Finish(RunStatus.FAILED, None, exc.message)

    async def _report(self, state: RunState, views: dict[str, StepView]) -> str:
        flow, renderer = state.compiled.flow, self.executor.renderer
        if flow.report is not None:
            return await renderer.run(renderer.render, flow.report, state.names(views), "report")
        steps = state.plan.steps  # in execution order
        sinks = [
            (step_id, views[step_id].output)
            for step_id, step in steps.items()
            if not step.dependents and step_id in views and views[step_id].output
        ]
        return "\n\n".join(f"## {step_id}\n\n{output}" for step_id, output in sinks)

    async def _expire_gates(self, now: float) -> None:
        for run_id, step_id in await self.store.expired_gates(now):
            if self.run_id is not None and run_id != self.run_id:
                continue
            state = await self._state(run_id)
            gate = state.compiled.steps[step_id]
            assert isinstance(gate, ApprovalStep)
            approved = gate.on_timeout == "approve"
            payload = {name: spec.default for name, spec in gate.form.items() if not spec.required}
            decision = Decision(approved, None, "timed out", payload, timed_out=True)
            settle = approved or gate.on_reject == "continue"
            with contextlib.suppress(Conflict):
                await self.store.decide_gate(run_id, step_id, decision, settle, now)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _key(claim: Claim) -> tuple[str, str]:
    return claim.run_id, claim.step_id
