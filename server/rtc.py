"""Live sessions over WebRTC: one live.Session per peer connection, its frames paced in real
time by one reader thread and sent as an aiortc video track and audio track.

Video pts are the engine's `.pts` (time base 1/90000); audio is 16 kHz s16 mono with pts from
the engine's sample clock, so both tracks stay on the engine's clock. A frame is late when the
engine hands it over more than half a frame after it was due; late frames are counted, logged
and reported in the event stream. Speech starts and ends are the frames' `.speaking` changes."""
import asyncio
import fractions
import json
import logging
import threading
import time
import uuid

import av
import numpy as np
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from server.uploads import RequestError, remove_folder

log = logging.getLogger("serve")
VIDEO_TIME_BASE = fractions.Fraction(1, 90000)
SAMPLE_RATE = 16000
AUDIO_TIME_BASE = fractions.Fraction(1, SAMPLE_RATE)
TRACK_QUEUE = 10            # frames waiting for the encoder; older ones are dropped beyond it
RESYNC_SECONDS = 1.0        # further behind than this, the pacing clock restarts at now
CONNECT_SECONDS = 30        # a session whose client never connects is closed after this
STATS_SECONDS = 1.0


class FrameTrack(MediaStreamTrack):
    """A track fed with ready av frames from the session's reader (thread-safe `offer`)."""

    def __init__(self, kind, loop):
        super().__init__()
        self.kind, self.loop = kind, loop
        self.frames = asyncio.Queue(TRACK_QUEUE)
        self.dropped = 0
        self.pulled = asyncio.Event()     # set at the first recv: the client is connected

    def offer(self, frame):
        self.loop.call_soon_threadsafe(self._put, frame)

    def _put(self, frame):
        if self.frames.full():
            self.frames.get_nowait()
            self.dropped += 1
        self.frames.put_nowait(frame)

    async def recv(self):
        self.pulled.set()
        frame = await self.frames.get()
        if frame is None:
            self.stop()
            raise MediaStreamError
        return frame


def video_frame(frame):
    out = av.VideoFrame.from_ndarray(frame.image, format="bgr24")
    out.pts, out.time_base = round(frame.pts * 90000), VIDEO_TIME_BASE
    return out


def audio_frame(samples, pts):
    out = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples, np.int16).reshape(1, -1), format="s16",
                                     layout="mono")
    out.sample_rate, out.pts, out.time_base = SAMPLE_RATE, pts, AUDIO_TIME_BASE
    return out


class LiveSession:
    def __init__(self, engine, avatar_name, fps, folder, loop):
        self.id = uuid.uuid4().hex
        self.engine, self.avatar_name, self.fps, self.folder, self.loop = engine, avatar_name, fps, folder, loop
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.video, self.audio = FrameTrack("video", loop), FrameTrack("audio", loop)
        self.subscribers = set()
        self.frames = self.late = self.utterances = 0
        self.speaking = False
        self.speech_arrived = None       # monotonic time speech arrived while idle (for the latency)
        self.last_frame = -1
        self.closed = threading.Event()
        self.started = time.monotonic()
        self.reader = None
        self.tasks = set()

    # ----------------------------------------------------------------- events
    def publish(self, event, data):
        message = "event: %s\ndata: %s\n\n" % (event, json.dumps(data))
        for queue in list(self.subscribers):
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(message)

    def stats(self):
        seconds = max(time.monotonic() - self.started, 1e-9)
        return {"session_id": self.id, "avatar": self.avatar_name, "frames": self.frames, "late": self.late,
                "dropped": self.video.dropped, "speaking": self.speaking, "utterances": self.utterances,
                "fps": self.fps, "seconds": round(seconds, 1)}

    # ----------------------------------------------------------------- speech in
    def note_speech(self):
        if not self.speaking and self.speech_arrived is None:
            self.speech_arrived = time.monotonic()

    async def push(self, samples):
        self.note_speech()
        await asyncio.to_thread(self.engine.push, samples, SAMPLE_RATE)

    async def end_utterance(self):
        await asyncio.to_thread(self.engine.end_utterance)

    async def interrupt(self):
        await asyncio.to_thread(self.engine.interrupt)
        self.speech_arrived = None
        return self.last_frame

    # ----------------------------------------------------------------- frames out
    def start(self):
        self.reader = threading.Thread(target=self._read_frames, name="session-" + self.id[:8], daemon=True)
        self.reader.start()

    def _read_frames(self):
        """Pace engine.read() on the monotonic clock at the avatar's fps and feed both tracks."""
        period = 1.0 / self.fps
        origin, index, samples_sent, last_stats = time.monotonic(), 0, 0, 0.0
        while not self.closed.is_set():
            due = origin + index * period
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            frame = self.engine.read(timeout=1.0)
            if frame is None or self.closed.is_set():
                continue
            now = time.monotonic()
            late = now > due + period / 2
            self.video.offer(video_frame(frame))
            self.audio.offer(audio_frame(frame.audio, samples_sent))
            samples_sent += len(frame.audio)
            self.loop.call_soon_threadsafe(self._sent, frame.index, frame.speaking, late, now)
            index += 1
            if now - due > RESYNC_SECONDS:
                origin, index = now, 0
            if now - last_stats >= STATS_SECONDS:
                last_stats = now
                self.loop.call_soon_threadsafe(lambda: self.publish("stats", self.stats()))

    def _sent(self, index, speaking, late, now):
        self.frames += 1
        self.late += late
        self.last_frame = index
        if speaking and not self.speaking:
            self.utterances += 1
            latency = None if self.speech_arrived is None else round((now - self.speech_arrived) * 1000)
            self.speech_arrived = None
            self.publish("speech_start", {"frame": index, "latency_ms": latency})
        elif self.speaking and not speaking:
            self.publish("speech_end", {"frame": index})
        self.speaking = speaking

    async def close(self, reason):
        if self.closed.is_set():
            return
        self.closed.set()
        for task in list(self.tasks):
            task.cancel()
        self.video.offer(None)
        self.audio.offer(None)
        if self.reader is not None:
            await asyncio.to_thread(self.reader.join, 5)
        await self.pc.close()
        for queue in list(self.subscribers):
            queue.put_nowait(None)
        remove_folder(self.folder)
        stats = self.stats()
        log.info("session %s end (%s): avatar %s, %.1f s, %d frames, %d late, %d dropped, %d utterances",
                 self.id, reason, self.avatar_name, stats["seconds"], self.frames, self.late, self.video.dropped,
                 self.utterances)


