"""IME WebSocket endpoints: the two subscription URLs, built by clients and parsed by servers.

Percent-encoding is the one subtle part. IME contract names are free text (Persian letters, spaces,
`/`, `&`, `+`, `#`, `%`, `=`), so every character outside RFC 3986's unreserved set is escaped with
`urllib.parse.quote(name, safe="")`. The server side decodes with plain `unquote` semantics, which makes
the pair an exact inverse. In particular a `+` in a query value is a literal plus, never a space: the
API document describes raw repeated query parameters, not HTML form encoding, so nothing implies the
`application/x-www-form-urlencoded` rule that turns `+` into a space. `build_url` never emits a bare `+`
(it writes `%2B`), so clients built on it are unaffected either way.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import quote, unquote

from recorder.model.settings import DEFAULTS

DEFAULT_BASE_URL = DEFAULTS.connection.base_url
PATH_PREFIX = "/data-engine/ime/live/data/websocket"
TOKEN_PATH = "/auth/user/token/issue"


class EndpointKind(enum.StrEnum):
    """Which identifier a subscription uses; it decides the path, the query key and the message field."""

    ID = "id"
    NAME = "name"

    @property
    def path(self) -> str:
        return f"/contract/{self.value}"

    @property
    def param(self) -> str:
        return f"contract_{self.value}"

    @property
    def field(self) -> str:
        return "contractId" if self is EndpointKind.ID else "contractName"


class SubscriptionError(ValueError):
    """A request target that is not a valid IME subscription."""


class UnknownPathError(SubscriptionError):
    """The path is neither `.../contract/id` nor `.../contract/name`: a server answers 404."""


@dataclass(frozen=True, slots=True)
class Subscription:
    kind: EndpointKind
    contracts: tuple[str, ...]


def _endpoint(base_url: str, kind: EndpointKind | str) -> str:
    kind = EndpointKind(kind)
    if "?" in base_url or "#" in base_url:
        raise ValueError("base URL must not contain a query or fragment")
    return base_url.rstrip("/") + kind.path


def _query_item(kind: EndpointKind, contract: str) -> str:
    return f"{EndpointKind(kind).param}={quote(contract, safe='')}"


def build_url(base_url: str, kind: EndpointKind | str, contracts: Sequence[str]) -> str:
    """The subscription URL: `base_url` + `/contract/<kind>` + one repeated query parameter per contract.

    An empty `contracts` gives the bare endpoint (which a server refuses); order and duplicates are kept.
    """
    if isinstance(contracts, str):
        raise TypeError("contracts must be a sequence of strings, not one string")
    url = _endpoint(base_url, kind)
    if not contracts:
        return url
    return url + "?" + "&".join(_query_item(kind, c) for c in contracts)


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_grouping(contracts: Sequence[str], max_per_connection: int | None) -> None:
    if isinstance(contracts, str):
        raise TypeError("contracts must be a sequence of strings, not one string")
    if max_per_connection is not None and max_per_connection < 1:
        raise ValueError("max_per_connection must be at least 1")


def _item_length(kind: EndpointKind | str, contract: str, base_len: int, max_url_length: int) -> int:
    """The characters `contract`'s query item adds; ValueError when even a URL of it alone is too long,
    since no grouping can subscribe it."""
    item = len(_query_item(EndpointKind(kind), contract))
    if base_len + item > max_url_length:
        raise ValueError(
            f"contract {_short(contract)!r} does not fit in a URL of {max_url_length} characters "
            f"(it alone needs {base_len + item})"
        )
    return item


def split_contracts(
    base_url: str,
    kind: EndpointKind | str,
    contracts: Sequence[str],
    *,
    max_url_length: int = DEFAULTS.connection.max_url_length,
    max_per_connection: int | None = None,
) -> list[tuple[str, ...]]:
    """Consecutive groups of `contracts`, in order, each of whose URL fits in `max_url_length` characters.

    Servers and proxies cap the request line (commonly 4-8 KiB), so a long list needs several connections.
    A contract whose URL alone is too long cannot be subscribed at all: ValueError.
    """
    _check_grouping(contracts, max_per_connection)
    base_len = len(_endpoint(base_url, kind)) + 1  # the "?"
    groups: list[tuple[str, ...]] = []
    current: list[str] = []
    length = base_len
    for contract in contracts:
        item = _item_length(kind, contract, base_len, max_url_length)
        added = item + (1 if current else 0)  # the "&" separator
        full = max_per_connection is not None and len(current) >= max_per_connection
        if current and (length + added > max_url_length or full):
            groups.append(tuple(current))
            current, length, added = [], base_len, item
        current.append(contract)
        length += added
    if current:
        groups.append(tuple(current))
    return groups


class _Refill:
    """The current groups during a reload, trimmed to the contracts still wanted, taking in added ones: each
    group's URL length so far, and whether its list changed (then its connection is replaced anyway)."""

    def __init__(self, groups: Sequence[Sequence[str]], wanted: dict[str, None], kind: EndpointKind, base_len: int,
                 max_url_length: int, max_per_connection: int | None) -> None:
        self.kept = [[c for c in g if c in wanted] for g in groups]
        self.lengths = [base_len + sum(len(_query_item(kind, c)) for c in g) + max(0, len(g) - 1) for g in self.kept]
        self.changed = [len(k) != len(g) for k, g in zip(self.kept, groups, strict=True)]
        self.max_url_length = max_url_length
        self.max_per_connection = max_per_connection

    def place(self, contract: str, item: int) -> bool:
        """Put `contract` (its query item `item` characters long) in a group with room, if there is one."""
        # A group that changes anyway first (it needs a new connection already), then any with room.
        for i in sorted(range(len(self.kept)), key=lambda i: (not self.changed[i], i)):
            group = self.kept[i]
            added_len = item + (1 if group else 0)  # the "&" separator
            full = self.max_per_connection is not None and len(group) >= self.max_per_connection
            if not full and self.lengths[i] + added_len <= self.max_url_length:
                group.append(contract)
                self.lengths[i] += added_len
                self.changed[i] = True
                return True
        return False


