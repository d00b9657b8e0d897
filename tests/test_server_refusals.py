"""Every way a subscription is refused, as the API document's websockets client and a picows client see it:
close code 1008 with a reason (`--reject close`) or HTTP 403 on the upgrade (`--reject handshake`)."""

from __future__ import annotations

import orjson
import pytest
import websockets
from picows import WSHandshakeError
from sim_util import doc_client, picows_session, run, running_sim

from recorder.feed.endpoints import PATH_PREFIX, EndpointKind, build_url
from recorder.sim import SimHandle

BAD_TOKEN = "eyJhbGciOiJIUzI1NiJ9.not-ours.sig"


def cases(sim: SimHandle) -> list[tuple[str, str, str | None, str]]:
    """(case, url, token, expected reason)"""
    ids_url = sim.url(EndpointKind.ID, ["1001", "1002"])
    revoked = sim.server.issue_token()
    sim.server.revoke(sim.server.authority.check(revoked).token_id)
    return [
        ("no token", ids_url, None, "missing token"),
        ("bad token", ids_url, BAD_TOKEN, "invalid token"),
        ("expired token", ids_url, sim.server.issue_token(ttl=-1), "expired token"),
        ("revoked token", ids_url, revoked, "revoked token"),
        ("unknown id", sim.url(EndpointKind.ID, ["1001", "9999"]), sim.token, "unknown contract: 9999"),
        ("name on the id endpoint", sim.url(EndpointKind.ID, ["GOLD-APR"]), sim.token,
         "unknown contract: GOLD-APR"),
        ("unknown name", sim.url(EndpointKind.NAME, ["GOLD-APR", "NOPE & CO+"]), sim.token,
         "unknown contract: NOPE & CO+"),
        ("empty list", sim.url(EndpointKind.NAME, []), sim.token, "no contracts: give contract_name=..."),
    ]


async def websockets_outcome(url: str, token: str | None) -> tuple[str, int, str]:
    headers = {"Authorization": token} if token is not None else {}
    try:
        async with websockets.connect(url, additional_headers=headers, open_timeout=5) as ws:
            await ws.recv()
    except websockets.ConnectionClosedError as exc:
        rcvd = exc.rcvd
    except websockets.InvalidStatus as exc:
        return "status", exc.response.status_code, orjson.loads(exc.response.body)["error"]
    else:
        raise AssertionError("subscription was not refused")
    assert rcvd is not None, "closed without a CLOSE frame"
    return "close", rcvd.code, rcvd.reason


async def picows_outcome(url: str, token: str | None) -> tuple[str, int, str]:
    try:
        session = await picows_session(url, token, timeout=5)
    except WSHandshakeError as exc:
        response, body = exc.response, exc.raw_body
        if response is None or body is None:
            raise
        return "status", int(response.status), orjson.loads(body)["error"]
    assert not session.frames, "a refused client got data"
    assert session.close_code is not None
    return "close", session.close_code, session.close_reason


@pytest.mark.parametrize("client", [websockets_outcome, picows_outcome], ids=["websockets", "picows"])
@pytest.mark.parametrize("reject", ["close", "handshake"])
def test_every_refusal(reject, client):
    async def go() -> None:
        async with running_sim(contracts=5, rate=500, reject=reject) as sim:
            for case, url, token, reason in cases(sim):
                outcome = await client(url, token)
                expected = ("close", 1008, reason) if reject == "close" else ("status", 403, reason)
                assert outcome == expected, case
                assert BAD_TOKEN not in outcome[2] and sim.token not in outcome[2]
            stats = sim.stats()
            assert stats["open"] == 0 and stats["totals"]["sent"] == 0
            assert stats["refused"] == {"missing token": 1, "invalid token": 1, "expired token": 1,
                                        "revoked token": 1, "unknown contract": 3, "no contracts": 1}

    run(go())


def test_unknown_path_is_404_and_bearer_tokens_work():
    async def go() -> None:
        async with running_sim(contracts=3, rate=2000) as sim:
            base = sim.base_url.removesuffix(PATH_PREFIX)
            for path in ("/", "/contract/id?contract_id=1001", PATH_PREFIX + "/contract/code?contract_code=1"):
                with pytest.raises(websockets.InvalidStatus) as info:
                    async with websockets.connect(base + path, additional_headers={"Authorization": sim.token}):
                        pass
                assert info.value.response.status_code == 404
            seen = await doc_client(sim.url(EndpointKind.ID, ["1002"]), f"Bearer {sim.token}", 3)
            assert [s[1] for s in seen] == ["1002"] * 3

    run(go())


def test_long_reasons_are_cut_to_fit_a_close_frame():
    async def go() -> None:
        async with running_sim(contracts=3, rate=100) as sim:
            name = "قرارداد " * 40
            code, reason = (await picows_outcome(build_url(sim.base_url, EndpointKind.NAME, [name]), sim.token))[1:]
            assert code == 1008 and reason.startswith("unknown contract: قرارداد")
            assert len(reason.encode()) <= 123

    run(go())