class EchoResampler:
    """The browser's microphone frames as 16 kHz mono int16 samples."""

    def __init__(self):
        self.resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)

    def __call__(self, frame):
        frame.pts = None
        chunks = [f.to_ndarray().reshape(-1) for f in self.resampler.resample(frame)]
        return np.concatenate(chunks) if chunks else np.zeros(0, np.int16)


class LiveSessions:
    """The server's live sessions, at most `max_sessions` at once."""

    def __init__(self, model, temp_root, max_sessions, fast=False):
        self.model, self.temp_root, self.max_sessions, self.fast = model, temp_root, max_sessions, fast
        self.sessions = {}

    def get(self, session_id):
        session = self.sessions.get(session_id) if isinstance(session_id, str) else None
        if session is None:
            raise RequestError(404, "no live session %r; open one with POST /api/sessions" % session_id)
        return session

    def using(self, avatar_name):
        return sum(s.avatar_name == avatar_name for s in self.sessions.values())

    async def open(self, avatar_name, avatar, sdp, sdp_type):
        if len(self.sessions) >= self.max_sessions:
            raise RequestError(503, "busy: %d live sessions are running (the --max_sessions this machine runs in "
                               "real time); try again later" % self.max_sessions)
        if sdp_type != "offer" or not isinstance(sdp, str) or "m=" not in sdp:
            raise RequestError(400, "send a WebRTC offer: {\"avatar\", \"sdp\", \"type\": \"offer\"}")
        import live

        loop = asyncio.get_running_loop()
        engine = await asyncio.to_thread(live.Session, self.model, avatar, fast=self.fast)
        session = LiveSession(engine, avatar_name, avatar.fps, self.temp_root.folder("session"), loop)
        self.sessions[session.id] = session
        try:
            answer = await self._answer(session, sdp, sdp_type)
        except Exception:
            await self.close(session.id, "bad offer")
            raise
        log.info("session %s start: avatar %s, %dx%d at %g fps", session.id, avatar_name, *avatar.size, avatar.fps)
        return session, answer

    async def _answer(self, session, sdp, sdp_type):
        pc = session.pc
        pc.addTrack(session.video)
        pc.addTrack(session.audio)

        @pc.on("track")
        def on_track(track):
            if track.kind == "audio":  # echo mode: the microphone drives the avatar
                self._spawn(session, self._echo(session, track))

        @pc.on("connectionstatechange")
        async def on_state():
            if pc.connectionState in ("failed", "closed"):
                await self.close(session.id, "connection " + pc.connectionState)

        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type=sdp_type))
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception as e:
            raise RequestError(400, "bad SDP offer (%s); send the offer your WebRTC stack created"
                               % (str(e).splitlines()[0] if str(e) else type(e).__name__))
        self._spawn(session, self._start_when_connected(session))
        return pc.localDescription

    def _spawn(self, session, coroutine):
        task = asyncio.ensure_future(coroutine)
        session.tasks.add(task)
        task.add_done_callback(session.tasks.discard)

    async def _start_when_connected(self, session):
        """Start the clock once the client pulls both tracks, so both start at frame 0."""
        try:
            await asyncio.wait_for(asyncio.gather(session.video.pulled.wait(), session.audio.pulled.wait()),
                                   CONNECT_SECONDS)
        except asyncio.TimeoutError:
            self._spawn_close(session, "never connected")
            return
        session.start()

    def _spawn_close(self, session, reason):
        asyncio.ensure_future(self.close(session.id, reason))

    async def _echo(self, session, track):
        resample = EchoResampler()
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            samples = resample(frame)
            if len(samples):
                await session.push(samples)

    async def close(self, session_id, reason):
        session = self.sessions.pop(session_id, None)
        if session is not None:
            await session.close(reason)

    async def close_all(self, reason):
        await asyncio.gather(*(self.close(sid, reason) for sid in list(self.sessions)))