def regroup(
    base_url: str,
    kind: EndpointKind | str,
    groups: Sequence[Sequence[str]],
    contracts: Sequence[str],
    *,
    max_url_length: int = DEFAULTS.connection.max_url_length,
    max_per_connection: int | None = None,
) -> list[tuple[str, ...]]:
    """Connection groups for `contracts` that keep the current `groups` wherever they can (a reload).

    Entry i, for each of the current groups, is groups[i] without the contracts no longer wanted (possibly
    empty) and with added contracts if it had room; the entries after those are new groups for added contracts
    that fit nowhere. Every group has a connection to the server, and a group whose list changes needs a new one,
    so nothing moves that need not: an added contract goes into a group that changes anyway (it lost one) if it
    fits, then into any group with room, then into a new group; a removed contract changes only its own group.
    (`split_contracts` on the new list would shift every group's boundary after the first addition.)
    """
    _check_grouping(contracts, max_per_connection)
    wanted = dict.fromkeys(contracts)
    base_len = len(_endpoint(base_url, kind)) + 1  # the "?"
    kind = EndpointKind(kind)
    refill = _Refill(groups, wanted, kind, base_len, max_url_length, max_per_connection)
    present = {c for g in refill.kept for c in g}
    leftover: list[str] = []
    for contract in (c for c in wanted if c not in present):
        if not refill.place(contract, _item_length(kind, contract, base_len, max_url_length)):
            leftover.append(contract)
    new = split_contracts(base_url, kind, leftover, max_url_length=max_url_length,
                          max_per_connection=max_per_connection)
    return [tuple(g) for g in refill.kept] + new


def _decode(text: str) -> str:
    try:
        return unquote(text, errors="strict")
    except UnicodeDecodeError:
        raise SubscriptionError(f"query value {_short(text)!r} is not valid percent-encoded UTF-8") from None


def parse_subscription(target: str | bytes) -> Subscription:
    """The subscription an HTTP request target (`/path?query`) asks for; the inverse of `build_url`.

    The path must be PATH_PREFIX + `/contract/id` or `/contract/name` (one trailing slash tolerated),
    else UnknownPathError. Query parameters other than the kind's own are ignored; an empty list is
    returned as such (refusing it is the server's policy, not a parse error).
    """
    if isinstance(target, bytes):
        try:
            target = target.decode("ascii")
        except UnicodeDecodeError:
            raise SubscriptionError("request target is not ASCII (contract names must be percent-encoded)") \
                from None
    path, _, query = target.partition("?")
    path = path.partition("#")[0]
    if path.endswith("/") and len(path) > 1:
        path = path[:-1]
    kind = next((k for k in EndpointKind if path == PATH_PREFIX + k.path), None)
    if kind is None:
        raise UnknownPathError(f"unknown endpoint path {_short(path)!r}")
    contracts: list[str] = []
    if query:
        for item in query.split("&"):
            if not item:
                continue
            key, _, value = item.partition("=")
            if _decode(key) == kind.param:
                contracts.append(_decode(value))
    return Subscription(kind, tuple(contracts))
