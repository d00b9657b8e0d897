"""Which contract a live message is about, fast: the hub routes every message and cannot parse each one.

`identifier_of` (orjson over the whole payload) costs several µs for a 700-byte message; at 100k msgs/s
that alone is most of a core. IME envelopes start the same way for every message of one contract
(`{"channel":"IME Stream","contractId":"1001",...`), so once `identifier_of` has named the contract of a
message, the leading bytes up to and including the identifier's value are remembered as a prefix for it;
later messages that start with a known prefix are routed by a slice and a dict lookup. A prefix is
learned only when the identifier is a top-level string value written without escapes, so a prefix
names the contract just as parsing would (for well-formed envelopes without duplicate keys).
"""

from __future__ import annotations

from recorder.feed.message import ID_FIELD, NAME_FIELD, identifier_of

_KEYS = (f'"{ID_FIELD}":"'.encode(), f'"{NAME_FIELD}":"'.encode())
MAX_PREFIX = 256
MAX_PREFIXES = 100_000  # contracts × envelope variants; past this, new prefixes are not learned


class Router:
    __slots__ = ("_lengths", "_prefixes", "parsed")

    def __init__(self) -> None:
        self._prefixes: dict[bytes, str] = {}
        self._lengths: list[int] = []
        self.parsed = 0  # messages that needed identifier_of

    def contract(self, payload: bytes) -> str | None:
        prefixes = self._prefixes
        for n in self._lengths:
            found = prefixes.get(payload[:n])
            if found is not None:
                return found
        self.parsed += 1
        contract = identifier_of(payload)
        if contract is not None and len(prefixes) < MAX_PREFIXES:
            self._learn(payload, contract)
        return contract

    def _learn(self, payload: bytes, contract: str) -> None:
        value = contract.encode()
        for key in _KEYS:
            at = payload.find(key, 0, MAX_PREFIX)
            if at < 0:
                continue
            start = at + len(key)
            end = start + len(value)
            # Top level only (one `{` before it, no array), the exact value, closed by its quote.
            head = payload[:at]
            if (head.count(b"{") == 1 and b"[" not in head and b'"data"' not in head
                    and payload[start:end] == value and payload[end:end + 1] == b'"'):
                n = end + 1
                self._prefixes[payload[:n]] = contract
                if n not in self._lengths:
                    self._lengths.append(n)
                return
