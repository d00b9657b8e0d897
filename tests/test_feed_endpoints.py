"""Subscription URLs: building, splitting, and parsing them back on the server side."""

from __future__ import annotations

import itertools
from urllib.parse import urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recorder.feed.endpoints import (
    DEFAULT_BASE_URL,
    PATH_PREFIX,
    EndpointKind,
    Subscription,
    SubscriptionError,
    UnknownPathError,
    build_url,
    parse_subscription,
    regroup,
    split_contracts,
)

NASTY = ["سکه-آزادی 1404/08", "CEMENT & STEEL+", "a%20b", "x#y", "k=v", "a+b", " lead", "trail ", "", "ü/?&"]


def target_of(url: str) -> str:
    parts = urlsplit(url)
    return parts.path + ("?" + parts.query if parts.query else "")


def test_kind_properties():
    assert (EndpointKind.ID.path, EndpointKind.ID.param, EndpointKind.ID.field) == \
        ("/contract/id", "contract_id", "contractId")
    assert (EndpointKind.NAME.path, EndpointKind.NAME.param, EndpointKind.NAME.field) == \
        ("/contract/name", "contract_name", "contractName")
    assert EndpointKind("id") is EndpointKind.ID
    assert DEFAULT_BASE_URL.endswith(PATH_PREFIX)


def test_build_url_matches_the_api_document_examples():
    assert build_url(DEFAULT_BASE_URL, EndpointKind.NAME, ["GOLD-APR", "CEMENT-MAY"]) == (
        "wss://core.hedgetech.ir/data-engine/ime/live/data/websocket/contract/name"
        "?contract_name=GOLD-APR&contract_name=CEMENT-MAY")
    assert build_url(DEFAULT_BASE_URL, EndpointKind.ID, ["1001", "1002"]) == (
        "wss://core.hedgetech.ir/data-engine/ime/live/data/websocket/contract/id"
        "?contract_id=1001&contract_id=1002")


def test_build_url_escapes_every_reserved_character_and_never_emits_a_bare_plus():
    url = build_url("ws://h:1/p/", EndpointKind.NAME, ["CEMENT & STEEL+", "سکه 1404/08", "100%#=?"])
    assert url == ("ws://h:1/p/contract/name?contract_name=CEMENT%20%26%20STEEL%2B"
                   "&contract_name=%D8%B3%DA%A9%D9%87%201404%2F08&contract_name=100%25%23%3D%3F")
    assert url.isascii() and "+" not in url


def test_build_url_edge_cases():
    assert build_url("ws://h/p", EndpointKind.ID, []) == "ws://h/p/contract/id"
    with pytest.raises(ValueError, match="query"):
        build_url("ws://h/p?x=1", EndpointKind.ID, ["1"])
    with pytest.raises(TypeError):
        build_url("ws://h/p", EndpointKind.ID, "1001")


def test_parse_subscription_accepts_both_paths_trailing_slash_and_bytes():
    assert parse_subscription(f"{PATH_PREFIX}/contract/id?contract_id=1001&contract_id=1002") == \
        Subscription(EndpointKind.ID, ("1001", "1002"))
    assert parse_subscription(f"{PATH_PREFIX}/contract/name/?contract_name=GOLD-APR".encode()) == \
        Subscription(EndpointKind.NAME, ("GOLD-APR",))
    assert parse_subscription(f"{PATH_PREFIX}/contract/id") == Subscription(EndpointKind.ID, ())


def test_parse_subscription_ignores_other_parameters_and_keeps_order_and_repeats():
    sub = parse_subscription(f"{PATH_PREFIX}/contract/id?x=1&contract_id=2&contract_name=3&&contract_id=1"
                             "&contract_id=2")
    assert sub.contracts == ("2", "1", "2")


def test_plus_is_a_literal_plus_and_percent_20_a_space():
    sub = parse_subscription(f"{PATH_PREFIX}/contract/name?contract_name=A+B&contract_name=A%20B")
    assert sub.contracts == ("A+B", "A B")


@pytest.mark.parametrize("path", ["/", "/contract/id", f"{PATH_PREFIX}/contract/ids", f"{PATH_PREFIX}/contract",
                                  f"{PATH_PREFIX}//contract/id", f"{PATH_PREFIX}/contract/id//"])
def test_unknown_paths(path):
    with pytest.raises(UnknownPathError):
        parse_subscription(path + "?contract_id=1")


def test_bad_encoding_is_a_subscription_error():
    with pytest.raises(SubscriptionError, match="UTF-8"):
        parse_subscription(f"{PATH_PREFIX}/contract/name?contract_name=%FF%FE")
    with pytest.raises(SubscriptionError, match="ASCII"):
        parse_subscription(f"{PATH_PREFIX}/contract/name?contract_name=سکه".encode())


@settings(max_examples=300)
@given(st.sampled_from(list(EndpointKind)), st.lists(st.text() | st.sampled_from(NASTY), max_size=12))
def test_round_trip_of_arbitrary_unicode_names(kind, contracts):
    url = build_url("ws://127.0.0.1:9" + PATH_PREFIX, kind, contracts)
    assert url.isascii()
    assert parse_subscription(target_of(url)) == Subscription(kind, tuple(contracts))


@settings(max_examples=200)
@given(st.lists(st.text(max_size=40) | st.sampled_from(NASTY), max_size=60), st.integers(600, 2000),
       st.none() | st.integers(1, 7))
