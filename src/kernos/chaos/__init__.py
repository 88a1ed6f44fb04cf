"""Chaos scenarios: the Tuesday afternoon as a command, run before production, not during it.

``kernos chaos tuesday`` starts, on this machine, the provider simulator, worker processes and
(with a PostgreSQL URL) a TCP proxy in front of the database; sends customer conversations in
(the support agent of ``kernos.chaos.shop``, or your own with ``--app``); injects faults on a
published schedule (providers rate-limiting, failing, slow and cutting responses; the database
slowed and stalled; workers SIGKILLed and deployed); approves what waits for a person; and
reports what the customers got beside each fault and what kernos did about it. The report's
invariants (no lost run, no duplicate effect, no stale-owner write, every conversation completed
or waiting for a person) are what the test suite asserts on both databases.
"""

from kernos.chaos._proxy import TcpProxy
from kernos.chaos._report import Report, stale_writes
from kernos.chaos._runner import ChaosOptions, run_scenario
from kernos.chaos._scenarios import SCENARIOS, Injection, Scenario, Timing, scenario
from kernos.chaos._stage import ChaosError

__all__ = [
    "SCENARIOS",
    "ChaosError",
    "ChaosOptions",
    "Injection",
    "Report",
    "Scenario",
    "TcpProxy",
    "Timing",
    "run_scenario",
    "scenario",
    "stale_writes",
]
