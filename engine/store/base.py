"""The store: one interface of job-level operations over runs, steps, agent calls and events.

Every state change appends its event in the same transaction, so the log and
the state never disagree. Writes that belong to one step attempt are fenced by
(lease owner, attempt): a worker that lost its lease cannot record a stale
result; the refusal is counted in the event log instead.

Driver errors never leave an implementation: they become :class:`NotFound`,
:class:`Conflict` or :class:`StoreError`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from engine.core.plan import RunStatus, StepStatus
from engine.errors import Conflict as Conflict
from engine.errors import NotFound as NotFound
from engine.errors import StoreError as StoreError

MAX_INTEGER = 2**63 - 1
"""The largest integer either store keeps (SQLite INTEGER, PostgreSQL BIGINT): an id or
count a request sends beyond it is refused before it reaches a store."""


@dataclass(frozen=True, slots=True)
class NewStep:
    """A step as launched: pending on ``waiting_on`` needs; ``dependents`` are the steps
    that need it. An ``excluded`` step is settled as excluded once its needs settle."""

    id: str
    kind: str
    agent: bool
    position: int
    waiting_on: int
    dependents: tuple[str, ...] = ()
    excluded: bool = False


@dataclass(frozen=True, slots=True)
class NewRun:
    """Everything stored at launch; ``snapshot`` is the flow as launched (JSON text)."""

    id: str
    flow: str
    band: str | None
    model: str
    inputs: Mapping[str, Any]
    snapshot: str
    snapshot_hash: str
    steps: Sequence[NewStep]
    max_parallel: int | None = None
    launched_by: str | None = None
    idempotency_key: str | None = None
    request_hash: str | None = None
    replay_of: str | None = None


@dataclass(frozen=True, slots=True)
class RunRecord:
    id: str
    flow: str
    status: RunStatus
    band: str | None
    model: str
    inputs: dict[str, Any]
    launched_by: str | None
    replay_of: str | None
    unsettled: int
    report: str | None
    error: str | None
    created_at: float
    updated_at: float
    finished_at: float | None
    snapshot_hash: str
    request_hash: str | None = None
    last_event: int = field(default=0, compare=False)
    """The id of the run's last event, as ``get_run`` reads it (0 where a query leaves it
    out): a client that read the run follows its events from there."""


@dataclass(frozen=True, slots=True)
class StepRecord:
    run_id: str
    id: str
    kind: str
    position: int
    status: StepStatus
    attempts: int
    failures: int
    crashes: int
    input: str | None
    output: str | None
    fields: dict[str, str]
    data: Any
    error: str | None
    scripted: bool
    deadline: float | None
    started_at: float | None
    finished_at: float | None


@dataclass(frozen=True, slots=True)
class Claim:
    """A step this worker holds until ``lease_expires``; ``attempt`` fences its writes.
    ``run`` is the run's record when the claim brought it along (it spares a read)."""

    run_id: str
    step_id: str
    kind: str
    attempt: int
    failures: int
    worker: str
    run: RunRecord | None = field(default=None, compare=False, repr=False)
    alone: bool = False
    """The step was lost by its worker and is leased to run alone: its holder takes
    nothing else until it ends (see ``Store.claim``)."""


@dataclass(frozen=True, slots=True)
class StepResult:
    """A step's result; ``call`` is the agent call that produced it, recorded in the same
    transaction (whether or not the result's fence holds: the call was made)."""

    output: str
    fields: Mapping[str, str] = field(default_factory=dict)
    data: Any = None
    input: str | None = None
    scripted: bool = False
    call: AgentCall | None = None


@dataclass(frozen=True, slots=True)
class Settled:
    """A step recorded as settled; ``unsettled`` steps of its run remain. ``claims`` are the
    steps this settlement made ready that were claimed at once (see :class:`Eager`);
    ``ready_left`` says it made others ready that are left for a claim."""

    unsettled: int
    claims: tuple[Claim, ...] = ()
    ready_left: bool = True
    finished: bool = False


@dataclass(frozen=True, slots=True)
class Finish:
    """How a run ends if a settlement settles its last step: the run is finished in the
    same transaction (``finished`` in :class:`Settled`), as :meth:`Store.finish_run` would."""

    status: RunStatus
    report: str | None
    error: str | None

    def payload(self) -> dict[str, Any]:
        """The payload of the run's ending event (``run_completed``, ``run_failed``)."""
        return {"error": self.error} if self.error else {}


