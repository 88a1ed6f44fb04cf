"""``ctx.llm``: the gateway serving a run's durable LLM calls (see ``kernel._calls``).

Live, it runs a round of the gateway with the call's journaled history; replayed, it returns the
recorded answer (or raises the recorded failure) without asking any provider. When the route is
down the run parks until the earliest moment a model may answer (a breaker's half-open probe,
a provider's retry-after); the next round starts from there. A deadline (``deadline=`` seconds
from the call's first attempt, or the config's) turns that wait into ``ProviderUnavailable``.

In a worker the service is also the gateway's member of the fleet (``join_fleet`` and
``follow_fleet``, see ``_fleet``): the providers' limits, pauses and open breakers are shared
with the other live workers through the store.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

from kernos.errors import LLMCallFailed, ProviderUnavailable
from kernos.gateway._attempts import Attempt
from kernos.gateway._config import GatewayConfig, load_config
from kernos.gateway._fleet import FleetBoard, FleetSync
from kernos.gateway._gateway import Gateway, RouteDown, build_request
from kernos.gateway._provider import OnDelta
from kernos.gateway._types import LLMResponse, Message, ToolSpec
from kernos.kernel import CallService, DurableCall


class LLMService:
    """Registered with a worker as ``services={"llm": LLMService(gateway)}``."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.fleet: FleetSync | None = None

    async def aclose(self) -> None:
        await self.gateway.aclose()

    async def join_fleet(self, store: FleetBoard, worker_id: str) -> None:
        """Share this gateway's limits and breakers with the fleet: publish, take this
        worker's share of each provider's limits and adopt the others' pauses and open
        breakers. The worker calls it once it is registered, before it claims a run, so that
        its first call already keeps to its share. Does nothing when ``fleet_sync`` is 0.
        Raises the store's ``InfrastructureError``; ``follow_fleet`` tries again."""
        if not self.gateway.config.gateway.fleet_sync:
            return
        self.fleet = FleetSync(self.gateway, store, worker_id)
        await self.fleet.sync()

    async def follow_fleet(self) -> None:
        """Stay in step with the fleet until cancelled (returns at once if not joined)."""
        if self.fleet is not None:
            await self.fleet.run()

    def health(self) -> dict[str, str]:
        """Each endpoint's circuit breaker (``{"openai:gpt-4o": "open"}``: closed, open or
        half_open), read without changing any. A worker carries it in its heartbeat, so that
        ``kernos status`` shows breaker states across the fleet."""
        return {
            endpoint: snapshot.state.value
            for endpoint, snapshot in self.gateway.breaker_states().items()
        }

    async def __call__(
        self,
        call: DurableCall,
        route: str,
        messages: Sequence[Message | Mapping[str, Any]],
        tools: Sequence[ToolSpec | Mapping[str, Any]] | None = None,
        *,
        stream: bool = False,
        on_delta: OnDelta | None = None,
        deadline: float | None = None,
        **params: Any,
    ) -> LLMResponse:
        if call.completed is not None:
            return LLMResponse.model_validate(call.completed["response"])
        if call.failed is not None:
            raise _recorded_failure(call.failed)
        request = build_request(messages, tools, params)
        history = [Attempt.model_validate(a) for a in call.attempts]
        limit = deadline if deadline is not None else self.gateway.config.gateway.deadline
        started = call.record.started_at or time.time()
        give_up_at = started + limit if limit else None

        async def journal(attempt: Attempt) -> None:
            await call.attempt(attempt.payload(), duration=attempt.latency, n=attempt.n)

        try:
            response = await self.gateway.attempt_call(
                route,
                request,
                stream=stream,
                on_delta=on_delta,
                history=history,
                on_attempt=journal,
                give_up_at=give_up_at,
                idempotency_key=call.idempotency_key,
            )
        except LLMCallFailed as exc:
            await call.fail(_failure_payload(exc), n=exc.attempts)
            raise
        except RouteDown as down:
            if give_up_at is not None and down.retry_at >= give_up_at:
                assert limit is not None
                error = self.gateway.unavailable(route, down, limit)
                await call.fail(_failure_payload(error), n=error.attempts)
                raise error from None
            last = down.last
            call.park(
                "provider",
                down.retry_at,
                {
                    "route": route,
                    "error_class": last.error_class if last else None,
                    "provider": last.provider if last else None,
                    "model": last.model if last else None,
                },
            )
        raw = response.model_dump(mode="json")
        dumped = call.scrub(raw)
        await call.complete({"response": dumped}, duration=response.latency, n=response.attempts)
        if dumped is raw:
            return response
        return LLMResponse.model_validate(dumped)  # what replay will return: redacted


def default_services(
    config: GatewayConfig | None = None, *, env: Mapping[str, str] = os.environ
) -> dict[str, CallService]:
    """The services a worker needs for ``ctx.llm``, from ``config`` or kernos.toml.

    Loads the configuration now, and checks that every provider a route uses has its API key in
    the environment, so that a bad file or a missing key fails the worker at start (saying what
    to fix) rather than the first run that calls a model.
    """
    config = config if config is not None else load_config()
    for name in sorted({e.provider for chain in config.routes.values() for e in chain}):
        config.provider(name).api_key(env)
    gateway = Gateway(config)
    if gateway.config.routes:
        # kernos.toml sets up models: this worker will call them. (The SDKs cost ~55 MB of
        # memory; a worker without configured routes imports them on its first call only.)
        gateway.warm_up()
    return {"llm": LLMService(gateway)}


def _failure_payload(exc: LLMCallFailed) -> dict[str, Any]:
    return {
        "type": type(exc).__name__,
        "route": exc.route,
        "error_class": exc.error_class,
        "provider": exc.provider,
        "model": exc.model,
        "attempts": exc.attempts,
        "message": str(exc),
    }


class _Recorded(LLMCallFailed):
    """A failure read back from the journal: the same text as when it happened."""

    def __init__(self, payload: Mapping[str, Any]) -> None:
        super().__init__(
            str(payload.get("route", "")),
            str(payload.get("error_class", "")),
            "",
            provider=payload.get("provider"),
            model=payload.get("model"),
            attempts=int(payload.get("attempts") or 0),
        )
        self.args = (str(payload.get("message", "")),)


class _RecordedUnavailable(ProviderUnavailable, _Recorded):
    pass


def _recorded_failure(payload: Mapping[str, Any]) -> LLMCallFailed:
    if payload.get("type") == "ProviderUnavailable":
        return _RecordedUnavailable(payload)
    return _Recorded(payload)
