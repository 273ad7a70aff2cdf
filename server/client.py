"""A Python client of the server's live sessions (aiortc), used by the tests and bench_serve.py:

    async with aiohttp.ClientSession() as http:
        client = await LiveClient.connect(http, "http://127.0.0.1:8000", "anna", on_video=show)
        await client.stream_pcm(samples)          # 16 kHz int16, at real-time pace
        await client.close()

`on_video(frame, index)` and `on_audio(frame)` get the decoded av frames (index: the frame number
from the RTP timestamps, 0 at the first frame received); `events` collects the server-sent events.
"""
import asyncio
import json
import time

import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

CHUNK_SECONDS = 0.02


class LiveClient:
    def __init__(self, http, url, token, fps):
        self.http, self.url, self.fps = http, url, fps
        self.headers = {"Authorization": "Bearer " + token} if token else {}
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.session_id = None
        self.events = []               # (monotonic time, name, data)
        self.tasks = []
        self.video_frames = self.audio_frames = 0

    @classmethod
    async def connect(cls, http, url, avatar, token=None, fps=25.0, on_video=None, on_audio=None, events=True):
        client = cls(http, url, token, fps)
        client.pc.addTransceiver("video", direction="recvonly")
        client.pc.addTransceiver("audio", direction="recvonly")

        @client.pc.on("track")
        def on_track(track):
            handler = on_video if track.kind == "video" else on_audio
            client.tasks.append(asyncio.ensure_future(client._receive(track, handler)))

        await client.pc.setLocalDescription(await client.pc.createOffer())
        offer = client.pc.localDescription
        async with http.post(url + "/api/sessions", headers=client.headers,
                             json={"avatar": avatar, "sdp": offer.sdp, "type": offer.type}) as response:
            answer = await response.json()
            if response.status != 200:
                await client.pc.close()
                raise ConnectionError("%d: %s" % (response.status, answer.get("error")))
        client.session_id = answer["session_id"]
        if events:
            client.tasks.append(asyncio.ensure_future(client._listen()))
        await client.pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))
        return client

    async def _receive(self, track, handler):
        first = None
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if track.kind == "video":
                first = frame.pts if first is None else first
                index = round(((frame.pts - first) % (1 << 32)) * float(frame.time_base) * self.fps)
                self.video_frames += 1
                if handler:
                    handler(frame, index)
            else:
                self.audio_frames += 1
                if handler:
                    handler(frame)

    async def _listen(self):
        path = "%s/api/sessions/%s/events" % (self.url, self.session_id)
        async with self.http.get(path, headers=self.headers, timeout=None) as response:
            event = None
            async for line in response.content:
                line = line.decode().strip()
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: ") and event:
                    self.events.append((time.monotonic(), event, json.loads(line[6:])))

    def event(self, name, after=0.0):
        """The first event `name` received after monotonic time `after`, or None."""
        return next((data for t, n, data in self.events if n == name and t >= after), None)

    async def wait_event(self, name, after=0.0, seconds=30.0):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            data = self.event(name, after)
            if data is not None:
                return data
            await asyncio.sleep(0.02)
        raise TimeoutError("no %s event within %g s" % (name, seconds))

    async def post(self, path, **kwargs):
        async with self.http.post("%s/api/sessions/%s/%s" % (self.url, self.session_id, path), headers=self.headers,
                                  **kwargs) as response:
            return response.status, await response.json()

    async def stream_pcm(self, samples, end=True, ws=None):
        """Send int16 samples over the PCM WebSocket in 20 ms chunks at real-time pace."""
        path = "%s/api/sessions/%s/pcm" % (self.url, self.session_id)
        own = ws is None
        ws = ws or await self.http.ws_connect(path, headers=self.headers)
        chunk, start = round(CHUNK_SECONDS * 16000), time.monotonic()
        for i, offset in enumerate(range(0, len(samples), chunk)):
            await ws.send_bytes(np.asarray(samples[offset:offset + chunk], "<i2").tobytes())
            await asyncio.sleep(max(0.0, start + (i + 1) * CHUNK_SECONDS - time.monotonic()))
        if end:
            await ws.send_str("end")
        if own:
            await ws.close()

    async def close(self, delete=True):
        stats = None
        if delete and self.session_id:
            async with self.http.delete("%s/api/sessions/%s" % (self.url, self.session_id),
                                        headers=self.headers) as response:
                stats = await response.json()
        for task in self.tasks:
            task.cancel()
        await self.pc.close()
        return stats
