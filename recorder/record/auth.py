"""Where the JWT comes from: a fixed token, a token file (re-read when refused), or the token endpoint.

The supervisor owns the token; workers ask it for a fresh one when the server refuses theirs, and it
issues at most one new token per burst of requests, so N connections refused together cost one call.
No token or password ever reaches a log line, an exception message or a segment file.
"""

from __future__ import annotations

import asyncio
import ssl
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from recorder.errors import RuntimeFailure, UserError
from recorder.feed.token import TokenError, encode_token_request, parse_token_response
from recorder.redact import redact_url


class CredentialsRefused(RuntimeFailure):
    """The token endpoint said no to the username/password: retrying would only hammer it."""


class TokenUnavailable(Exception):
    """No fresher token can be had (a fixed token)."""


@dataclass(slots=True)
class TokenProvider:
    token: str = field(default="", repr=False)
    token_file: Path | None = None
    username: str = ""
    password: str = field(default="", repr=False)
    token_url: str = ""
    ca_file: str | None = None
    gen: int = 0
    issued_at: float = 0.0
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def __repr__(self) -> str:
        return f"TokenProvider(source={self.source}, gen={self.gen})"

    @property
    def source(self) -> str:
        if self.username:
            return f"credentials at {redact_url(self.token_url)}"
        if self.token_file is not None:
            return f"token file {self.token_file}"
        return "fixed token"

    async def initial(self) -> tuple[str, int]:
        if self.username:
            await self._issue_with_retries()
        elif self.token_file is not None:
            self.token = read_token_file(self.token_file)
            self._bump()
        elif self.token:
            self._bump()
        else:
            raise UserError("no token: give --token, IME_TOKEN, --token-file, or --username/--password")
        return self.token, self.gen

    async def refresh(self, used_gen: int) -> tuple[str, int]:
        """A token newer than `used_gen`; raises TokenUnavailable when none can be had."""
        async with self._lock:
            if self.gen > used_gen:
                # Another worker's request already brought a newer token: one issue per burst of refusals.
                return self.token, self.gen
            if self.username:
                await self._issue_with_retries()
                return self.token, self.gen
            if self.token_file is not None:
                fresh = read_token_file(self.token_file)
                if fresh != self.token:
                    self.token = fresh
                    self._bump()
                    return self.token, self.gen
            raise TokenUnavailable(f"the {self.source} cannot be refreshed")

    def _bump(self) -> None:
        self.gen += 1
        self.issued_at = time.monotonic()

    async def _issue_with_retries(self, attempts: int = 5) -> None:
        delay = 0.5
        for attempt in range(1, attempts + 1):
            try:
                self.token = await asyncio.get_running_loop().run_in_executor(None, self._issue)
                self._bump()
                return
            except CredentialsRefused:
                raise
            except RuntimeFailure:
                if attempt == attempts:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10)

    def _issue(self) -> str:
        return issue_token(self.token_url, self.username, self.password, self.ca_file)


def issue_token(token_url: str, username: str, password: str, ca_file: str | None = None,
                timeout: float = 10.0) -> str:
    """POST the form to the token endpoint and return the token (blocking; run it in a thread)."""
    request = urllib.request.Request(
        token_url,
        data=encode_token_request(username, password),
        headers={"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"},
        method="POST",
    )
    context = ssl.create_default_context(cafile=ca_file) if token_url.startswith("https:") else None
    shown = redact_url(token_url)
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            body = response.read(1 << 20)
    except urllib.error.HTTPError as exc:
        if exc.code in (400, 401, 403):
            raise CredentialsRefused(
                f"the token endpoint {shown} refused the username/password (HTTP {exc.code}); "
                "check IME_USERNAME/IME_PASSWORD") from None
        raise RuntimeFailure(f"the token endpoint {shown} answered HTTP {exc.code}; try again later") from None
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        raise RuntimeFailure(f"cannot reach the token endpoint {shown}: {reason}") from None
    try:
        return parse_token_response(body)
    except TokenError as exc:
        raise RuntimeFailure(f"the token endpoint {shown} gave no usable token: {exc}") from None


def read_token_file(path: Path) -> str:
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise UserError(f"cannot read token file {path}: {exc.strerror}") from None
    if not token:
        raise UserError(f"token file {path} is empty")
    if any(c.isspace() for c in token):
        raise UserError(f"token file {path} holds more than one word; put only the token in it")
    return token
