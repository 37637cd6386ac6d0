"""Shared plumbing for OpenAI-compatible chat APIs: retries with backoff, Retry-After, response checks.

Used by every caller of a chat model (dataset rewriting, the agentic verifiers), so they retry the
same errors the same way. `openai` is imported only when a request is made.
"""

from __future__ import annotations

import email.utils
import json
import logging
import math
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

log = logging.getLogger(__name__)

RETRYABLE_STATUS = {408, 409, 429}  # and every 5xx
FATAL_STATUS = {401, 403, 404}  # bad key / no access / unknown model: every request would fail
MAX_RETRY_AFTER = 300.0  # seconds; a longer Retry-After is capped


class MalformedCompletion(ValueError):
    """A chat-completions response body without usable assistant text."""


def completion_content(body: Any) -> str:
    """The assistant text of a chat-completions response body (a parsed JSON object).

    Raises:
        MalformedCompletion: not an object, no choices, no message, or content that is not a
            non-empty string (e.g. null after a refusal or content filter).
    """
    if not isinstance(body, dict):
        raise MalformedCompletion(f"response body is {type(body).__name__}, not a JSON object")
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices:
        raise MalformedCompletion(f"no choices in the response (choices={choices!r})")
    message = choices[0].get("message") if isinstance(choices[0], dict) else None
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, str):
        raise MalformedCompletion(
            f"message content is {type(content).__name__}, not a string "
            f"(finish_reason={choices[0].get('finish_reason')!r})"
        )
    if not content.strip():
        raise MalformedCompletion("empty message content")
    return content


def create_chat_completion(client: Any, request: dict) -> dict:
    """POST one chat-completions `request` with an openai.OpenAI `client`; the parsed JSON body.

    The raw response is parsed here (not by the SDK) so a malformed body is a MalformedCompletion,
    not an object with missing fields."""
    response = client.chat.completions.with_raw_response.create(**request)
    try:
        return json.loads(response.text)
    except ValueError:
        raise MalformedCompletion(f"response is not JSON: {response.text[:100]!r}") from None


def status_code(error: BaseException) -> int | None:
    return getattr(error, "status_code", None)


def is_retryable(error: BaseException) -> bool:
    import openai

    if isinstance(error, openai.APIConnectionError):  # includes APITimeoutError
        return True
    status = status_code(error)
    return status is not None and (status in RETRYABLE_STATUS or status >= 500)


def retry_after(error: BaseException) -> float | None:
    """Seconds the server asked to wait (Retry-After-Ms, or Retry-After as seconds or a date)."""
    headers = getattr(getattr(error, "response", None), "headers", None) or {}
    try:
        if headers.get("retry-after-ms") is not None:
            seconds = float(headers["retry-after-ms"]) / 1000
        elif headers.get("retry-after") is not None:
            value = headers["retry-after"]
            try:
                seconds = float(value)
            except ValueError:
                seconds = (email.utils.parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds()
        else:
            return None
    except (TypeError, ValueError):
        return None
    return seconds if math.isfinite(seconds) else None


def call_with_retries(
    call: Callable[[], Any],
    what: str,
    max_retries: int,
    base_delay: float,
    max_delay: float = 60.0,
    sleep: Callable[[float], None] = time.sleep,
) -> Any:
    """`call()`, retried up to `max_retries` times on timeouts, connection errors, 408/409/429 and 5xx.

    The wait before retry k (0-based) is the server's Retry-After if it sent one (capped at
    MAX_RETRY_AFTER), else min(max_delay, base_delay * 2**k) scaled by a random factor in [0.5, 1).
    Other errors, and the last retryable one, are raised. `what` names the call in the log.
    """
    for attempt in range(max_retries + 1):
        try:
            return call()
        except Exception as error:
            if attempt == max_retries or not is_retryable(error):
                raise
            asked = retry_after(error)
            delay = (
                min(max(asked, 0.0), MAX_RETRY_AFTER)
                if asked is not None
                else min(max_delay, base_delay * 2**attempt) * random.uniform(0.5, 1.0)
            )
            log.warning("%s: %s; retry %d/%d in %.2fs", what, short_error(error), attempt + 1, max_retries, delay)
            sleep(delay)


def short_error(error: BaseException) -> str:
    status = status_code(error)
    return f"{type(error).__name__}{f' (HTTP {status})' if status else ''}: {error}"[:300]
