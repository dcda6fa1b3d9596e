"""The Redis storage layout of Flowcraft: key names, stored formats and the Lua shared by the scripts that
use them. Public: a package that works on the same keys (``flowcraft_rq``) imports these names and nothing
private of ``flowcraft_redis``; changing any of them changes what is on the server (``LAYOUT_VERSION``).

* Keys are ``P .. kind .. ':{' .. run_id .. '}'`` for the prefix ``P`` (``key_prefix``, default
  ``flowcraft:``) and the kinds of ``Keys``: the braces are a Redis Cluster hash tag, so all keys of a run
  live in one slot. Run ids go into keys as-is; nothing is ever parsed out of a key.
* A run's coordination state is one hash, ``P run:{<run id>}`` (``Keys.run``), so a commit reads it with one
  ``HMGET`` and writes it with one ``HSET``. Its fields: ``j<job key>`` the job's state letter
  (``STATE_LETTERS``) followed, for ``p`` pending and ``k`` parked, by the job document; ``c<job key>`` a
  completion as ``token .. ' ' .. json``; ``l<job key>`` a lease as ``expiry .. ' ' .. owner`` (empty once
  dropped; only through the functions of ``LEASE_LUA``); ``a<len(target)> <target><member>`` a join arrival
  (``1``/``0`` arrived/skipped + contribution JSON); ``n<target>`` a counted join's count (``join_count_field``:
  a join of more than ``coordination.COUNTED_JOIN`` members), ``'<recorded> <arrived>'``, the members recorded
  and how many of them arrived, kept by every commit that records one of its members (a join whose members were
  recorded without it, by an older version, gets it from their fields when its next member's commit reads them);
  ``#pending``, ``#parked`` (counts) and ``#activity``.
* Every value is compact JSON (``dumps``) produced by Python; Lua never decodes user values (cjson would lose
  precision and turn ``[]`` into ``{}``): a join's input map is spliced together from the stored strings.
* A run record is a hash of JSON fields (``RECORD_FIELDS``) plus ``status`` as plain text; every status
  transition is published on ``Keys.changes`` (the new status as the message).
* Lua sources are ``lua/<name>.lua`` files of their package (``read_lua``); a script that touches leases is
  ``with_leases(source)``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from importlib.resources import files
from typing import Any

from flowcraft.spi import Completion, JobState, RunRecord
from flowcraft_redis._client import DEFAULT_GROUPS as DEFAULT_GROUPS
from flowcraft_redis._client import DEFAULT_PREFIX as DEFAULT_PREFIX
from flowcraft_redis._client import DEFAULT_TTL as DEFAULT_TTL
from flowcraft_redis._client import Keys as Keys
from flowcraft_redis._client import dumps as dumps
from flowcraft_redis._client import group_tags as group_tags
from flowcraft_redis._client import loads as loads
from flowcraft_redis._client import run_group as run_group
from flowcraft_redis._client import text as text

#: version of this layout (2: one coordination hash per run, hash-tagged keys; 1: a key per kind and run)
LAYOUT_VERSION = 2

#: fields of a run's coordination hash (``Keys.run``) that are not per job
PENDING, PARKED, ACTIVITY = "#pending", "#parked", "#activity"


def job_field(job_key: str) -> str:
    """The field of a job's state (and document) in the run's coordination hash."""
    return "j" + job_key


def completion_field(job_key: str) -> str:
    """The field of a job's completion record in the run's coordination hash."""
    return "c" + job_key


def lease_field(job_key: str) -> str:
    """The field of a job's lease in the run's coordination hash."""
    return "l" + job_key


def join_count_field(target_key: str) -> str:
    """The field of a counted join's count (``'<recorded> <arrived>'``) in the run's coordination hash."""
    return "n" + target_key


#: the letter that starts a job-state value, by job state
STATE_LETTERS: dict[JobState, str] = {"pending": "p", "parked": "k", "done": "d", "skipped": "s"}
_STATES: dict[int, JobState] = {ord(letter): state for state, letter in STATE_LETTERS.items()}

#: run-record fields stored as JSON in the ``P status:<run_id>`` hash (``status`` is stored as plain text,
#: for the Lua compare-and-set)
RECORD_FIELDS = ("run_id", "blueprint_id", "version", "blueprint_hash", "input", "created_at", "updated_at",
                 "errors", "awaiting", "parent")
_RECORD_FIELD_NAMES = {name.encode(): name for name in RECORD_FIELDS}


def parse_state(raw: bytes | None) -> JobState | None:
    """The state of a job-state value (None: no such job)."""
    return None if not raw else _STATES[raw[0]]


def parse_completion(raw: bytes | None) -> Completion | None:
    """A stored completion record (``token json``), None when there is none."""
    if not raw:
        return None
    return Completion.from_dict(loads(raw.split(b" ", 1)[1]))


def record_from_hash(raw: Mapping[bytes, bytes]) -> RunRecord:
    """A run record from its hash (``HGETALL``), decoded with one ``json.loads`` (the values are JSON texts)."""
    parts = [b'"%s":%s' % (k, v) for k, v in raw.items() if k in _RECORD_FIELD_NAMES]
    data: dict[str, Any] = loads(b"{" + b",".join(parts) + b"}")
    data["status"] = text(raw[b"status"])
    return RunRecord.from_dict(data)


def read_lua(package: str, name: str) -> str:
    """The source of ``lua/<name>.lua`` shipped in ``package`` (e.g. ``read_lua("flowcraft_rq", "dequeue")``)."""
    return files(package).joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")


#: Lua functions over leases and run activity (``take_lease``, ``renew_lease``, ``drop_lease``, ``touch_run``):
#: the one definition of how a lease is read and written
LEASE_LUA = read_lua("flowcraft_redis", "lease")


def _lua_units(source: str) -> list[tuple[str | None, str]]:
    """``source`` as its blocks (separated by blank lines), each with the name of the ``local function`` it
    defines (None: a block that defines none)."""
    units: list[tuple[str | None, str]] = []
    for block in source.split("\n\n"):
        found = re.search(r"^local function (\w+)\(", block, re.MULTILINE)
        units.append((found.group(1) if found else None, block + "\n\n"))
    return units


_LEASE_UNITS = _lua_units(LEASE_LUA)


def with_leases(source: str) -> str:
    """A script whose body uses the lease functions: those of ``LEASE_LUA`` that ``source`` calls (and what they
    call) prepended. Each ``local function`` a script defines is a closure made again on every call (~700
    instructions), so the others are left out."""
    used, text = source, ""
    for name, block in reversed(_LEASE_UNITS):  # a function calls only those defined above it
        if name is None or re.search(rf"\b{name}\(", used):
            used += block
            text = block + text
    return text + source


#: drop a lease if its owner holds it; ARGV: prefix, run id, job key, owner; returns 1 if dropped, else 0
DROP_LEASE_LUA = with_leases(read_lua("flowcraft_redis", "drop_lease"))