@dataclass(frozen=True, slots=True)
class Eager:
    """Claim, in the same transaction, up to ``others`` code steps or gates and up to
    ``agents`` agent steps (within their run's ``max_parallel``) that a settlement makes
    ready, for ``worker``: a chain then costs one transaction per step, and the next agent
    step of a run starts without a wake-up and a claim of its own. The slots are the settled
    step's own and the free ones its worker lent this settlement alone, so results settled
    together add theirs up."""

    worker: str
    lease: float
    others: int
    agents: int = 0


@dataclass(frozen=True, slots=True)
class Decision:
    """An approval or rejection of a gate, by ``by``."""

    approved: bool
    by: str | None
    comment: str
    payload: Mapping[str, Any]
    timed_out: bool = False

    def summary(self) -> dict[str, Any]:
        """The payload of the ``gate_decided`` event."""
        return {
            "approved": self.approved,
            "by": self.by,
            "comment": self.comment,
            "timed_out": self.timed_out,
        }

    def data(self, now: float) -> dict[str, Any]:
        """What the gate's step stores as its data: the summary, the form values, the time."""
        return {
            "approved": self.approved,
            "by": self.by,
            "comment": self.comment,
            "payload": dict(self.payload),
            "at": now,
            "timed_out": self.timed_out,
        }

    @property
    def error(self) -> str:
        """The gate step's error when this decision rejects it."""
        return "rejected" + (f": {self.comment}" if self.comment else "")


@dataclass(frozen=True, slots=True)
class AgentCall:
    run_id: str
    step_id: str
    attempt: int
    sequence: int
    persona: str | None
    prompt: str
    output: str
    backend: str
    scripted: bool
    at: float = 0.0


@dataclass(frozen=True, slots=True)
class Event:
    run_id: str
    id: int
    step_id: str | None
    event: str
    payload: dict[str, Any]
    at: float

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "run_id": self.run_id,
            "step_id": self.step_id,
            "event": self.event,
            "payload": self.payload,
            "at": self.at,
        }


@dataclass(frozen=True, slots=True)
class Capacity:
    """How many steps a claim may take: agent steps and the rest, counted apart."""

    agents: int
    others: int


