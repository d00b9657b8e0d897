"""The HTTP side: the token endpoint as curl and urllib use it, /stats, and wrong methods and paths."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import urllib.error
import urllib.request

import orjson
import pytest
from sim_util import doc_client, run, running_sim

from recorder.feed.endpoints import EndpointKind
from recorder.feed.token import encode_token_request, parse_token_response

CURL = shutil.which("curl")


def http(url: str, data: bytes | None = None, method: str | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_token_endpoint_with_urllib():
    async def go() -> None:
        async with running_sim(contracts=3, rate=2000, username="trader", password="p&ss=w+rd") as sim:
            form = {"Content-Type": "application/x-www-form-urlencoded"}
            status, headers, body = await asyncio.to_thread(
                http, sim.token_url, encode_token_request("trader", "p&ss=w+rd"), None, form)
            assert status == 200 and headers["Content-Type"] == "application/json"
            token = parse_token_response(body)
            assert token.count(".") == 2 and token != sim.token
            seen = await doc_client(sim.url(EndpointKind.NAME, sim.names[:2]), token, 4)
            assert {s[1] for s in seen} <= set(sim.names[:2]) and {s[2] for s in seen} == {"IME Stream"}

            for data, code, text in [
                (encode_token_request("trader", "wrong"), 401, "invalid username or password"),
                (encode_token_request("other", "p&ss=w+rd"), 401, "invalid username or password"),
                (b"username=trader", 400, "form fields username and password are required"),
            ]:
                status, _, body = await asyncio.to_thread(http, sim.token_url, data, None, form)
                assert (status, orjson.loads(body)) == (code, {"error": text})
                assert b"p&ss" not in body and b"wrong" not in body
            status, _, _ = await asyncio.to_thread(http, sim.token_url, b'{"username":"trader"}', None,
                                                   {"Content-Type": "application/json"})
            assert status == 415
            status, headers, _ = await asyncio.to_thread(http, sim.token_url)
            assert status == 405 and headers["Allow"] == "POST"
            status, _, _ = await asyncio.to_thread(http, sim.token_url.replace("/issue", "/isue"), b"x=1")
            assert status == 404
            status, _, _ = await asyncio.to_thread(http, sim.stats_url, b"x=1")
            assert status == 405
            stats = sim.stats()
            assert stats["tokens_issued"] == 2 and stats["refused"]["bad credentials"] == 2

    run(go())


@pytest.mark.skipif(CURL is None, reason="curl is not installed")
def test_token_endpoint_with_curl():
    async def go() -> None:
        async with running_sim(contracts=3, rate=100) as sim:
            def curl(*args: str) -> tuple[str, str]:
                out = subprocess.run([CURL, "-sS", "-w", "\n%{http_code}", *args], capture_output=True, text=True,
                                     timeout=10, check=True).stdout
                body, _, code = out.rpartition("\n")
                return code, body

            code, body = await asyncio.to_thread(
                curl, "-d", f"username={sim.username}", "-d", f"password={sim.password}", sim.token_url)
            assert code == "200" and sim.server.authority.check(orjson.loads(body)["Authorization"]).ok
            code, body = await asyncio.to_thread(curl, "-d", "username=demo", "-d", "password=nope", sim.token_url)
            assert code == "401" and "error" in orjson.loads(body)
            # Over 1 KiB curl sends `Expect: 100-continue`: the server must answer, not make curl wait.
            code, _ = await asyncio.to_thread(curl, "-d", "username=demo", "-d", "password=" + "x" * 5000,
                                              "--expect100-timeout", "30", "-m", "10", sim.token_url)
            assert code == "401"
            code, _ = await asyncio.to_thread(curl, "-H", "Transfer-Encoding: chunked", "-d", "username=demo",
                                              sim.token_url)
            assert code == "411"
            code, body = await asyncio.to_thread(curl, sim.stats_url)
            assert code == "200" and orjson.loads(body)["tokens_issued"] == 2  # the demo token and curl's

    run(go())


def test_stats_reports_connections_and_totals():
    async def go() -> None:
        async with running_sim(contracts=4, rate=4000) as sim:
            await doc_client(sim.url(EndpointKind.ID, ["1001", "1003"]), sim.token, 50)
            await doc_client(sim.url(EndpointKind.NAME), sim.token, 20)
            await asyncio.sleep(0.05)
            status, _, body = await asyncio.to_thread(http, sim.stats_url)
            stats = orjson.loads(body)
            assert status == 200 and stats["open"] == 0
            first, second = stats["connections"]
            assert (first["kind"], first["contracts"], second["kind"]) == ("id", ["1001", "1003"], "name")
            assert first["sent"] >= 50 and second["sent"] >= 20 and first["closed_by"] == "client"
            assert first["bytes"] > 600 * first["sent"]
            assert stats["totals"]["sent"] == first["sent"] + second["sent"]
            assert stats["source"]["mode"] == "paced" and stats["source"]["events"] >= 70
            assert sim.token not in body.decode()

    run(go())
