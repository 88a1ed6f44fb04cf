"""The gateway's limits and breakers, shared across a fleet of workers through the store.

A provider's ``rpm`` and ``tpm`` in kernos.toml are what the provider allows the whole account,
not each process: ten workers each sending the full rate send ten times too much, and each
would discover a provider's ``retry-after``, or an outage, on its own. So every worker's
gateway publishes on its row of the fleet table (``Store.publish_gateway``):

- the providers whose limits it shares: each live worker takes ``limit / N`` of a provider that
  ``N`` live workers share, and its limiter changes rates in place as workers come and go;
- a provider's pause (the ``retry-after`` of a 429 it was given), which the others adopt by
  pausing their own limiter until the same moment;
- a breaker that failures it saw opened, with what is left of its cooldown, which the others
  adopt by holding their own breaker for that endpoint open as long, then probing as usual.

Times cross the database as seconds from now and are stored on the database's clock, so hosts
whose clocks disagree still agree on when a pause ends, as they do on leases. What a stopped
worker, or a dead one (silent for a few lease TTLs), published is ignored.

Nothing here is on a call's path: a worker publishes as soon as its gateway has news (a pause,
a breaker that opened), in the background, and reads what the others said every
``fleet_sync`` seconds (``[gateway]`` in kernos.toml, 1 s by default). So another worker's
pause reaches this one within about ``fleet_sync`` plus a transaction, and a worker that just
joined is given its share at its next read by the others: until then the fleet may admit up to
one worker's share more than the limit. ``fleet_sync = 0`` turns the sharing off.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

from kernos.errors import InfrastructureError
from kernos.gateway._gateway import Gateway
from kernos.store import FleetGateway, GatewayReport

__all__ = ["FleetBoard", "FleetSync"]

log = logging.getLogger("kernos.gateway")


class FleetBoard(Protocol):
    """Where workers' gateways meet: the store (``kernos.store.Store`` is one)."""

    async def publish_gateway(self, worker_id: str, report: GatewayReport) -> FleetGateway: ...
    async def fleet_gateway(self, worker_id: str) -> FleetGateway: ...


class FleetSync:
    """Keeps one worker's gateway in step with the rest of the fleet.

    ``sync()`` makes one exchange: it publishes this gateway's report if it has news since the
    last publication (or none was made yet), otherwise only reads, and adopts what the other
    live workers said. ``run()`` repeats it every ``interval`` seconds, and at once when the
    gateway has news, until cancelled; a store that fails is logged and tried again at the
    next turn (the gateway goes on with what it last adopted).
    """

    def __init__(self, gateway: Gateway, board: FleetBoard, worker_id: str) -> None:
        self.gateway = gateway
        self.board = board
        self.worker_id = worker_id
        self.interval = gateway.config.gateway.fleet_sync
        self._news = asyncio.Event()
        self._unpublished = True
        gateway.on_fleet_news = self._on_news

    def _on_news(self) -> None:
        self._unpublished = True
        self._news.set()

    async def sync(self) -> FleetGateway:
        """One exchange with the fleet; what the other workers said, as adopted."""
        if self._unpublished:
            self._unpublished = False
            try:
                fleet = await self.board.publish_gateway(
                    self.worker_id, self.gateway.fleet_report()
                )
            except BaseException:
                self._unpublished = True
                raise
        else:
            fleet = await self.board.fleet_gateway(self.worker_id)
        self.gateway.adopt_fleet(fleet)
        return fleet

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._news.wait(), timeout=self.interval)
            self._news.clear()
            try:
                await self.sync()
            except InfrastructureError as exc:
                log.warning("gateway: could not sync with the fleet, trying again: %s", exc)
