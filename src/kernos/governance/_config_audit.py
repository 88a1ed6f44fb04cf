"""Config changes in the audit log: ``kernos worker`` and ``kernos serve`` record the
kernos.toml they start with whenever it differs from the one last recorded.

kernos.toml decides what governs runs (policy rules, budgets, redaction, providers), and it is
read once, when a process starts. So the moment a change takes effect is a start, and that is
where it is audited: the file's sha256 is compared with the digest of the latest
``config.changed`` entry for the same file (by absolute path), and a different digest, or none
on record, appends a ``config.changed`` entry naming both digests and the top-level sections
whose contents changed (each section's digest is kept in the entry, so the next start can tell
which). Starting again with the same file appends nothing. The log holds digests only, never
the file's contents: a config may name secrets.

The previous entry is found with ``Store.last_audit`` (an index on action, target and seq),
however long the log. Two processes starting at the same moment with a changed file may both
record it: an extra entry, never a missed change.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from collections.abc import Mapping
from pathlib import Path

from kernos.gateway import find_config_file, read_config_file
from kernos.store import AuditEntry, Store

#: the audit action of a config file seen for the first time, or changed since last seen
CONFIG_CHANGED = "config.changed"


def config_actor() -> str:
    """How the audit log names this process: ``kernos:<host>:<pid>``."""
    return f"kernos:{socket.gethostname()}:{os.getpid()}"


async def audit_config(
    store: Store,
    path: str | Path | None = None,
    *,
    env: Mapping[str, str] = os.environ,
    actor: str | None = None,
    process: str = "kernos",
) -> AuditEntry | None:
    """Append ``config.changed`` when the config file (``path``, ``KERNOS_CONFIG`` or
    ./kernos.toml, as every section is read) differs from the one last recorded; the entry, or
    None when there is no file or it is unchanged. ``process`` names what started (``kernos
    worker``) in the entry's details."""
    file = find_config_file(path, env)
    if file is None:
        return None
    digest = hashlib.sha256(file.read_bytes()).hexdigest()
    sections = {name: _digest(value) for name, value in sorted(read_config_file(file).items())}
    target = str(file.resolve())
    previous = await store.last_audit(CONFIG_CHANGED, target)
    before = None if previous is None else previous.details.get("sha256")
    if before == digest:
        return None
    was = {} if previous is None else previous.details.get("sections", {})
    if not isinstance(was, dict):
        was = {}
    changed = sorted(n for n in sections.keys() | was.keys() if sections.get(n) != was.get(n))
    return await store.append_audit(
        actor=actor or config_actor(),
        action=CONFIG_CHANGED,
        target=target,
        details={
            "sha256": digest,
            "previous_sha256": before,
            "changed_sections": changed,
            "sections": sections,
            "process": process,
        },
    )


def _digest(value: object) -> str:
    """sha256 of a section as canonical JSON: a reformatted file changes no section."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()
