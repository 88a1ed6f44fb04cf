"""Config changes are in the audit log: a process that starts with a kernos.toml other than the
one last recorded appends ``config.changed`` with both digests; starting with the same file
again appends nothing."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from _procs import Workers

from kernos.governance import CONFIG_CHANGED, audit_config
from kernos.kernel import Client
from kernos.store import AuditEntry
from kernos.testing import wait_until

BUDGETS = '[[budgets]]\nname = "daily"\nper = "tenant"\nusd = 5.0\n'
POLICY = '[policy]\ndefault = "allow"\n'


async def _changes(client: Client) -> list[AuditEntry]:
    return [e for e in await client.store.list_audit(limit=10_000) if e.action == CONFIG_CHANGED]


async def test_first_start_audits_the_same_file_does_not_a_changed_one_does(
    client: Client, tmp_path: Path
) -> None:
    toml = tmp_path / "kernos.toml"
    toml.write_text(BUDGETS + POLICY)
    first = await audit_config(client.store, toml, actor="test", process="kernos worker")
    assert first is not None
    assert (first.action, first.actor, first.target) == (
        CONFIG_CHANGED,
        "test",
        str(toml.resolve()),
    )
    digest = hashlib.sha256(toml.read_bytes()).hexdigest()
    assert first.details["sha256"] == digest
    assert first.details["previous_sha256"] is None
    assert first.details["changed_sections"] == ["budgets", "policy"]
    assert first.details["process"] == "kernos worker"

    assert await audit_config(client.store, toml) is None
    assert await audit_config(client.store, toml) is None
    assert len(await _changes(client)) == 1

    toml.write_text(BUDGETS.replace("5.0", "7.5") + POLICY)
    second = await audit_config(client.store, toml)
    assert second is not None
    assert second.details["previous_sha256"] == digest
    assert second.details["changed_sections"] == ["budgets"]
    assert second.actor.startswith("kernos:")
    assert await audit_config(client.store, toml) is None
    assert [e.seq for e in await _changes(client)] == [first.seq, second.seq]
    assert (await client.store.verify_audit()).ok


async def test_a_reformatted_file_is_a_change_of_no_section(client: Client, tmp_path: Path) -> None:
    toml = tmp_path / "kernos.toml"
    toml.write_text(BUDGETS)
    await audit_config(client.store, toml)
    toml.write_text("# the same budgets, commented\n" + BUDGETS)
    entry = await audit_config(client.store, toml)
    assert entry is not None and entry.details["changed_sections"] == []
    toml.write_text(POLICY)
    entry = await audit_config(client.store, toml)
    assert entry is not None and entry.details["changed_sections"] == ["budgets", "policy"]


async def test_no_file_audits_nothing(
    client: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert await audit_config(client.store, env={}) is None
    assert await client.store.list_audit() == []


async def test_files_are_told_apart_by_path_and_found_from_the_environment(
    client: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    one, two = tmp_path / "one.toml", tmp_path / "two.toml"
    one.write_text(BUDGETS)
    two.write_text(BUDGETS)
    assert await audit_config(client.store, env={"KERNOS_CONFIG": str(one)}) is not None
    assert await audit_config(client.store, env={"KERNOS_CONFIG": str(two)}) is not None
    assert await audit_config(client.store, one) is None
    monkeypatch.chdir(tmp_path)
    (tmp_path / "kernos.toml").write_text(POLICY)
    found = await audit_config(client.store, env={})
    assert found is not None and found.target == str((tmp_path / "kernos.toml").resolve())


async def test_the_previous_digest_is_found_behind_any_number_of_other_entries(
    client: Client, tmp_path: Path
) -> None:
    """Found by an index read, not by reading the log back: 1,000 other entries, and entries
    of the same action on another file, do not hide it."""
    toml, other = tmp_path / "kernos.toml", tmp_path / "other.toml"
    toml.write_text(BUDGETS)
    other.write_text(POLICY)
    assert await audit_config(client.store, toml) is not None
    for _ in range(1000):
        await client.store.append_audit(actor="test", action="noise", target=str(toml))
    assert await audit_config(client.store, other) is not None
    assert await audit_config(client.store, toml) is None  # unchanged: nothing recorded
    toml.write_text(POLICY)
    changed = await audit_config(client.store, toml)
    assert changed is not None and changed.details["previous_sha256"] is not None
    assert len(await _changes(client)) == 3


async def test_kernos_worker_audits_its_config_once_per_change(
    client: Client, db_url: str, tmp_path: Path, workers: Workers
) -> None:
    """Through real ``kernos worker`` processes: the first start records the file, a restart
    with the same file records nothing, a restart after an edit records the change."""
    toml = tmp_path / "kernos.toml"
    toml.write_text(BUDGETS)

    async def start_and_stop() -> None:
        w = workers.start(db_url, env={"KERNOS_CONFIG": str(toml)})
        await wait_until(
            lambda: "kernos worker" in w.output() or not w.alive,
            timeout=60,
            what="the worker to start",
        )
        assert w.terminate() == 0, w.output()

    await start_and_stop()
    [first] = await _changes(client)
    assert first.actor.startswith("kernos:") and first.details["process"] == "kernos worker"
    await start_and_stop()
    assert len(await _changes(client)) == 1
    toml.write_text(BUDGETS + POLICY)
    await start_and_stop()
    [_, second] = await _changes(client)
    assert second.details["previous_sha256"] == first.details["sha256"]
    assert second.details["changed_sections"] == ["policy"]
