"""An OpenAI-compatible chat-completions generator (OpenAI, vLLM, llama.cpp's server, ...).

Async requests with bounded concurrency (`asyncio.Semaphore`), retries with exponential backoff on
rate limits, server errors, timeouts and connection errors, and counters for the run summary. The
key is read from the environment variable named by `ModelSpec.api_key_env` and is never written
anywhere. `ApiGenerator.connect` checks the endpoint, the key and the model name before any private
data is touched, and turns every failure into a `ModelError` that says how to fix it.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from synthdp.errors import ModelError
from synthdp.models.generator import Request

API_PREFIX = "openai:"


def is_api_model(model: str | None) -> bool:
    return bool(model) and str(model).startswith(API_PREFIX)


@dataclass
class ApiStats:
    requests: int = 0  # HTTP requests sent, retries included
    retries: int = 0
    failures: int = 0


@dataclass
class ApiGenerator:
    """Chat completions from `model` at `base_url`; one user turn per request."""

    model: str
    base_url: str | None
    api_key: str = field(repr=False)
    concurrency: int = 8
    max_retries: int = 6
    retry_base: float = 1.0  # seconds; the wait before retry i is retry_base * 2^i (with jitter)
    timeout: float = 120.0
    stats: ApiStats = field(default_factory=ApiStats)

    @property
    def name(self) -> str:
        return f"{API_PREFIX}{self.model}" + (f" at {self.base_url}" if self.base_url else "")

    # ------------------------------------------------------------------ construction and checks

    @classmethod
    def connect(cls, model: str, base_url: str | None, api_key_env: str = "OPENAI_API_KEY", *, concurrency: int = 8,
                max_retries: int = 6, retry_base: float = 1.0, timeout: float = 120.0,
                check_retries: int = 3) -> ApiGenerator:
        """Build the client and check endpoint, key and model name (bounded retries), or raise ModelError."""
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
        gen = cls(name, base_url, key, concurrency, max_retries, retry_base, timeout)
        gen.check(check_retries)
        return gen

    def _client(self, timeout: float | None = None) -> Any:
        from openai import AsyncOpenAI

        # Retries are ours (counted, with backoff); the client's own are off.
        return AsyncOpenAI(base_url=self.base_url, api_key=self.api_key, max_retries=0,
                           timeout=timeout or self.timeout)

    def check(self, retries: int = 3) -> None:
        asyncio.run(self._check(retries))

    async def _check(self, retries: int) -> None:
        import openai

        where = self.base_url or "the OpenAI API"
        client = self._client(timeout=min(self.timeout, 30.0))
        try:
            for attempt in range(retries + 1):
                try:
                    self.stats.requests += 1
                    listed = await client.models.list()
                    available = [m.id for m in listed.data]
                    break
                except (openai.APIConnectionError, openai.APITimeoutError, openai.RateLimitError,
                        openai.InternalServerError) as err:
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
                    available = []  # some servers have no model list; the request below checks the name
                    break
            if available and self.model not in available:
                shown = ", ".join(available[:10]) + (" ..." if len(available) > 10 else "")
                raise ModelError(f"The server {where} does not offer the model {self.model!r}. "
                                 f"It offers: {shown}. Pass one of them with --model openai:NAME.")
            try:
                await self._complete(client, Request("Say OK.", max_tokens=1, temperature=0.0), retries)
            except openai.NotFoundError as err:
                raise ModelError(f"The server {where} rejected the model {self.model!r} ({_reason(err)}). "
                                 "Pass a model name it serves with --model openai:NAME.") from None
            except openai.BadRequestError as err:
                raise ModelError(f"The server {where} rejected a 1-token test request for model {self.model!r} "
                                 f"({_reason(err)}). Check the model name.") from None
            except openai.AuthenticationError:
                raise ModelError(f"{where} rejected the API key (401). Check the key in the environment variable "
                                 "named by --api-key-env.") from None
            except (openai.APIConnectionError, openai.APITimeoutError, openai.APIStatusError) as err:
                raise ModelError(f"The model endpoint {where} failed a 1-token test request after retries "
                                 f"({_reason(err)}).") from None
        finally:
            await client.close()

    # ------------------------------------------------------------------ generation

    def _backoff(self, attempt: int) -> float:
        return self.retry_base * (2 ** attempt) * (0.5 + random.random())  # jitter: not a privacy mechanism

    async def _complete(self, client: Any, request: Request, retries: int | None = None) -> str:
        """One chat completion, retried with exponential backoff on 429, 5xx, timeouts and connection errors."""
        import openai

        retries = self.max_retries if retries is None else retries
        for attempt in range(retries + 1):
            try:
                self.stats.requests += 1
                response = await client.chat.completions.create(
                    model=self.model, messages=[{"role": "user", "content": request.prompt}], **request.params())
                choices = getattr(response, "choices", None) or []
                content = choices[0].message.content if choices and choices[0].message is not None else None
                return (content or "").strip()
            except (openai.RateLimitError, openai.InternalServerError, openai.APIConnectionError,
                    openai.APITimeoutError) as err:
                if attempt == retries:
                    self.stats.failures += 1
                    raise
                retry_after = _retry_after(err)
                self.stats.retries += 1
                await asyncio.sleep(retry_after if retry_after is not None else self._backoff(attempt))
        raise AssertionError("unreachable")

    def generate(self, requests: list[Request], on_answer: Callable[[int, str], None] | None = None) -> list[str]:
        try:
            return asyncio.run(self._generate(requests, on_answer))
        except ModelError:
            raise
        except Exception as err:
            import openai

            if isinstance(err, openai.OpenAIError):
                raise ModelError(f"The model endpoint {self.base_url or 'OpenAI'} failed after {self.max_retries} "
                                 f"retries ({_reason(err)}). Answers received so far are cached; rerun with "
                                 "--resume to continue without paying for them again.") from None
            raise

    async def _generate(self, requests: list[Request], on_answer: Callable[[int, str], None] | None) -> list[str]:
        client = self._client()
        semaphore = asyncio.Semaphore(self.concurrency)
        out: list[str] = [""] * len(requests)

        async def one(i: int, request: Request) -> None:
            async with semaphore:
                out[i] = await self._complete(client, request)
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
            await client.close()
        return out

    def summary(self) -> dict[str, int]:
        return {"api_requests": self.stats.requests, "api_retries": self.stats.retries}


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
