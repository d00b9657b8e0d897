"""`ime-replay --serve --send-timeout`: a client that never reads is cut, and the replay goes on for the others."""

from __future__ import annotations

import asyncio
import re

import orjson
from segment_util import ime_payload, write_records
from test_replay_e2e import ReplayServer, collect, serve  # noqa: F401  (serve is a fixture)
from test_server_backpressure import stalled_client

S = 1_000_000_000
T0 = 1_764_000_000 * S
READERS = (("1001",), ("1002", "1003"), ("1001", "1002", "1003"))


def big_recording(directory, n: int = 24_000) -> list[bytes]:
    """~21 MB in 2 s of recording, after 1.5 s of quiet (on a contract nobody asks for) so that every client
    is subscribed before the data starts; the stalled client alone cannot absorb it (8 MB + socket buffers)."""
    records = [(T0, 1, 1, ime_payload(0, "1004"))]
    payloads = []
    for i in range(n):
        p = ime_payload(i, ("1001", "1002", "1003")[i % 3])
        p = p[:-1] + b',"pad":"' + b"x" * 700 + b'"}'
        payloads.append(p)
        records.append((T0 + int(1.5 * S) + i * 2 * S // n, 1, 1, p))
    write_records(directory, records, frame_bytes=256 << 10,
                  meta={"contracts": ["1001", "1002", "1003", "1004"], "endpoint": "id"})
    return payloads


def test_a_client_that_never_reads_is_cut_and_the_others_get_everything(tmp_path, serve):  # noqa: F811
    payloads = big_recording(tmp_path / "rec")
    server: ReplayServer = serve(str(tmp_path / "rec"), "--serve", "127.0.0.1:0", "--speed", "1x",
                                 "--send-timeout", "1")

    async def clients() -> list[tuple[list[bytes], int | None]]:
        # The stalled client subscribes first (it starts the clock) and never reads a byte.
        _, _, writer = await stalled_client(server.url("1001", "1002", "1003"), "any")
        try:
            return await asyncio.gather(*(collect(server.url(*contracts)) for contracts in READERS))
        finally:
            writer.close()

    results = asyncio.run(asyncio.wait_for(clients(), 120))
    assert server.proc.wait(30) == 0, server.stderr
    for contracts, (got, code) in zip(READERS, results, strict=True):
        wanted = [p for p in payloads if orjson.loads(p)["contractId"] in contracts]
        assert code == 1000, server.stderr
        assert len(got) == len(wanted) and got == wanted, f"reader {contracts}: got {len(got)} of {len(wanted)}"
    report = server.stderr
    assert re.search(r"cut 1 client\(s\) that could not keep up \(close 1013, too slow: could not take more data "
                     r"for 1s\)", report), report
    assert "replayed 24001 records" in report
