"""(h) the goodput scenario of (g) through LiteLLM's Router; runs with ``.bench-venv``'s python.

``gateway.py`` (in kernos' venv) starts the simulator, installs the faults, and runs this script
with the job on standard input as JSON: the two simulated providers' base URLs and models, the
calls (prompt, streamed or not), the concurrency, ``num_retries`` and the timeout. The outcome
of every call (the text and finish reason it returned, or the exception it raised, and its
latency) goes to the file ``out`` names, as JSON; ``gateway.py`` scores it exactly as it scores
kernos' calls and counts the requests in the simulator's log. kernos is not imported here.

The Router is configured in the two ways LiteLLM documents for "this model, else that one"
(``config`` in the job), both with ``openai/<model>`` at the simulator's OpenAI route and
``anthropic/<model>`` at its Anthropic route and the job's ``timeout``; its retry delays,
cooldowns and allowed failures are its own defaults:

* ``fallbacks``: two model groups, ``primary`` and ``secondary``, with
  ``fallbacks=[{"primary": ["secondary"]}]`` and ``num_retries`` per group (2: three attempts
  per model, as kernos' ``max_attempts=3``);
* ``order``: one model group holding both deployments with ``order`` 1 and 2, which LiteLLM
  serves from the lowest order that is not cooling down, and ``num_retries`` for the call
  (5: the same six attempts in all that kernos may make over two models). A streamed call is read to its end by the
caller, as an agent would: an exception while reading is that call's failure.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from importlib import metadata
from typing import Any


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]


async def _call(router: Any, call: dict[str, Any]) -> dict[str, Any]:
    messages = [{"role": "user", "content": call["prompt"]}]
    start = time.perf_counter()
    try:
        if not call["stream"]:
            r = await router.acompletion(model="primary", messages=messages, max_tokens=256)
            choice = r.choices[0]
            text, finish = choice.message.content, choice.finish_reason
        else:
            stream = await router.acompletion(
                model="primary", messages=messages, max_tokens=256, stream=True
            )
            parts: list[str] = []
            finish = None
            async for chunk in stream:
                if not chunk.choices:
                    continue
                delta = chunk.choices[0].delta
                if delta is not None and delta.content:
                    parts.append(delta.content)
                finish = chunk.choices[0].finish_reason or finish
            text = "".join(parts)
    except Exception as exc:  # a failed call is a figure here, not a crash
        return {
            "text": None,
            "finish": None,
            "error": _error(exc),
            "latency": time.perf_counter() - start,
        }
    return {"text": text, "finish": finish, "error": None, "latency": time.perf_counter() - start}


async def _run(router: Any, calls: list[dict[str, Any]], concurrency: int) -> list[Any]:
    outcomes: list[Any] = [None] * len(calls)
    queue = list(enumerate(calls))
    queue.reverse()

    async def worker() -> None:
        while queue:
            i, call = queue.pop()
            outcomes[i] = await _call(router, call)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return outcomes


def _deployment(job: dict[str, Any], family: str) -> dict[str, Any]:
    return {
        "model": f"{family}/{job[f'{family}_model']}",
        "api_base": job[f"{family}_base"],
        "api_key": "sim",
    }


def _router(router_class: Any, job: dict[str, Any]) -> Any:
    """``fallbacks``: two model groups, the second the first's fallback, ``num_retries`` each.
    ``order``: one model group of both deployments, ``order`` 1 and 2 (the second is used while
    the first is cooling down), ``num_retries`` for the whole call."""
    primary, secondary = _deployment(job, "openai"), _deployment(job, "anthropic")
    if job["config"] == "fallbacks":
        return router_class(
            model_list=[
                {"model_name": "primary", "litellm_params": primary},
                {"model_name": "secondary", "litellm_params": secondary},
            ],
            fallbacks=[{"primary": ["secondary"]}],
            num_retries=job["num_retries"],
            timeout=job["timeout"],
        )
    return router_class(
        model_list=[
            {"model_name": "primary", "litellm_params": {**primary, "order": 1}},
            {"model_name": "primary", "litellm_params": {**secondary, "order": 2}},
        ],
        num_retries=job["num_retries"],
        timeout=job["timeout"],
    )


def _shape(job: dict[str, Any]) -> str:
    first = f"openai/{job['openai_model']}"
    second = f"anthropic/{job['anthropic_model']}"
    if job["config"] == "fallbacks":
        return f"Router: group primary [{first}], fallbacks=[primary -> secondary [{second}]]"
    return f"Router: group primary [{first} order=1, {second} order=2]"


def main() -> int:
    job = json.load(sys.stdin)
    # the price map ships with the package: no fetch from the network at import
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm
    from litellm import Router

    litellm.telemetry = False
    litellm.suppress_debug_info = True
    router = _router(Router, job)
    settings = (
        f"{_shape(job)}, num_retries={router.num_retries}, timeout={router.timeout:g}s, "
        f"retry_after={router.retry_after}s (min wait), allowed_fails={router.allowed_fails}, "
        f"cooldown_time={router.cooldown_time:g}s"
    )
    start = time.perf_counter()
    outcomes = asyncio.run(_run(router, job["calls"], job["concurrency"]))
    wall = time.perf_counter() - start
    with open(job["out"], "w") as f:
        json.dump(
            {
                "version": metadata.version("litellm"),
                "settings": settings,
                "wall": wall,
                "outcomes": outcomes,
            },
            f,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
