"""Faults and load (bounded: 2 minutes, local addresses only): 20 clients opening and closing
live sessions in a loop, some vanishing mid-stream (their process killed), bad requests of every
kind meanwhile. The server stays up, each bad request gets its error, a steady session keeps its
frame rate, memory returns within 100 MB of where it started and no temporary file is left."""
import asyncio
import os
import random
import signal
import subprocess
import sys
import time

import aiohttp
import cv2
import numpy as np

from conftest import MEDIA, REPO
from server.client import LiveClient
from serve_util import BOX, call, form, rss_mb, running_server, wait_job, write_checkpoint

LOAD_SECONDS = 120
WARM_UP_SECONDS = 20
CLIENTS = 20
MAX_SESSIONS = 4
TOKEN = "load-test-token"
VANISHING = """
import asyncio, sys, time
import aiohttp
sys.path.insert(0, %r)
from server.client import LiveClient
async def main():
    async with aiohttp.ClientSession() as http:
        for _ in range(300):
            try:
                client = await LiveClient.connect(http, %r, "grid", token=%r, events=False)
                break
            except ConnectionError:  # busy
                await asyncio.sleep(0.1)
        while client.video_frames < 5:   # mid-stream
            await asyncio.sleep(0.05)
        print("streaming", flush=True)
        await asyncio.sleep(60)      # killed before this ends, without closing anything
asyncio.run(main())
"""


async def connect_when_free(http, server, tries=200):
    for _ in range(tries):
        try:
            return await LiveClient.connect(http, server.url, "grid", token=TOKEN, events=False)
        except ConnectionError as e:
            assert str(e).startswith("503: busy"), e
            await asyncio.sleep(0.1)
    raise AssertionError("no free live session in %d tries" % tries)


async def churn(http, server, stop_at, counts):
    """Open a session, receive a little, close it; again until `stop_at`."""
    while time.monotonic() < stop_at:
        try:
            client = await LiveClient.connect(http, server.url, "grid", token=TOKEN, events=False)
        except ConnectionError as e:
            assert str(e).startswith("503: busy"), e
            counts["busy"] += 1
            await asyncio.sleep(random.uniform(0.2, 0.6))
            continue
        counts["opened"] += 1
        await asyncio.sleep(random.uniform(0.5, 2.5))
        await client.close()


async def vanish(server, stop_at, counts):
    """Clients in a child process killed mid-stream (SIGKILL: no goodbye of any kind)."""
    while time.monotonic() < stop_at:
        child = subprocess.Popen([sys.executable, "-c", VANISHING % (str(REPO), server.url, TOKEN)],
                                 stdout=subprocess.PIPE, cwd=REPO)
        await asyncio.to_thread(child.stdout.readline)
        child.send_signal(signal.SIGKILL)
        await asyncio.to_thread(child.wait)
        child.stdout.close()
        counts["vanished"] += 1
        await asyncio.sleep(10)


async def bad_requests(http, server, tmp_path):
    """Each bad request gets its own error while the load runs."""
    text_file = tmp_path / "notes.mp3"
    text_file.write_text("not audio at all\n" * 50)
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((200, 200, 3), 90, np.uint8))
    auth = {"Authorization": "Bearer " + TOKEN}

    status, body = await call(http, server, "POST", "/api/sessions",
                              json={"avatar": "grid", "sdp": "v=0\r\nm=video garbage\r\n", "type": "offer"})
    assert status == 400 and "SDP" in body["error"], body
    status, body = await call(http, server, "POST", "/api/sessions", json={"avatar": "../grid", "sdp": "x"})
    assert status == 400 and "bad avatar name" in body["error"]
    status, body = await call(http, server, "DELETE", "/api/avatars/..%2Fgrid")
    assert status == 400 and "bad avatar name" in body["error"]
    status, body = await call(http, server, "POST", "/api/jobs", data=form(face=MEDIA / "bbaf2n.mpg", audio=text_file))
    assert status == 415, body
    status, body = await call(http, server, "POST", "/api/jobs", data=form(face=("big.mp4", os.urandom(2 << 20)),
                                                                           audio=MEDIA / "jfk.mp3"))
    assert status == 413, body
    for headers in ({}, {"Authorization": "Bearer nope"}):
        status, body = await call(http, server, "GET", "/api/avatars", headers=headers)
        assert status == 401, body

    client = await connect_when_free(http, server)
    try:
        status, body = await client.post("speech", data=form(audio=text_file))
        assert status == 415 and "no audio" in body["error"]
        ws = await http.ws_connect("%s/api/sessions/%s/pcm?token=%s" % (server.url, client.session_id, TOKEN))
        await ws.send_bytes(b"\x00" * 641)
        assert "even number of bytes" in (await ws.receive_json(timeout=30))["error"]
        await ws.send_bytes(b"\x00" * 640)          # the WebSocket still works after the error
        await ws.close()
    finally:
        await client.close()

    status, body = await call(http, server, "POST", "/api/jobs", data=form([("fast", "1")], face=blank,
                                                                           audio=MEDIA / "jfk.mp3"))
    assert status == 202, body
    job, _ = await wait_job(http, server, body["job_id"])
    assert job["state"] == "failed" and "no face found" in job["error"]
    return auth