class Store(ABC):
    """Job-level operations; every method is one transaction."""

    @abstractmethod
    async def open(self) -> None:
        """Connect and apply pending migrations."""

    @abstractmethod
    async def close(self) -> None: ...

    def subscribe(  # noqa: B027
        self, callback: Callable[[str], None], *, work_only: bool = False
    ) -> None:
        """Call ``callback(run_id)`` when another process changes a run (with ``work_only``,
        only when that made steps ready to claim; ``""`` when changes may have been missed).
        A store that cannot tell does nothing: callers poll."""

    # Live frames (token deltas, prompts): passed between processes, never stored

    live_bytes = 0
    """The largest payload :meth:`send_live` takes (0: this store passes none)."""

    async def send_live(self, payloads: list[str]) -> None:  # noqa: B027
        """Hand payloads of live frames to whoever listens (see :meth:`listen_live`), at
        once and at most once: nobody listening is no error. Raises StoreError when they
        could not be sent."""

    def listen_live(self, callback: Callable[[str], None]) -> None:  # noqa: B027
        """Call ``callback(payload)`` with every payload another process sends."""

    # Runs

    @abstractmethod
    async def create_run(self, run: NewRun, now: float) -> tuple[str, bool]:
        """Store a run; with an idempotency key already used, ``(that run, False)``.

        The same key with another request hash is a :class:`Conflict`.
        """

    @abstractmethod
    async def get_run(self, run_id: str) -> RunRecord: ...

    @abstractmethod
    async def get_snapshot(self, run_id: str) -> str: ...

    @abstractmethod
    async def list_runs(
        self,
        *,
        flow: str | None = None,
        status: str | None = None,
        waiting: bool | None = None,
        limit: int = 50,
        before: tuple[float, str] | None = None,
    ) -> list[RunRecord]:
        """Newest first; ``before`` is the (created_at, id) of the last run of a page."""

    @abstractmethod
    async def get_steps(
        self, run_id: str, step_ids: Sequence[str] | None = None
    ) -> list[StepRecord]:
        """Steps in DAG order (all of them, or those named)."""

    @abstractmethod
    async def events(self, run_id: str, after: int = 0, limit: int = 1000) -> list[Event]: ...

    # Scheduling

    @abstractmethod
    async def claim(
        self,
        worker: str,
        now: float,
        lease: float,
        capacity: Capacity,
        max_crashes: int,
        run_id: str | None = None,
        alone: bool = False,
    ) -> list[Claim]:
        """Take ready steps up to ``capacity``, of one run when ``run_id`` is given.

        A step whose lease expired (its worker was lost) is taken over only by a worker
        running nothing else (``alone``), one at a time and with nothing beside it: the
        claim is then that step alone, marked ``alone``. Its crash is counted when the
        lost attempt ran alone too (see ``core.decisions.after_lost_lease``); past
        ``max_crashes`` it is failed (and its run with it) instead of claimed.
        """

    @abstractmethod
    async def lease_owners(self) -> list[str]:
        """The workers holding running steps."""

    @abstractmethod
    async def expire_leases(self, owner: str, now: float) -> None:
        """End every lease of ``owner`` now: it is known to be dead."""

    @abstractmethod
    async def heartbeat(
        self, worker: str, claims: Sequence[Claim], now: float, lease: float
    ) -> set[tuple[str, str]]:
        """Extend the leases still held; returns the (run, step) pairs still held."""

    @abstractmethod
    async def complete_step(
        self,
        claim: Claim,
        result: StepResult,
        now: float,
        eager: Eager | None = None,
        finish: Finish | None = None,
    ) -> Settled | None:
        """Record a result; None (and a ``stale_result_refused`` event) if the lease is lost."""

    @abstractmethod
    async def skip_step(
        self,
        claim: Claim,
        reason: str,
        now: float,
        eager: Eager | None = None,
        finish: Finish | None = None,
    ) -> Settled | None:
        """Settle a step whose `when` is false without running it."""

    @abstractmethod
    async def fail_attempt(
        self, claim: Claim, error: str, retry_at: float | None, now: float
    ) -> bool:
        """Retry at ``retry_at``, or (None) fail the step, the run, and cancel the rest."""

    @abstractmethod
    async def release(self, claims: Sequence[Claim], now: float) -> None:
        """Hand claimed steps back untouched (graceful shutdown): pending, attempt not counted."""

    @abstractmethod
    async def wait_for_gate(
        self, claim: Claim, message: str, deadline: float | None, now: float
    ) -> bool: ...

    @abstractmethod
    async def decide_gate(
        self,
        run_id: str,
        step_id: str,
        decision: Decision,
        settle: bool,
        now: float,
    ) -> StepRecord:
        """Decide a waiting gate (compare-and-set). ``settle`` completes the step; otherwise it
        fails, with its run. :class:`Conflict` when the gate is not waiting."""

    @abstractmethod
    async def expired_gates(self, now: float) -> list[tuple[str, str]]: ...

    @abstractmethod
    async def waiting_steps(self, run_id: str) -> list[str]:
        """The run's steps waiting for a decision, in DAG order (without reading the rest)."""

    @abstractmethod
    async def cancel_run(self, run_id: str, now: float) -> RunRecord: ...

    @abstractmethod
    async def retry_run(self, run_id: str, resets: Mapping[str, int], now: float) -> RunRecord:
        """Put a failed or cancelled run back to running; ``resets`` maps step to waiting_on."""

    @abstractmethod
    async def finish_run(
        self, run_id: str, status: RunStatus, report: str | None, error: str | None, now: float
    ) -> bool:
        """Mark a running run whose steps have all settled as finished; False if it was not."""

    @abstractmethod
    async def runs_to_finish(self) -> list[str]:
        """Running runs with every step settled (their report is still to render)."""

    @abstractmethod
    async def has_work(self, now: float, run_id: str | None = None) -> bool:
        """Whether anything could be claimed now or later (of one run when ``run_id`` is
        given), gates waiting excluded."""

    @abstractmethod
    async def has_lost(self, now: float, run_id: str | None = None) -> bool:
        """Whether a step lost by its worker (lease expired) waits to be taken over alone."""

    # Agent calls

    @abstractmethod
    async def record_agent_call(self, call: AgentCall) -> None: ...

    @abstractmethod
    async def agent_calls(self, run_id: str, step_id: str | None = None) -> list[AgentCall]:
        """Recorded calls, by step, attempt and sequence."""

    @abstractmethod
    async def refuse_stale(self, claim: Claim, now: float, seen: str | None) -> bool:
        """Note that ``claim``'s result will never be written (``seen`` says how the worker
        found its lease lost): a ``stale_result_refused`` event while the run goes on;
        nothing once it has ended, whose log ends with its ending event. Whether noted."""