def test_split_preserves_order_and_fits(contracts, max_len, per_conn):
    # 600 fits any one contract here: 40 characters of at most 12 escaped bytes each, plus the base.
    base = "wss://example.org" + PATH_PREFIX
    groups = split_contracts(base, EndpointKind.NAME, contracts, max_url_length=max_len,
                             max_per_connection=per_conn)
    assert [c for g in groups for c in g] == contracts
    for g in groups:
        assert g
        assert len(build_url(base, EndpointKind.NAME, g)) <= max_len
        assert per_conn is None or len(g) <= per_conn
    # Greedy: no group could have taken the next group's first contract.
    for g, nxt in itertools.pairwise(groups):
        bigger = (*g, nxt[0])
        assert len(build_url(base, EndpointKind.NAME, bigger)) > max_len or \
            (per_conn is not None and len(bigger) > per_conn)


def test_split_of_many_ids_and_a_contract_that_can_never_fit():
    ids = [str(1000 + i) for i in range(1000)]
    groups = split_contracts(DEFAULT_BASE_URL, EndpointKind.ID, ids)
    assert len(groups) > 1 and sum(map(len, groups)) == 1000
    assert all(len(build_url(DEFAULT_BASE_URL, EndpointKind.ID, g)) <= 4096 for g in groups)
    assert split_contracts(DEFAULT_BASE_URL, EndpointKind.ID, ids[:10], max_per_connection=4) == \
        [tuple(ids[0:4]), tuple(ids[4:8]), tuple(ids[8:10])]
    assert split_contracts(DEFAULT_BASE_URL, EndpointKind.ID, []) == []
    with pytest.raises(ValueError, match="does not fit in a URL of 200 characters"):
        split_contracts(DEFAULT_BASE_URL, EndpointKind.NAME, ["ok", "س" * 100], max_url_length=200)


# --- regroup: a reload keeps every group it can (issue 21) ---------------------------------------------------


def test_regroup_changes_only_the_groups_a_reload_touches():
    ids = [str(1000 + i) for i in range(8)]
    groups = split_contracts(DEFAULT_BASE_URL, EndpointKind.ID, ids, max_per_connection=3)
    assert groups == [tuple(ids[0:3]), tuple(ids[3:6]), tuple(ids[6:8])]
    # Nothing changed: the same groups.
    assert regroup(DEFAULT_BASE_URL, EndpointKind.ID, groups, ids, max_per_connection=3) == groups
    # One added contract: split_contracts of the new list would keep these groups only because it went last; put
    # first, it would shift every boundary. regroup fills the group with room and touches no other.
    added = ["0999", *ids]
    assert split_contracts(DEFAULT_BASE_URL, EndpointKind.ID, added, max_per_connection=3)[1] != groups[1]
    assert regroup(DEFAULT_BASE_URL, EndpointKind.ID, groups, added, max_per_connection=3) == \
        [groups[0], groups[1], (*groups[2], "0999")]
    # A removal and an addition: the addition goes into the group that changes anyway.
    changed = [c for c in ids if c != "1004"] + ["1100"]
    assert regroup(DEFAULT_BASE_URL, EndpointKind.ID, groups, changed, max_per_connection=3) == \
        [groups[0], ("1003", "1005", "1100"), groups[2]]
    # Every contract of a group removed: the added ones take its place (its connection is replaced anyway).
    gone = [c for c in ids if c not in groups[1]] + ["2001", "2002"]
    assert regroup(DEFAULT_BASE_URL, EndpointKind.ID, groups, gone, max_per_connection=3) == \
        [groups[0], ("2001", "2002"), groups[2]]
    assert regroup(DEFAULT_BASE_URL, EndpointKind.ID, groups, ids[:3] + ids[6:], max_per_connection=3) == \
        [groups[0], (), groups[2]]
    # No room left: a new group for what does not fit.
    assert regroup(DEFAULT_BASE_URL, EndpointKind.ID, groups, [*ids, "3000", "3001", "3002"],
                   max_per_connection=3) == [groups[0], groups[1], (*groups[2], "3000"), ("3001", "3002")]
    with pytest.raises(ValueError, match="does not fit in a URL of 200 characters"):
        regroup(DEFAULT_BASE_URL, EndpointKind.NAME, [("ok",)], ["ok", "س" * 100], max_url_length=200)


@settings(max_examples=200)
@given(st.lists(st.sampled_from([str(1000 + i) for i in range(40)]), unique=True, max_size=30),
       st.lists(st.sampled_from([str(1000 + i) for i in range(40)]), unique=True, max_size=30),
       st.integers(150, 400), st.none() | st.integers(1, 6))
def test_regroup_keeps_unchanged_groups_and_fits(before, after, max_len, per_conn):
    base = "wss://example.org" + PATH_PREFIX
    groups = split_contracts(base, EndpointKind.ID, before, max_url_length=max_len, max_per_connection=per_conn)
    got = regroup(base, EndpointKind.ID, groups, after, max_url_length=max_len, max_per_connection=per_conn)
    assert sorted(c for g in got for c in g) == sorted(after)  # every wanted contract once, nothing else
    assert len(got) >= len(groups)
    for old, new in zip(groups, got, strict=False):
        kept = [c for c in old if c in after]
        assert list(new[:len(kept)]) == kept  # a group keeps its contracts, in order, and only gains at the end
        if set(old) <= set(after) and set(new) != set(old):
            assert set(new) > set(old)  # an untouched group changes only by taking added contracts
    for g in got[len(groups):]:
        assert g
    for g in got:
        assert not g or len(build_url(base, EndpointKind.ID, g)) <= max_len
        assert per_conn is None or len(g) <= per_conn
    # An added contract changes at most one existing group; a removed one only its own.
    added = [c for c in after if c not in before]
    removed = {c for c in before if c not in after}
    touched = [i for i, (old, new) in enumerate(zip(groups, got, strict=False)) if set(old) != set(new)]
    losing = {i for i, old in enumerate(groups) if removed & set(old)}
    assert len(set(touched) - losing) <= len(added)
