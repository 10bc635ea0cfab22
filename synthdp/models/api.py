"""An OpenAI-compatible chat-completions generator (OpenAI, vLLM, llama.cpp's server, ...), over one
endpoint or several serving the same model.

Async requests, at most `concurrency` in flight PER ENDPOINT (two servers: twice the requests in
flight). Each request goes to the least busy endpoint with a free slot (ties in turn, so equal
servers share requests round-robin); answers come back in request order whichever endpoint gave
them. A request that fails with a rate limit, a server error, a timeout or a connection error is
tried again, on another endpoint first: only when every endpoint has failed it does it wait
(exponential backoff, or the server's Retry-After) before trying them again, at most `max_retries`
retries in all. An endpoint that failed is avoided for new requests for a while (doubling with each
failure in a row, at most a minute) while another one is well. With one endpoint all this is the
retry-with-backoff loop it always was.

The key is read from the environment variable named by `ModelSpec.api_key_env` and is never
written anywhere. `ApiGenerator.connect` checks every endpoint, the key and the model name before any
private data is touched, and turns every failure into a `ModelError` that names the endpoint.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from synthdp.errors import ModelError
from synthdp.models.generator import Request

API_PREFIX = "openai:"
MAX_REST = 60.0  # seconds: the longest an endpoint that keeps failing is avoided before it is tried again
log = logging.getLogger(__name__)


def is_api_model(model: str | None) -> bool:
    return bool(model) and str(model).startswith(API_PREFIX)


@dataclass
class ApiStats:
    requests: int = 0  # HTTP requests sent, retries included
    retries: int = 0
    failures: int = 0
    answered: dict[str, int] = field(default_factory=dict)  # answers per endpoint


def _retryable() -> tuple[type[Exception], ...]:
    import openai

    return (openai.RateLimitError, openai.InternalServerError, openai.APIConnectionError, openai.APITimeoutError)


class _Pool:
    """Which endpoint a request goes to, and how busy and well each one is (one event loop, no locks).

    `acquire(tried)` picks, among the endpoints this request has not failed on (all of them once it
    has failed on every one) and of those the ones not resting after a failure (all, when every one
    is resting), the least busy with fewer than `limit` requests in flight, ties in turn; it waits
    for a slot when none is free."""

    def __init__(self, clients: Sequence[Any], limit: int, retry_base: float) -> None:
        self.clients = list(clients)
        self.limit, self.retry_base = limit, retry_base
        n = len(self.clients)
        self.busy, self.answered, self.failures_in_row, self.rest_until = [0] * n, [0] * n, [0] * n, [0.0] * n
        self.turn = 0
        self.changed = asyncio.Event()

    def __len__(self) -> int:
        return len(self.clients)

    def _pick(self, tried: set[int]) -> int | None:
        n, now = len(self), time.monotonic()
        untried = [j for j in range(n) if j not in tried] or list(range(n))
        well = [j for j in untried if self.rest_until[j] <= now] or untried
        free = [j for j in well if self.busy[j] < self.limit]
        if not free:
            return None
        return min(free, key=lambda j: (self.busy[j], (j - self.turn) % n))

    async def acquire(self, tried: set[int]) -> int:
        while (j := self._pick(tried)) is None:
            self.changed.clear()
            await self.changed.wait()
        self.busy[j] += 1
        self.turn = (j + 1) % len(self)
        return j

    def release(self, j: int, ok: bool) -> None:
        self.busy[j] -= 1
        if ok:
            self.failures_in_row[j], self.rest_until[j] = 0, 0.0
        else:
            self.failures_in_row[j] += 1
            rest = min(MAX_REST, self.retry_base * 2 ** min(self.failures_in_row[j] - 1, 16))
            self.rest_until[j] = time.monotonic() + rest
        self.changed.set()


@dataclass
class ApiGenerator:
    """Chat completions from `model` at each of `base_urls` (None: the OpenAI API); one user turn per request."""

    model: str
    base_urls: tuple[str | None, ...]
    api_key: str = field(repr=False)
    concurrency: int = 8  # requests in flight per endpoint
    max_retries: int = 6
    retry_base: float = 1.0  # seconds; the wait before retry i is retry_base * 2^i (with jitter)
    timeout: float = 120.0
    stats: ApiStats = field(default_factory=ApiStats)

    def __post_init__(self) -> None:
        if self.base_urls is None or isinstance(self.base_urls, str):  # one endpoint given as before
            self.base_urls = (self.base_urls,)
        self.base_urls = tuple(self.base_urls) or (None,)

    @property
    def name(self) -> str:
        urls = [u for u in self.base_urls if u]
        return f"{API_PREFIX}{self.model}" + (f" at {', '.join(urls)}" if urls else "")

    @property
    def where(self) -> str:
        return ", ".join(_where(u) for u in self.base_urls)

    # ------------------------------------------------------------------ construction and checks

    @classmethod
    def connect(cls, model: str, base_url: str | Sequence[str] | None, api_key_env: str = "OPENAI_API_KEY", *,
                concurrency: int = 8, max_retries: int = 6, retry_base: float = 1.0, timeout: float = 120.0,
                check_retries: int = 3) -> ApiGenerator:
        """Build the clients and check every endpoint, the key and the model name (bounded retries), or raise
        ModelError. `base_url` is one endpoint, several (a sequence), or None for the OpenAI API."""
        name = model.removeprefix(API_PREFIX)
        if not name:
            raise ModelError("`--model openai:NAME` needs a model name after `openai:`. Example: --model openai:gpt-4o-mini")
        key = os.environ.get(api_key_env, "")
        if not key:
            raise ModelError(
                f"No API key: the environment variable {api_key_env} is not set. Set it (any non-empty value for a "
                "server without authentication, such as a local llama.cpp server), or name another variable with "
                "--api-key-env."
            )
        gen = cls(name, base_url, key, concurrency, max_retries, retry_base, timeout)  # type: ignore[arg-type]
        gen.check(check_retries)
        return gen

    def _client(self, base_url: str | None, timeout: float | None = None) -> Any:
        from openai import AsyncOpenAI

        # Retries are ours (counted, with backoff, over the endpoints); the client's own are off.
        return AsyncOpenAI(base_url=base_url, api_key=self.api_key, max_retries=0, timeout=timeout or self.timeout)

    def check(self, retries: int = 3) -> None:
        asyncio.run(self._check(retries))

    async def _check(self, retries: int) -> None:
        """Every endpoint at once; the first failure, in the order the endpoints were given, is raised."""
        results = await asyncio.gather(*(self._check_endpoint(k, retries) for k in range(len(self.base_urls))),
                                       return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def _check_endpoint(self, k: int, retries: int) -> None:
        """Endpoint k lists the model (when it lists models) and answers a 1-token request for it."""
        import openai

        base_url = self.base_urls[k]
        where = _where(base_url)
        which = f" (endpoint {k + 1} of {len(self.base_urls)})" if len(self.base_urls) > 1 else ""
        client = self._client(base_url, timeout=min(self.timeout, 30.0))
        try:
            available = await self._list_models(client, where + which, retries)
            if available is None:
                log.warning("The server %s does not list its models; a 1-token request checks that it serves %r.",
                            where, self.model)
            elif self.model not in available:
                shown = ", ".join(available[:10]) + (" ..." if len(available) > 10 else "")
                raise ModelError(f"The server {where}{which} does not offer the model {self.model!r}. "
                                 f"It offers: {shown}. Pass one of them with --model openai:NAME"
                                 + (", and give only endpoints that serve it." if which else "."))
            pool = _Pool([client], 1, self.retry_base)
            try:
                await self._complete(pool, Request("Say OK.", max_tokens=1, temperature=0.0), retries)
            except openai.NotFoundError as err:
                raise ModelError(f"The server {where}{which} rejected the model {self.model!r} ({_reason(err)}). "
                                 "Pass a model name it serves with --model openai:NAME.") from None
            except openai.BadRequestError as err:
                raise ModelError(f"The server {where}{which} rejected a 1-token test request for model "
                                 f"{self.model!r} ({_reason(err)}). Check the model name.") from None
            except openai.AuthenticationError:
                raise ModelError(f"{where}{which} rejected the API key (401). Check the key in the environment "
                                 "variable named by --api-key-env.") from None
            except (openai.APIConnectionError, openai.APITimeoutError, openai.APIStatusError) as err:
                raise ModelError(f"The model endpoint {where}{which} failed a 1-token test request after retries "
                                 f"({_reason(err)}).") from None
        finally:
            await client.close()

    async def _list_models(self, client: Any, where: str, retries: int) -> list[str] | None:
        """The model names the server lists, or None for a server without a model list."""
        import openai

        for attempt in range(retries + 1):
            try:
                self.stats.requests += 1
                listed = await client.models.list()
                return [m.id for m in listed.data] or None
            except _retryable() as err:
                if attempt == retries:
                    raise ModelError(
                        f"Cannot reach the model endpoint {where} after {retries + 1} attempts ({_reason(err)}). "
                        "Check --api-base (it usually ends in /v1) and that the server is running."
                    ) from None
                await asyncio.sleep(self._backoff(attempt))
            except openai.AuthenticationError:
                raise ModelError(f"{where} rejected the API key (401). Check the key in the environment variable "
                                 "named by --api-key-env.") from None
            except (openai.NotFoundError, openai.APIStatusError):
                return None  # some servers have no model list; the 1-token request checks the name
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------ generation

    def _backoff(self, attempt: int) -> float:
        return self.retry_base * (2 ** attempt) * (0.5 + random.random())  # jitter: not a privacy mechanism

    async def _complete(self, pool: _Pool, request: Request, retries: int | None = None) -> str:
        """One chat completion on the pool's endpoints, tried again (another endpoint first; backoff once every
        endpoint has failed it) on 429, 5xx, timeouts and connection errors, at most `retries` times."""
        retries = self.max_retries if retries is None else retries
        tried: set[int] = set()
        for attempt in range(retries + 1):
            j = await pool.acquire(tried)
            try:
                self.stats.requests += 1
                text = await self._ask(pool.clients[j], request)
            except _retryable() as err:
                pool.release(j, ok=False)
                if attempt == retries:
                    self.stats.failures += 1
                    raise
                self.stats.retries += 1
                tried.add(j)
                if len(tried) == len(pool):  # every endpoint failed this request: wait, then try them all again
                    tried.clear()
                    retry_after = _retry_after(err)
                    await asyncio.sleep(retry_after if retry_after is not None else self._backoff(attempt))
                continue
            except BaseException:
                pool.release(j, ok=True)
                raise
            pool.release(j, ok=True)
            pool.answered[j] += 1
            return text
        raise AssertionError("unreachable")

    async def _ask(self, client: Any, request: Request) -> str:
        response = await client.chat.completions.create(
            model=self.model, messages=[{"role": "user", "content": request.prompt}], **request.params())
        choices = getattr(response, "choices", None) or []
        content = choices[0].message.content if choices and choices[0].message is not None else None
        return (content or "").strip()

    def generate(self, requests: list[Request], on_answer: Callable[[int, str], None] | None = None) -> list[str]:
        try:
            return asyncio.run(self._generate(requests, on_answer))
        except ModelError:
            raise
        except Exception as err:
            import openai

            if isinstance(err, openai.OpenAIError):
                raise ModelError(f"The model endpoint(s) {self.where} failed after {self.max_retries} "
                                 f"retries ({_reason(err)}). Answers received so far are cached; rerun with "
                                 "--resume to continue without paying for them again.") from None
            raise

    async def _generate(self, requests: list[Request], on_answer: Callable[[int, str], None] | None) -> list[str]:
        pool = _Pool([self._client(u) for u in self.base_urls], self.concurrency, self.retry_base)
        out: list[str] = [""] * len(requests)

        async def one(i: int, request: Request) -> None:
            out[i] = await self._complete(pool, request)
            if on_answer is not None:
                on_answer(i, out[i])

        try:
            tasks = [asyncio.create_task(one(i, r)) for i, r in enumerate(requests)]
            try:
                await asyncio.gather(*tasks)
            except BaseException:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise
        finally:
            for url, client, count in zip(self.base_urls, pool.clients, pool.answered):
                self.stats.answered[_where(url)] = self.stats.answered.get(_where(url), 0) + count
                await client.close()
        return out

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"api_requests": self.stats.requests, "api_retries": self.stats.retries}
        if len(self.base_urls) > 1:
            out["api_answers_per_endpoint"] = ", ".join(
                f"{_where(u)}: {self.stats.answered.get(_where(u), 0)}" for u in self.base_urls)
        return out


def _where(base_url: str | None) -> str:
    return base_url or "the OpenAI API"


def _reason(err: Exception) -> str:
    status = getattr(err, "status_code", None)
    text = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
    return f"HTTP {status}: {text}" if status else f"{type(err).__name__}: {text}"


def _retry_after(err: Exception) -> float | None:
    """Seconds from a Retry-After header, capped at 60, when the server sent one."""
    response = getattr(err, "response", None)
    value = response.headers.get("retry-after") if response is not None else None
    try:
        return min(60.0, max(0.0, float(value))) if value is not None else None
    except ValueError:
        return None
