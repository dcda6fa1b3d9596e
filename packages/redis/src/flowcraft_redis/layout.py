"""The Redis storage layout of Flowcraft: key names, stored formats and the Lua shared by the scripts that
use them. Public: a package that works on the same keys (``flowcraft_rq``) imports these names and nothing
private of ``flowcraft_redis``; changing any of them changes what is on the server, so existing data must
stay readable.

* Keys are ``P .. kind .. ':' .. run_id`` for the prefix ``P`` (``key_prefix``, default ``flowcraft:``) and the
  kinds of ``Keys``; join arrivals live in ``P .. 'arr:' .. #run_id .. ':' .. run_id .. ':' .. target_key``
  (byte length first, so unambiguous). Run ids go into keys as-is; nothing is ever parsed out of a key.
* Every value is compact JSON (``dumps``) produced by Python; Lua never decodes user values (cjson would lose
  precision and turn ``[]`` into ``{}``): a join's input map is spliced together from the stored strings.
* The jobs hash maps a job key to its state letter (``STATE_LETTERS``) followed, for ``p`` pending and ``k``
  parked, by the job document; a completion is stored as ``token .. ' ' .. json``; a lease as
  ``expiry .. ' ' .. owner`` (only through the functions of ``LEASE_LUA``); a run record as a hash of JSON
  fields (``RECORD_FIELDS``) plus ``status`` as plain text.
* Lua sources are ``lua/<name>.lua`` files of their package (``read_lua``); a script that touches leases is
  ``with_leases(source)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib.resources import files
from typing import Any

from flowcraft.spi import Completion, JobState, RunRecord
from flowcraft_redis._client import DEFAULT_PREFIX as DEFAULT_PREFIX
from flowcraft_redis._client import DEFAULT_TTL as DEFAULT_TTL
from flowcraft_redis._client import Keys as Keys
from flowcraft_redis._client import dumps as dumps
from flowcraft_redis._client import loads as loads
from flowcraft_redis._client import text as text

#: the letter that starts a jobs-hash value, by job state
STATE_LETTERS: dict[JobState, str] = {"pending": "p", "parked": "k", "done": "d", "skipped": "s"}
_STATES: dict[int, JobState] = {ord(letter): state for state, letter in STATE_LETTERS.items()}

#: run-record fields stored as JSON in the ``P status:<run_id>`` hash (``status`` is stored as plain text,
#: for the Lua compare-and-set)
RECORD_FIELDS = ("run_id", "blueprint_id", "version", "blueprint_hash", "input", "created_at", "updated_at",
                 "errors", "awaiting", "parent")
_RECORD_FIELD_NAMES = {name.encode(): name for name in RECORD_FIELDS}


def parse_state(raw: bytes | None) -> JobState | None:
    """The state of a jobs-hash value (None: no such job)."""
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


def with_leases(source: str) -> str:
    """A script whose body uses the lease functions: ``LEASE_LUA`` prepended."""
    return LEASE_LUA + source


#: drop a lease if its owner holds it; ARGV: prefix, run id, job key, owner; returns 1 if dropped, else 0
DROP_LEASE_LUA = with_leases(read_lua("flowcraft_redis", "drop_lease"))
