"""The errors kernos raises, as data a caller can act on.

Every error says what happened, why, and what to do. The tree splits by who has to act::

    KernosError
    ├── UsageError              the caller's mistake: fix the call, retrying changes nothing
    │   ├── ConfigError         bad settings, URL or app module
    │   ├── AgentNotFound       no agent registered under that name (or version)
    │   ├── RunNotFound         no run with that id in this database
    │   ├── ApprovalNotFound    no approval with that id (for this tenant)
    │   ├── InvalidInput        malformed JSON, failed validation, payload over the size limit
    │   ├── NotSerializable     a step result or run output that is not JSON
    │   ├── InvalidState        the run is not in a state that allows the request
    │   └── ScheduleNotFound    no schedule with that name
    ├── RunError                the run failed: its journal says why
    │   ├── StepFailed          a step exhausted its attempts
    │   ├── DeterminismError    replayed code asked for a different step than the journal holds
    │   ├── ChildRunFailed      a child run ended failed or cancelled
    │   ├── LLMCallFailed       every model of a route failed or refused a call
    │   │   └── ProviderUnavailable   no provider answered before the call's deadline
    │   ├── ToolCallFailed      a tool call failed (its message is worded for the model)
    │   │   ├── ToolRefused     the loop breaker would not make the call again
    │   │   └── ToolRejected    a person rejected a call that required approval
    │   ├── AgentFailed         an agent's tool loop could not finish (turns, output, escalation)
    │   └── ContextOverflow     a conversation cannot fit the model's window even compacted
    └── InfrastructureError     the database is unavailable or full: retry later
        ├── StoreUnavailable
        ├── StoreFull
        ├── ToolUnavailable     the service behind a tool (an MCP server) is down or unreachable
        └── SchemaMismatch      the database's schema is newer than this code (not retryable)

Control flow that user code must not swallow derives from ``BaseException`` (as
``asyncio.CancelledError`` does), so an agent's ``except Exception`` cannot catch it:

    Cancelled                   the run was cancelled; clean up and return or re-raise
    LeaseLost                   this worker no longer owns the run; stop at once
"""

from __future__ import annotations

__all__ = [
    "AgentNotFound",
    "Cancelled",
    "ChildRunFailed",
    "ConfigError",
    "DeterminismError",
    "InfrastructureError",
    "InvalidInput",
    "InvalidState",
    "KernosError",
    "LLMCallFailed",
    "LeaseLost",
    "NotSerializable",
    "ProviderUnavailable",
    "RunError",
    "RunNotFound",
    "ScheduleNotFound",
    "SchemaMismatch",
    "StepFailed",
    "StoreFull",
    "StoreUnavailable",
    "ToolUnavailable",
    "UsageError",
]


class KernosError(Exception):
    """Base of every error kernos raises on purpose.

    ``retryable`` tells a caller whether the same request may succeed later, and
    ``retry_after`` (seconds) how long to wait first when kernos knows.
    """

    retryable: bool = False
    retry_after: float | None = None


class UsageError(KernosError):
    """The caller asked for something that cannot be done as asked."""


class ConfigError(UsageError):
    """Settings, a database URL or an app module are wrong."""


class AgentNotFound(UsageError):
    """No agent is registered under the requested name or version."""


class RunNotFound(UsageError):
    """No run has the requested id in the database in use."""


class ApprovalNotFound(UsageError):
    """No pending or decided approval has that id (for this tenant)."""

    def __init__(self, approval_id: str) -> None:
        self.approval_id = approval_id
        super().__init__(
            f"approval {approval_id!r} not found; list them with `kernos approvals list`"
        )


class InvalidInput(UsageError):
    """Input was malformed, failed validation, or exceeded the payload limit."""


class NotSerializable(UsageError):
    """A value that must be stored in the journal is not JSON-serialisable."""


class InvalidState(UsageError):
    """The run's state does not allow the request (e.g. resuming a completed run)."""


class ScheduleNotFound(UsageError):
    """No schedule has the requested name."""


class RunError(KernosError):
    """A run failed; the run's journal holds the full story."""


