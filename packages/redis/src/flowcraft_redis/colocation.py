"""Which Redis components of one backend share a client and key prefix: wired explicitly while it is built.

Components that share one client and key prefix can do more per script: a commit also writes the node's
context updates (``CoordinationStore.applies_context``) and pushes the jobs it fires into a queue on the
same Redis (``CoordinationStore.dispatches``); such a queue's ``receive`` also reads the run record and takes
the lease (``Queue.prefetches_status``). Whether they may is decided here, once, while the backend is assembled,
never by looking anything up while jobs are handled: ``colocate(context, status, coordination, queue)``
wires components built on the same client object and key prefix. The ``rq`` preset's factory
(``flowcraft_rq.backend.build_backend``) does it; components built alone by ``from_config`` (a backend
overriding a component) are never colocated and take no fast path (``Backend.capabilities``).

Each time a member joins, every member's ``colocated(colocation)`` hook re-reads who is there.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from flowcraft.spi import Begin, ContextStore, CoordinationStore, Delivery, Job, Queue, RunRecord, StatusStore
from flowcraft_redis._client import RedisClient

_KINDS: tuple[tuple[str, type[Any]], ...] = (
    ("queue", Queue), ("context", ContextStore), ("status", StatusStore), ("coordination", CoordinationStore))


class Dispatcher(ABC):
    """What a queue on the same Redis gives ``RedisCoordinationStore`` so the commit script pushes the jobs it
    fires into that queue itself. The queue keeps its own storage layout: the commit script only calls the
    queue's Lua.

    ``lua`` is prepended to the commit script (``lua/commit.lua``; and to the start script, ``lua/start.lua``,
    whose ``dispatch`` call hands nothing over) and defines
    ``local function dispatch(fired, run, now, at, k, handed)``, called with the fired jobs (``{index, job JSON,
    due ('' or seconds), job key, spliced}`` each), the run id, the time, where ``args(count, now)`` (what that
    function reads) begins in ARGV and where ``keys`` begin in KEYS. ``handed`` maps the positions in ``fired``
    of the jobs the commit hands straight to its owner (``continues``; empty otherwise) to true: the queue
    puts those in its in-flight set as its ``receive`` would and returns, for each such position, the reply
    list ``delivery`` turns into a ``Delivery`` (its ``record`` is None when the run's status is not on this
    Redis and client: the commit then cannot read it). With ``acks`` it also defines ``local function
    ack_delivery(at, k, acking, finished)``, called by every commit given a receipt: with ``acking`` it acks the
    delivery whose ``ack_args`` begin at ARGV ``at`` (its keys follow ``keys`` in KEYS); without (the commit
    left nothing pending: the delivery stays, to come back if its worker dies before the engine acks it) it
    may keep what it needs for that, ``finished`` being the JSON of the job the commit marked done (nil: it
    marked none)."""

    #: the Lua source defining ``dispatch`` (and ``ack_delivery`` with ``acks``; see the class docstring)
    lua: str
    #: the queue keys ``dispatch`` and ``ack_delivery`` use, passed to the commit script after the run's own
    #: KEYS; all in the run's slot (on a Redis Cluster: those of ``for_run``)
    keys: tuple[str, ...] = ()
    #: ``ack_delivery`` acks a delivery in the commit (the store's ``acks``)
    acks: bool = False
    #: ``dispatch`` can hand fired jobs to the committing owner (the store's ``continues``)
    continues: bool = False
    #: ``dispatch`` pushes every fired job onto the queue (the store's ``dispatches``); False for the in-flight
    #: set of a queue that is not on this Redis (e.g. RabbitMQ): ``dispatch`` then only takes the handed jobs
    #: and the engine enqueues the others; such a dispatcher cannot ack (``acks`` needs ``dispatches``)
    queues: bool = True
    #: a set the queue's key (the first of ``keys``) is added to when a run starts (``CoordinationStore.start``:
    #: rq's set of queues, which ``rq info`` lists); in the run's slot, so None on a Redis Cluster
    registry: str | None = None

    def for_run(self, run_id: str) -> Dispatcher:
        """The dispatcher of a commit of run ``run_id``: this one, or for a queue split into groups (a Redis
        Cluster) the one of the run's group, whose ``keys`` share the run's slot."""
        return self

    @abstractmethod
    def args(self, count: int, now: float) -> list[Any]:
        """The dispatch ARGV for ``count`` fired jobs at time ``now``."""

    def ack_args(self, receipt: Any) -> tuple[list[str], list[Any]] | None:
        """The KEYS (after ``keys``) and ARGV of ``ack_delivery`` for a delivery's receipt; None when the commit
        cannot ack it."""
        return None

    def delivery(self, job: Job, reply: list[Any], owner: str, record: RunRecord | None, begin: Begin) -> Delivery:
        """The delivery of a job handed to ``owner`` (``continues``) from what ``dispatch`` returned for it."""
        raise NotImplementedError


class Colocated:
    """A component that can join a ``Colocation``: it has a ``redis`` client and a ``key_prefix``."""

    redis: RedisClient
    key_prefix: str

    def colocated(self, colocation: Colocation) -> None:
        """Called whenever ``colocation`` gains a member (this one included): adapt to who shares the client
        and key prefix."""

    def commit_dispatcher(self) -> Dispatcher | None:
        """A queue that lets commits push fired jobs into it returns its dispatcher."""
        return None


class Colocation:
    """The components of one backend on one Redis client and key prefix (at most one of each kind)."""

    def __init__(self, client: RedisClient, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self.queue: Colocated | None = None
        self.context: Colocated | None = None
        self.status: Colocated | None = None
        self.coordination: Colocated | None = None

    def accepts(self, component: object) -> bool:
        """Whether ``component`` is a colocatable component on this client and key prefix."""
        return (isinstance(component, Colocated) and component.redis is self.client
                and component.key_prefix == self.prefix)

    def add(self, component: Colocated) -> None:
        if not self.accepts(component):
            raise ValueError(f"{type(component).__name__} does not use this colocation's client and key prefix "
                             f"{self.prefix!r}")
        kind = next((name for name, base in _KINDS if isinstance(component, base)), None)
        if kind is None:
            raise TypeError(f"{type(component).__name__} is not a queue, context, status or coordination store")
        current = getattr(self, kind)
        if current is component:
            return
        if current is not None:
            raise ValueError(f"this colocation already has a {kind} ({type(current).__name__})")
        setattr(self, kind, component)
        for member in self.members():
            member.colocated(self)

    def members(self) -> list[Colocated]:
        return [m for m in (self.queue, self.context, self.status, self.coordination) if m is not None]


def colocate(*components: Colocated) -> Colocation:
    """Wire components built by hand that use one client and key prefix (see the module docstring)::

        context, status = RedisContext(redis, key_prefix="app:"), RedisStatusStore(redis, key_prefix="app:")
        coordination = RedisCoordinationStore(redis, key_prefix="app:")
        colocate(context, status, coordination)      # coordination.applies_context is now True
    """
    if not components:
        raise ValueError("colocate() needs at least one component")
    colocation = Colocation(components[0].redis, components[0].key_prefix)
    for component in components:
        colocation.add(component)
    return colocation