def test_faults_and_load(tmp_path, check):
    checkpoint = write_checkpoint(check, tmp_path)
    with running_server(tmp_path, checkpoint, "--avatars", tmp_path / "avatars", "--max_sessions", MAX_SESSIONS,
                        "--max_upload_mb", 1, token=TOKEN) as server:
        async def scenario():
            async with aiohttp.ClientSession() as http:
                fields = [("name", "grid"), ("box", " ".join(map(str, BOX)))]
                status, body = await call(http, server, "POST", "/api/avatars",
                                          data=form(fields, face=MEDIA / "bbaf2n.mpg"))
                assert status == 202, body
                assert (await wait_job(http, server, body["job_id"]))[0]["state"] == "done"
                # Warm up with the same churn for a while: memory is measured from there on.
                warm_until, counts = time.monotonic() + WARM_UP_SECONDS, {"busy": 0, "opened": 0, "vanished": 0}
                await asyncio.gather(*(churn(http, server, warm_until, counts) for _ in range(CLIENTS - 2)))
                await asyncio.sleep(1)
                baseline = rss_mb(server.proc.pid)

                steady_frames = set()
                steady = await LiveClient.connect(http, server.url, "grid", token=TOKEN, events=False,
                                                  on_video=lambda frame, index: steady_frames.add(index))
                counts = {"busy": 0, "opened": 0, "vanished": 0}
                stop_at = time.monotonic() + LOAD_SECONDS
                load = [asyncio.ensure_future(churn(http, server, stop_at, counts)) for _ in range(CLIENTS - 2)]
                load.append(asyncio.ensure_future(vanish(server, stop_at - 40, counts)))
                await bad_requests(http, server, tmp_path)
                await asyncio.gather(*load)
                stats = await steady.close()

                for _ in range(60):  # vanished clients are noticed when ICE consent expires (about 30 s)
                    status, health = await call(http, server, "GET", "/health")
                    if health["sessions"] == 0:
                        break
                    await asyncio.sleep(1)
                return baseline, steady_frames, stats, counts, health

        baseline, steady_frames, stats, counts, health = asyncio.run(scenario())
        assert counts["opened"] >= CLIENTS and counts["busy"] > 0 and counts["vanished"] >= 2, counts
        assert health["status"] == "ok" and health["sessions"] == 0, health
        # The steady session: every frame arrived, at the avatar's rate.
        assert len(steady_frames) >= 0.98 * (max(steady_frames) + 1), (len(steady_frames), max(steady_frames))
        assert stats["frames"] / stats["seconds"] >= 0.9 * 25, stats
        assert rss_mb(server.proc.pid) - baseline < 100, (baseline, rss_mb(server.proc.pid))
        root = [name for name in os.listdir(server.tmp_dir)]
        assert len(root) == 1 and os.listdir(os.path.join(server.tmp_dir, root[0])) == [], root
        log = server.log()
        assert "connection failed" in log or "connection closed" in log
        assert "Traceback" not in log, log[log.index("Traceback") - 300:][:3000]