class StepFailed(RunError):
    """A step raised on every attempt its retry policy allowed.

    The agent may catch it; if it does not, the run fails with it. ``error_type`` and
    ``error_message`` describe the last attempt's exception, which is also journaled with its
    traceback.
    """

    def __init__(self, step: str, attempts: int, error_type: str, error_message: str) -> None:
        self.step = step
        self.attempts = attempts
        self.error_type = error_type
        self.error_message = error_message
        super().__init__(
            f"step {step!r} failed after {attempts} attempt(s): {error_type}: {error_message} "
            f"(the traceback of each attempt is in the run's journal: kernos trace RUN)"
        )


class DeterminismError(RunError):
    """Replayed agent code diverged from the journal (guarantee 8).

    Raised when the code asks, at a journal position, for a different step than the one recorded
    there: usually the agent's code changed under a running run. The run stops instead of mixing
    two histories.
    """

    def __init__(self, position: int, recorded: str, requested: str) -> None:
        self.position = position
        self.recorded = recorded
        self.requested = requested
        super().__init__(
            f"non-deterministic replay at step {position}: the journal recorded {recorded} but "
            f"the code now asks for {requested}. The agent's code changed while this run was in "
            f"flight; deploy the change under a new agent version so that running runs keep the "
            f"code they started with."
        )


class ChildRunFailed(RunError):
    """A child run started with ``ctx.spawn`` did not complete."""

    def __init__(self, child_id: str, state: str, error: str | None) -> None:
        self.child_id = child_id
        self.state = state
        self.error = error
        super().__init__(f"child run {child_id} ended {state}: {error or 'no error recorded'}")


class LLMCallFailed(RunError):
    """An LLM call got no usable answer from any model of its route.

    ``error_class`` is the gateway's class of the last error (``rate_limited``,
    ``context_too_long``, ``auth``, ...); every attempt, with its provider, model, error and
    delay, is in the run's journal. Errors that retrying cannot fix (auth, bad_request,
    content_filtered) end the call at once; the agent may catch this and change its request.
    """

    def __init__(
        self,
        route: str,
        error_class: str,
        message: str,
        *,
        provider: str | None = None,
        model: str | None = None,
        attempts: int = 0,
        hint: str | None = None,
    ) -> None:
        self.route = route
        self.error_class = error_class
        self.provider = provider
        self.model = model
        self.attempts = attempts
        where = f" ({provider}:{model})" if provider else ""
        super().__init__(
            f"LLM call on route {route!r} failed after {attempts} attempt(s): {error_class}"
            f"{where}: {message}"
            + (f"; {hint}" if hint else "")
            + " (every attempt is in the run's journal: kernos trace RUN)"
        )


class ProviderUnavailable(LLMCallFailed):
    """Every model of the route kept failing until the call's deadline passed.

    Without a deadline a run waits (state ``waiting``, waiting for: provider) until a provider
    recovers; with one, the wait ends in this error.
    """


class ToolCallFailed(RunError):
    """A tool call ended in an error, after any retries its tool allows.

    ``for_model`` is the concise text an agent loop sends back to the model (what failed and
    why, no traceback); the traceback is in the run's journal (``kernos trace RUN``).
    ``kind`` is ``invalid_arguments``, ``timeout``, ``error`` or ``refused``.
    """

    def __init__(
        self, tool: str, kind: str, for_model: str, *, error_type: str = "", attempts: int = 1
    ) -> None:
        self.tool = tool
        self.kind = kind
        self.for_model = for_model
        self.error_type = error_type
        self.attempts = attempts
        super().__init__(
            f"tool {tool!r} failed ({kind}, {attempts} attempt(s)): {for_model} "
            f"(the journal has the traceback: kernos trace RUN)"
        )


class ToolRefused(ToolCallFailed):
    """The loop breaker refused a call: the same call failed too often, or the run's tool-call
    budget is spent. ``reason`` is ``repeated_failure`` or ``budget_exhausted``."""

    def __init__(self, tool: str, reason: str, for_model: str) -> None:
        self.reason = reason
        super().__init__(tool, "refused", for_model, attempts=0)


class ToolRejected(ToolCallFailed):
    """A person rejected a tool call that required approval (or it timed out unapproved)."""

    def __init__(self, tool: str, by: str | None, reason: str | None) -> None:
        self.by = by
        self.reason = reason
        who = f"a person ({by})" if by else "a person"
        why = f": {reason}" if reason else ""
        super().__init__(
            tool,
            "rejected",
            f"{who} rejected this call of {tool}{why}. Do not try it again unchanged.",
            attempts=0,
        )


