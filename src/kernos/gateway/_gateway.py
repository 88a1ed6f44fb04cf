"""The gateway: one LLM call made to succeed, politely, across a route's models.

For each model of the route in order: wait for the client-side rate limit, ask the endpoint's
circuit breaker, make the attempt, and on a classified failure either retry the same model
(exponential backoff with full jitter, never sooner than the provider's ``retry-after``), move on
to the next model (fallback: the request is translated to the other family by its provider), or
stop (an error no other model would answer differently: auth, bad request, content refused).
Every failed attempt is handed to ``on_attempt`` *before* any wait, so that a run journals it
and a worker killed mid-backoff resumes the call with its history.

When every model is failing or its breaker is open, the call is "down": inside a run the kernel
parks the run until ``retry_at`` (it holds nothing while it waits); outside a run
(``Gateway.complete`` from a script) the gateway waits itself, until the deadline.

Across a fleet of workers (see ``_fleet``), a provider's configured ``rpm`` and ``tpm`` are the
whole fleet's: each live worker's limiter admits its share of them. A ``retry-after`` one
worker is given pauses every worker's calls to that provider, and a breaker that failures open
on one worker holds the endpoint's breaker open on all of them for the rest of its cooldown.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from kernos.errors import ConfigError, LLMCallFailed, ProviderUnavailable
from kernos.gateway._attempts import Attempt, tries_by_endpoint
from kernos.gateway._backoff import backoff_delay
from kernos.gateway._breaker import BreakerRegistry, BreakerState
from kernos.gateway._config import Endpoint, GatewayConfig, ProviderConfig, load_config
from kernos.gateway._limits import LimitWouldExceedDeadline, RateLimiter
from kernos.gateway._prices import PriceTable
from kernos.gateway._provider import LLMRequest, ModelProvider, OnDelta, ProviderError
from kernos.gateway._types import (
    ErrorClass,
    LLMResponse,
    Message,
    ToolCall,
    ToolSpec,
    Usage,
)
from kernos.store import BreakerHold, FleetGateway, GatewayReport

log = logging.getLogger("kernos.gateway")

OnAttempt = Callable[[Attempt], Awaitable[None]]
INVALID_TOOL_ARGUMENTS = "invalid_tool_arguments"
#: a breaker-open endpoint is retried after this long when it says nothing better
_DEFAULT_PARK = 5.0
#: the longest a direct (non-run) call waits for a provider when no deadline is set
_DIRECT_DEADLINE = 300.0
#: a pause or an open period that moves by less than this (seconds) is the same one again: a
#: burst of 429s carrying the same retry-after is published once, and a pause read from the
#: fleet again (a few milliseconds longer, a transaction later) is not logged again
_PAUSE_NEWS = 0.5


class RouteDown(Exception):
    """Every model of the route is failing or shut off by its breaker: try again at
    ``retry_at`` (wall-clock). Internal: the kernel parks the run, a direct call waits."""

    def __init__(self, route: str, retry_at: float, last: Attempt | None) -> None:
        super().__init__(f"every model of route {route!r} is failing; next try at {retry_at}")
        self.route = route
        self.retry_at = retry_at
        self.last = last


class Gateway:
    """Makes LLM calls through the configured providers; one per worker process.

    Breakers and rate limits are per endpoint and shared by every call made through this
    gateway, which is what makes them work: the hundredth run learns from the first. In a
    worker they are also shared with the rest of the fleet: ``fleet_report`` is what this
    gateway tells the other workers, ``adopt_fleet`` applies what they said (the worker's
    ``FleetSync`` carries both through the store, never on a call's path).
    """

    def __init__(
        self,
        config: GatewayConfig | None = None,
        *,
        providers: Mapping[str, ModelProvider] | None = None,
        prices: PriceTable | None = None,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.config = config if config is not None else load_config()
        settings = self.config.gateway
        self._providers: dict[str, ModelProvider] = dict(providers or {})
        self._prices = prices if prices is not None else PriceTable(self.config.prices)
        self._breakers = BreakerRegistry(
            failure_threshold=settings.breaker_threshold,
            cooldown=settings.breaker_cooldown,
            max_cooldown=settings.breaker_max_cooldown,
            on_open=self._fleet_news,
        )
        self._limiters: dict[str, RateLimiter] = {}
        self._rand = rand
        self._warned: set[str] = set()
        #: provider → live workers sharing its configured limits (absent: this one alone)
        self._shares: dict[str, int] = {}
        #: provider → until when (monotonic) it asked this worker to pause (its retry-after)
        self._pauses: dict[str, float] = {}
        #: told when this gateway has news for the fleet (a pause, a breaker that opened)
        self.on_fleet_news: Callable[[], None] | None = None

    def warm_up(self) -> None:
        """Import the configured families' SDKs on a background thread now, so that a
        worker's first LLM call does not pay the second it takes (commands never do)."""
        kinds = {p.kind for p in self.config.providers.values()}
        threading.Thread(target=_import_sdks, args=(kinds,), daemon=True).start()

    @classmethod
    def from_config(cls, path: str | None = None) -> Gateway:
        """From ``kernos.toml`` (or ``path``, or ``KERNOS_CONFIG``)."""
        return cls(load_config(path))

    async def aclose(self) -> None:
        for provider in self._providers.values():
            await provider.aclose()
        self._providers.clear()

    # -- public calls -----------------------------------------------------------------------

    async def complete(
        self,
        route: str,
        messages: Sequence[Message | Mapping[str, Any]],
        tools: Sequence[ToolSpec | Mapping[str, Any]] | None = None,
        *,
        stream: bool = False,
        on_delta: OnDelta | None = None,
        deadline: float | None = None,
        idempotency_key: str | None = None,
        **params: Any,
    ) -> LLMResponse:
        """One call, outside any run: waits out a provider outage itself until ``deadline``
        (seconds; default the config's, else 300), then raises ``ProviderUnavailable``."""
        request = build_request(messages, tools, params)
        limit = deadline or self.config.gateway.deadline or _DIRECT_DEADLINE
        give_up = time.time() + limit
        last: Attempt | None = None
        while True:
            try:
                return await self.attempt_call(
                    route,
                    request,
                    stream=stream,
                    on_delta=on_delta,
                    give_up_at=give_up,
                    idempotency_key=idempotency_key,
                )
            except RouteDown as down:
                last = down.last or last  # a round of open breakers makes no attempt
                if down.retry_at >= give_up:
                    raise self.unavailable(
                        route, RouteDown(route, down.retry_at, last), limit
                    ) from None
                log.warning(
                    "route %s is down; trying again in %.1fs", route, down.retry_at - time.time()
                )
                await asyncio.sleep(max(0.0, down.retry_at - time.time()))

    def unavailable(self, route: str, down: RouteDown, waited: float) -> ProviderUnavailable:
        last = down.last
        return ProviderUnavailable(
            route,
            last.error_class if last else "unavailable",
            (last.error if last else "no model of the route could be tried")
            + f"; no model of the route may be tried again within the call's deadline "
            f"({waited:g}s from its first attempt)",
            provider=last.provider if last else None,
            model=last.model if last else None,
            attempts=last.n if last else 0,
            hint="raise the deadline, or add a fallback model from another provider to the route",
        )

    # -- the engine -------------------------------------------------------------------------

    async def attempt_call(
        self,
        route: str,
        request: LLMRequest,
        *,
        stream: bool = False,
        on_delta: OnDelta | None = None,
        history: Sequence[Attempt] = (),
        on_attempt: OnAttempt | None = None,
        give_up_at: float | None = None,
        idempotency_key: str | None = None,
    ) -> LLMResponse:
        """One round over the route. Returns the answer, raises ``LLMCallFailed`` for an error
        no model would answer differently, or ``RouteDown`` when every model is failing.

        ``history``: this round's attempts so far (from the journal), to resume after a crash.
        """
        endpoints = self.config.resolve(route)
        settings = self.config.gateway
        attempts = list(history)
        tries = tries_by_endpoint(attempts)
        await self._finish_pending_delay(attempts, give_up_at)
        conversation = list(request.messages)
        repairs = sum(1 for a in attempts if a.error_class == INVALID_TOOL_ARGUMENTS)
        last: Attempt | None = attempts[-1] if attempts else None
        start = _resume_index(endpoints, attempts, settings.max_attempts)
        retry_ats: list[float] = []
        for endpoint in endpoints[start:]:
            key = (endpoint.provider, endpoint.model)
            breaker = self._breakers.get(f"{endpoint.provider}:{endpoint.model}")
            while tries[key] < settings.max_attempts:
                permit = breaker.acquire()
                if permit is None:
                    monotonic_at = breaker.retry_at()
                    if monotonic_at is not None:
                        retry_ats.append(time.time() + max(0.0, monotonic_at - time.monotonic()))
                    break  # its breaker is open: the next model, at once
                tries[key] += 1
                n = len(attempts) + 1
                attempt_request = LLMRequest(tuple(conversation), request.tools, request.params)
                started_at = time.time()
                began = time.monotonic()
                try:
                    result = await self._attempt(
                        endpoint,
                        attempt_request,
                        stream=stream,
                        on_delta=on_delta,
                        n=n,
                        give_up_at=give_up_at,
                        idempotency_key=idempotency_key,
                    )
                except ProviderError as exc:
                    latency = time.monotonic() - began
                    if exc.error_class in _BREAKER_FAILURES:
                        permit.failure()
                    else:
                        permit.release()
                    if exc.error_class is ErrorClass.RATE_LIMITED and exc.retry_after:
                        self._pause(endpoint.provider, exc.retry_after)
                    then, delay, wait = self._next_move(exc, tries[key], give_up_at)
                    if then == "retry" and breaker.state == "open":
                        # this failure opened the breaker: the model is out until its probe
                        then, delay = "fallback", None
                        wait = max(
                            wait, (breaker.retry_at() or time.monotonic()) - time.monotonic()
                        )
                    if then == "fallback" and exc.error_class.retryable:
                        # this model may answer again after its backoff: a down route is
                        # retried then, not only when some breaker half-opens
                        retry_ats.append(time.time() + wait)
                    last = Attempt(
                        n=n,
                        provider=endpoint.provider,
                        model=endpoint.model,
                        error_class=exc.error_class.value,
                        error=str(exc)[:2000],
                        status=exc.status,
                        started_at=started_at,
                        latency=latency,
                        usage=exc.usage,
                        cost=self._cost(endpoint, exc.usage),
                        delay=delay,
                        then=then,
                    )
                    attempts.append(last)
                    if on_attempt is not None:
                        await on_attempt(last)  # journaled before the wait: see the module doc
                    if then == "fail":
                        raise self._failed(route, last) from exc
                    if then == "fallback":
                        break
                    assert delay is not None
                    await asyncio.sleep(delay)
                    continue
                except BaseException:
                    permit.release()  # cancelled (or a bug): says nothing about the endpoint
                    raise
                permit.success()
                latency = time.monotonic() - began
                broken = [c for c in result.tool_calls if c.raw_arguments is not None]
                if broken and repairs < settings.tool_argument_repairs:
                    repairs += 1
                    tries[key] -= 1  # a repair is not the endpoint's failure
                    last = Attempt(
                        n=n,
                        provider=endpoint.provider,
                        model=endpoint.model,
                        error_class=INVALID_TOOL_ARGUMENTS,
                        error="; ".join(f"{c.name}: arguments {c.raw_arguments!r}" for c in broken),
                        started_at=started_at,
                        latency=latency,
                        usage=result.usage,
                        cost=self._cost(endpoint, result.usage),
                        then="repair",
                    )
                    attempts.append(last)
                    if on_attempt is not None:
                        await on_attempt(last)
                    conversation.extend(_repair_messages(result.text, result.tool_calls))
                    continue
                return LLMResponse(
                    text=result.text,
                    tool_calls=result.tool_calls,
                    finish_reason=result.finish_reason,
                    usage=result.usage,
                    cost=self._cost(endpoint, result.usage),
                    model=result.model or endpoint.model,
                    provider=endpoint.provider,
                    latency=latency,
                    attempts=n,
                )
        if last is not None and not ErrorClass(_known(last.error_class)).retryable:
            raise self._failed(route, last)
        retry_at = min(retry_ats) if retry_ats else time.time() + _DEFAULT_PARK
        raise RouteDown(route, retry_at, last)

    async def _attempt(
        self,
        endpoint: Endpoint,
        request: LLMRequest,
        *,
        stream: bool,
        on_delta: OnDelta | None,
        n: int,
        give_up_at: float | None,
        idempotency_key: str | None,
    ) -> Any:
        settings = self.config.gateway
        provider = self._provider(endpoint.provider)
        limiter = self._limiter(endpoint.provider)
        estimate = request.estimated_tokens()
        cfg = self.config.provider(endpoint.provider)
        # a provider's own timeout (a slow local model) wins over the gateway-wide one
        timeout = cfg.timeout if "timeout" in cfg.model_fields_set else settings.timeout
        if give_up_at is not None:
            timeout = max(0.001, min(timeout, give_up_at - time.time()))
        try:
            await limiter.acquire(estimate, deadline=time.monotonic() + timeout)
        except LimitWouldExceedDeadline as exc:
            raise ProviderError(
                ErrorClass.RATE_LIMITED,
                f"the client-side rate limit of provider {endpoint.provider!r} admits no "
                f"request in time ({exc})",
            ) from exc
        headers = {"x-kernos-attempt": str(n)}
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        try:
            async with asyncio.timeout(timeout):
                result = await provider.complete(
                    endpoint.model,
                    request,
                    timeout=timeout,
                    headers=headers,
                    stream=stream,
                    on_delta=on_delta,
                    attempt=n,
                )
        except TimeoutError as exc:
            limiter.settle(estimate, 0)
            raise ProviderError(
                ErrorClass.TIMEOUT, f"no complete answer within {timeout:g}s"
            ) from exc
        except ProviderError as exc:
            limiter.settle(estimate, exc.usage.total_tokens)
            raise
        limiter.settle(estimate, result.usage.total_tokens)
        return result

    def _next_move(
        self, exc: ProviderError, tries: int, give_up_at: float | None
    ) -> tuple[str, float | None, float]:
        """After a failure: ("retry", delay), ("fallback", None) or ("fail", None), and the
        wait this model asks for before it may be tried again."""
        settings = self.config.gateway
        if not exc.error_class.retryable:
            return ("fallback" if exc.error_class.falls_back else "fail"), None, 0.0
        delay = backoff_delay(
            tries,
            base=settings.backoff_base,
            cap=settings.backoff_cap,
            retry_after=exc.retry_after,
            rand=self._rand(),
        )
        if tries >= settings.max_attempts:
            return "fallback", None, delay
        if delay > settings.max_retry_wait:
            return "fallback", None, delay  # the provider asks for longer than we wait here
        if give_up_at is not None and time.time() + delay >= give_up_at:
            return "fallback", None, delay
        return "retry", delay, delay

    async def _finish_pending_delay(
        self, attempts: Sequence[Attempt], give_up_at: float | None
    ) -> None:
        """A worker killed during a backoff: wait out what is left of it, no more."""
        if not attempts or attempts[-1].delay is None:
            return
        last = attempts[-1]
        due = last.started_at + last.latency + (last.delay or 0.0)
        if give_up_at is not None:
            due = min(due, give_up_at)
        remaining = due - time.time()
        if remaining > 0:
            await asyncio.sleep(remaining)

    def _failed(self, route: str, last: Attempt) -> LLMCallFailed:
        return LLMCallFailed(
            route,
            last.error_class,
            last.error,
            provider=last.provider,
            model=last.model,
            attempts=last.n,
            hint=_HINTS.get(last.error_class),
        )

    def _cost(self, endpoint: Endpoint, usage: Usage) -> float:
        if not usage.total_tokens:
            return 0.0
        cost = self._prices.cost(endpoint.provider, endpoint.model, usage)
        name = f"{endpoint.provider}:{endpoint.model}"
        if (
            cost == 0.0
            and name not in self._warned
            and self._prices.lookup(endpoint.provider, endpoint.model) is None
        ):
            self._warned.add(name)
            log.warning(
                "no price known for %s: its calls are costed at 0; add [prices.%r] to kernos.toml",
                name,
                name,
            )
        return cost

    def _provider(self, name: str) -> ModelProvider:
        provider = self._providers.get(name)
        if provider is None:
            provider = self._providers[name] = make_provider(self.config.provider(name))
        return provider

    def _limiter(self, name: str) -> RateLimiter:
        limiter = self._limiters.get(name)
        if limiter is None:
            rpm, tpm = self._rates(name)
            limiter = self._limiters[name] = RateLimiter(rpm=rpm, tpm=tpm)
        return limiter

    def _rates(self, provider: str) -> tuple[float | None, float | None]:
        """This worker's share of the provider's configured rpm and tpm."""
        cfg = self.config.provider(provider)
        workers = self._shares.get(provider, 1)
        return (
            None if cfg.rpm is None else cfg.rpm / workers,
            None if cfg.tpm is None else cfg.tpm / workers,
        )

    def breaker_states(self) -> dict[str, Any]:
        """Every endpoint's breaker, for ``kernos`` status views and tests."""
        return dict(self._breakers.snapshot())

    # -- the fleet ----------------------------------------------------------------------------

    def _pause(self, provider: str, seconds: float) -> None:
        """The provider said ``retry-after``: pause its calls here, and tell the fleet."""
        until = time.monotonic() + seconds
        self._limiter(provider).pause_until(until)
        told = self._pauses.get(provider)
        if told is not None and until <= told + _PAUSE_NEWS:
            self._pauses[provider] = max(told, until)
            return
        self._pauses[provider] = until
        self._fleet_news()

    def _fleet_news(self) -> None:
        if self.on_fleet_news is not None:
            self.on_fleet_news()

    def limited_providers(self) -> tuple[str, ...]:
        """The configured providers with an ``rpm`` or ``tpm``: the limits a fleet shares."""
        return tuple(sorted(name for name, p in self.config.providers.items() if p.rpm or p.tpm))

    def fleet_report(self) -> GatewayReport:
        """What this gateway tells the other workers: the providers whose limits it shares,
        the pauses providers asked of it, and the breakers that failures it saw opened (not
        those it holds open for another worker: that one reports them). Times are seconds
        from now."""
        now = time.monotonic()
        self._pauses = {p: until for p, until in self._pauses.items() if until > now}
        opened = {
            endpoint: BreakerHold(remaining=snap.retry_at - now, cooldown=snap.cooldown)
            for endpoint, snap in self._breakers.snapshot().items()
            if snap.state is BreakerState.OPEN and not snap.held and snap.retry_at is not None
        }
        return GatewayReport(
            providers=self.limited_providers(),
            paused={p: until - now for p, until in self._pauses.items()},
            open=opened,
        )

    def adopt_fleet(self, fleet: FleetGateway) -> None:
        """Apply what the other live workers said: take this worker's share of each provider's
        limits (the queue of waiting calls keeps its order), pause a provider that paused
        another worker, and hold open a breaker open on another worker until its cooldown
        there ends (then probe here as usual). Providers this gateway does not know are
        ignored; nothing here ever shortens a pause or closes a breaker."""
        for provider in self.limited_providers():
            self._share(provider, max(1, fleet.sharing.get(provider, 1)))
        now = time.monotonic()
        for provider, left in fleet.paused.items():
            if provider not in self.config.providers:
                continue
            limiter = self._limiter(provider)
            before = limiter.snapshot().paused_until or now
            limiter.pause_until(now + left)
            if now + left > before + _PAUSE_NEWS:  # not the same pause read again
                log.info(
                    "provider %s paused for %.2fs: it answered another worker with a retry-after",
                    provider,
                    left,
                )
        for endpoint, hold in fleet.open.items():
            if endpoint.partition(":")[0] not in self.config.providers:
                continue
            breaker = self._breakers.get(endpoint)
            before = breaker.retry_at() or now
            breaker.hold_open(now + hold.remaining, cooldown=hold.cooldown)
            if now + hold.remaining > before + _PAUSE_NEWS:
                log.info(
                    "breaker of %s held open for %.2fs: it opened on another worker",
                    endpoint,
                    hold.remaining,
                )

    def _share(self, provider: str, workers: int) -> None:
        if self._shares.get(provider, 1) == workers:
            return
        self._shares[provider] = workers
        rpm, tpm = self._rates(provider)
        limiter = self._limiters.get(provider)
        if limiter is not None:
            limiter.set_rates(rpm=rpm, tpm=tpm)
        cfg = self.config.provider(provider)
        log.info(
            "provider %s: its limits (rpm %s, tpm %s) are shared by %d live workers; this one "
            "takes rpm %s, tpm %s",
            provider,
            cfg.rpm or "-",
            cfg.tpm or "-",
            workers,
            f"{rpm:g}" if rpm is not None else "-",
            f"{tpm:g}" if tpm is not None else "-",
        )


def make_provider(cfg: ProviderConfig) -> ModelProvider:
    """The SDK-backed provider for a configured endpoint.

    The SDKs are imported here, on first use: they take a second to import, which every
    ``kernos`` command (and every worker without LLM agents) would otherwise pay.
    """
    cls: type[ModelProvider]
    if cfg.kind == "openai":
        from kernos.gateway._openai import OpenAIProvider

        cls = OpenAIProvider
    elif cfg.kind == "anthropic":
        from kernos.gateway._anthropic import AnthropicProvider

        cls = AnthropicProvider
    else:
        raise ConfigError(f"provider {cfg.name!r} has unknown kind {cfg.kind!r}")
    return cls(
        cfg.name,
        base_url=cfg.base_url,
        api_key=cfg.api_key(),
        timeout=cfg.timeout,
        headers=cfg.headers,
    )


def _import_sdks(kinds: set[str]) -> None:
    if "openai" in kinds:
        import kernos.gateway._openai
    if "anthropic" in kinds:
        import kernos.gateway._anthropic  # noqa: F401


def build_request(
    messages: Sequence[Message | Mapping[str, Any]],
    tools: Sequence[ToolSpec | Mapping[str, Any]] | None,
    params: Mapping[str, Any],
) -> LLMRequest:
    """The agent's messages and tools (objects or plain dicts) as one normalized request."""
    return LLMRequest(
        tuple(_message(m) for m in messages),
        tuple(_tool(t) for t in tools or ()),
        dict(params),
    )


def _message(m: Message | Mapping[str, Any]) -> Message:
    if isinstance(m, Message):
        return m
    data = dict(m)
    calls = data.get("tool_calls")
    if calls:
        data["tool_calls"] = tuple(_tool_call(c) for c in calls)
    return Message.model_validate(data)


def _tool_call(c: ToolCall | Mapping[str, Any]) -> ToolCall:
    if isinstance(c, ToolCall):
        return c
    fn = c.get("function")
    if isinstance(fn, Mapping):  # the OpenAI wire shape, as agents often keep it
        import json

        raw = fn.get("arguments") or "{}"
        args = json.loads(raw) if isinstance(raw, str) else dict(raw)
        return ToolCall(id=str(c.get("id") or ""), name=str(fn.get("name")), arguments=args)
    return ToolCall.model_validate(dict(c))


def _tool(t: ToolSpec | Mapping[str, Any]) -> ToolSpec:
    if isinstance(t, ToolSpec):
        return t
    fn = t.get("function")
    if isinstance(fn, Mapping):  # {"type": "function", "function": {...}}
        return ToolSpec.model_validate(dict(fn))
    return ToolSpec.model_validate(dict(t))


def _repair_messages(text: str, calls: Sequence[ToolCall]) -> list[Message]:
    """The model's broken answer and, per call, what was wrong: it gets to fix it."""
    out = [Message(role="assistant", content=text or None, tool_calls=tuple(calls))]
    for call in calls:
        if call.raw_arguments is None:
            content = "not run: another tool call of this turn had invalid arguments; call again"
        else:
            content = (
                f"error: the arguments of {call.name} are not a valid JSON object: "
                f"{call.raw_arguments!r}. Call {call.name} again with valid JSON arguments."
            )
        out.append(Message(role="tool", tool_call_id=call.id, content=content))
    return out


def _resume_index(
    endpoints: Sequence[Endpoint], attempts: Sequence[Attempt], max_tries: int
) -> int:
    """Where a resumed call continues: the model of its last attempt (or the first)."""
    if not attempts:
        return 0
    last = attempts[-1]
    for i, ep in enumerate(endpoints):
        if (ep.provider, ep.model) == (last.provider, last.model):
            return i + 1 if last.then == "fallback" else i
    return 0


def _known(error_class: str) -> str:
    return error_class if error_class in ErrorClass._value2member_map_ else "server_error"


#: failures that say the endpoint is unhealthy (a 429 says it is busy with us: the limiter's job)
_BREAKER_FAILURES = frozenset(
    {
        ErrorClass.OVERLOADED,
        ErrorClass.SERVER_ERROR,
        ErrorClass.TIMEOUT,
        ErrorClass.CONNECTION,
        ErrorClass.MALFORMED_RESPONSE,
        ErrorClass.TRUNCATED_RESPONSE,
    }
)

_HINTS = {
    "auth": "check the provider's API key (its api_key_env variable) and the account's credit",
    "bad_request": "the request itself was rejected; fix the messages, tools or parameters",
    "content_filtered": "the provider refused this content; rephrase or handle the refusal",
    "context_too_long": "shorten the conversation or add a model with a larger window to the route",
    "not_found": "check the model name in the route (provider:model)",
}