class AgentFailed(RunError):
    """An agent's tool loop could not reach an answer: it ran out of turns, its final output
    never validated, or it was stopped by the loop breaker with no person to escalate to."""

    def __init__(self, agent: str, reason: str, message: str) -> None:
        self.agent = agent
        self.reason = reason
        super().__init__(f"agent {agent!r} stopped ({reason}): {message}")


class ContextOverflow(RunError):
    """The conversation does not fit the model's window even after compaction.

    Raised before the call, instead of the provider's 400: the parts compaction must keep
    verbatim (system messages, pinned messages, the last turns) plus the summary are already
    over the budget. ``tokens`` is that minimum, ``budget`` the limit; ``largest`` is the
    index and size of the largest message kept, usually the one to shorten.
    """

    def __init__(
        self,
        *,
        tokens: int,
        budget: int,
        kept: int,
        largest: tuple[int, int] | None,
        summary_reserve: int | None,
        keep_last: int,
        pinned: int,
    ) -> None:
        self.tokens = tokens
        self.budget = budget
        self.largest = largest
        compaction = (
            f"reserves {summary_reserve} tokens for the summary"
            if summary_reserve is not None
            else "finds nothing else to summarise"
        )
        where = (
            f"; the largest of them is message {largest[0]} at {largest[1]} tokens"
            if largest is not None
            else ""
        )
        super().__init__(
            f"the conversation cannot fit the model's context: even compacted it needs "
            f"{tokens} tokens and the budget is {budget}. Compaction keeps {kept} message(s) "
            f"verbatim (system messages, {pinned} pinned, the last {keep_last}) and "
            f"{compaction}{where}. Use a model with a larger window (or pass a larger one if "
            f"the model has it), shorten the input (a long tool result or user message), pin "
            f"fewer messages, or keep fewer recent ones (keep_last)."
        )


class InfrastructureError(KernosError):
    """The database (or another service kernos depends on) failed; retry later."""

    retryable = True


class StoreUnavailable(InfrastructureError):
    """The database could not be reached or did not answer in time."""


class StoreFull(InfrastructureError):
    """The database has no space left; nothing of the failed write was kept."""


class ToolUnavailable(InfrastructureError):
    """The service behind a tool (an MCP server) is down or cannot be reached; retry later.

    kernos reconnects (or restarts the server) in the background, so the same call may succeed
    later without anyone acting: ``retry_after`` is when the next attempt to reconnect is due,
    when kernos knows it. ``may_have_run`` is true when the call had been sent before the
    service failed: its effect may have happened, so only an idempotent tool is retried blindly.
    """

    retryable = True

    def __init__(
        self,
        service: str,
        reason: str,
        *,
        tool: str | None = None,
        retry_after: float | None = None,
        may_have_run: bool = False,
    ) -> None:
        self.service = service
        self.reason = reason
        self.tool = tool
        self.retry_after = retry_after
        self.may_have_run = may_have_run
        what = f"tool {tool!r} of {service}" if tool else service
        when = f"in {retry_after:.1f} s" if retry_after is not None else "later"
        if may_have_run:
            advice = (
                f"the call was sent before the failure and may have run: retry it {when} if the "
                f"tool is idempotent, otherwise check its effect first"
            )
        elif tool:
            advice = f"the call was not sent: retry it {when}"
        else:
            advice = f"retry {when}"
        super().__init__(f"{what} is unavailable: {reason}; {advice}")


class SchemaMismatch(InfrastructureError):
    """The database's schema is newer than this version of kernos understands."""

    retryable = False


class Cancelled(BaseException):
    """Delivered into agent code at a step boundary when the run is cancelled.

    The agent may catch it to clean up (its further steps are journaled as usual); the run ends
    ``cancelled`` whatever the agent returns.
    """


class LeaseLost(BaseException):
    """This worker no longer owns the run (its lease expired and another worker took it).

    Guarantee 3: a worker that lost its lease commits nothing more for the run.
    """

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        super().__init__(
            f"lost the lease on run {run_id}: another worker owns it now; this worker stops "
            f"executing it and writes nothing more"
        )
