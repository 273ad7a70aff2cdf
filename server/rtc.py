"""Live sessions over WebRTC: one live.Session per peer connection, sent as an aiortc video
track and audio track.

The engine computes speech frames a batch at a time inside `read()`, so one thread reads it
ahead into a short buffer (`lookahead` frames, enough to cover a batch) and another sends one
frame per period on the monotonic clock. Video pts are the engine's `.pts` (time base 1/90000);
audio is 16 kHz s16 mono with pts from the engine's sample clock, so both tracks stay on the
engine's clock. A frame is late when the buffer is empty at its due time (the engine was not
ready); late frames are counted, logged and reported in the event stream. Speech starts and
ends are the frames' `.speaking` changes; an interrupt turns the buffered speech frames idle."""
import asyncio
import collections
import ctypes
import ctypes.util
import dataclasses
import fractions
import json
import logging
import os
import threading
import time
import uuid

import aiortc.codecs
import aiortc.rtcrtpsender
import av
import cv2
import numpy as np
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.codecs.vpx import Vp8Encoder, number_of_threads
from aiortc.mediastreams import MediaStreamError

from server.uploads import RequestError, remove_folder

log = logging.getLogger("serve")
VIDEO_TIME_BASE = fractions.Fraction(1, 90000)
SAMPLE_RATE = 16000
AUDIO_TIME_BASE = fractions.Fraction(1, SAMPLE_RATE)
TRACK_QUEUE = 25            # frames waiting for the encoder; older ones are dropped beyond it
RESYNC_SECONDS = 1.0        # further behind than this, the pacing clock restarts at now
CONNECT_SECONDS = 30        # a session whose client never connects is closed after this
STATS_SECONDS = 1.0
ECHO_SILENCE_GAP = 0.6      # echo mode: this much microphone silence ends an utterance
# aiortc's Opus sender stamps all packets of one frame with one RTP timestamp: send 20 ms frames.
AUDIO_CHUNK = SAMPLE_RATE // 50


class FrameTrack(MediaStreamTrack):
    """A track fed with ready av frames by the session's pacer (thread-safe `offer`)."""

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
    """The engine's frame as the encoders' yuv420p (BT.601, limited range). OpenCV converts a
    720p frame in 0.5 ms, swscale (aiortc's reformat of bgr24) in 6.8 ms on the encoder's thread
    (measured, 2-core Xeon); both within one level. Odd sizes, which I420 cannot hold, go as bgr24."""
    height, width = frame.image.shape[:2]
    if height % 2 or width % 2:
        out = av.VideoFrame.from_ndarray(frame.image, format="bgr24")
    else:
        out = av.VideoFrame.from_ndarray(cv2.cvtColor(frame.image, cv2.COLOR_BGR2YUV_I420), format="yuv420p")
    out.pts, out.time_base = round(frame.pts * 90000), VIDEO_TIME_BASE
    return out


class CleanVp8Encoder(Vp8Encoder):
    """aiortc's VP8 encoder (its real-time settings, keyframe requests, bitrate estimates,
    packetization) with libvpx's temporal denoiser off: aiortc sets noise-sensitivity 4, which
    at 720p took 12.3 ms a frame against 9.0 with it off, and decoded to 42.5 dB luma PSNR
    against 44.4 at the same bitrate (`bench_serve.py --encoders`, GRID scaled up, 2-core Xeon).
    An avatar's frames have no camera noise to remove."""

    def encode(self, frame, force_keyframe=False):
        if self.codec is None or self._stale(frame):
            self.codec = self._open(frame.width, frame.height)  # aiortc's encode then uses this one
        return super().encode(frame, force_keyframe)

    def _stale(self, frame):  # aiortc's condition for opening a new encoder: size, or bitrate off by 10%
        codec = self.codec
        return (frame.width, frame.height) != (codec.width, codec.height) or \
            abs(self.target_bitrate - codec.bit_rate) / codec.bit_rate > 0.1

    def _open(self, width, height):
        bitrate = self.target_bitrate
        codec = av.CodecContext.create("libvpx", "w")
        codec.width, codec.height, codec.bit_rate, codec.pix_fmt = width, height, bitrate, "yuv420p"
        codec.gop_size, codec.qmin, codec.qmax = 3000, 2, 56
        codec.options = {"bufsize": str(bitrate), "minrate": str(bitrate), "maxrate": str(bitrate),  # CBR
                         "cpu-used": "-6", "deadline": "realtime", "lag-in-frames": "0", "noise-sensitivity": "0",
                         "overshoot-pct": "15", "partitions": "0", "static-thresh": "1", "undershoot-pct": "100"}
        codec.thread_count = number_of_threads(width * height, os.cpu_count() or 1)
        return codec


def encoder_for(codec):
    """The encoder aiortc's senders get for `codec`: CleanVp8Encoder for VP8, aiortc's own otherwise."""
    if codec.mimeType.lower() == "video/vp8":
        return CleanVp8Encoder()
    return aiortc.codecs.get_encoder(codec)


def use_clean_vp8():
    """Make aiortc's RTP senders in this process encode VP8 with CleanVp8Encoder (aiortc has no
    option for its encoder settings; its sender looks the encoder up by this module-level name)."""
    aiortc.rtcrtpsender.get_encoder = encoder_for


def audio_frame(samples, pts):
    out = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples, np.int16).reshape(1, -1), format="s16",
                                     layout="mono")
    out.sample_rate, out.pts, out.time_base = SAMPLE_RATE, pts, AUDIO_TIME_BASE
    return out


class LiveSession:
    def __init__(self, avatar_name, avatar, folder, loop, lookahead):
        self.id = uuid.uuid4().hex
        self.avatar_name, self.avatar, self.fps, self.folder, self.loop = avatar_name, avatar, avatar.fps, folder, loop
        self.engine = None
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.video, self.audio = FrameTrack("video", loop), FrameTrack("audio", loop)
        self.subscribers = set()
        self.frames = self.late = self.caught_up = self.utterances = 0
        self.speaking = False
        self.speech_arrived = None       # monotonic time speech arrived while idle (for the latency)
        self.last_frame = -1
        self.closed = threading.Event()
        self.started = time.monotonic()
        self.buffer = collections.deque()
        self.lookahead = lookahead
        self.buffered = threading.Condition()
        self.threads = []
        self.tasks = set()

    # ----------------------------------------------------------------- events
    def publish(self, event, data):
        message = "event: %s\ndata: %s\n\n" % (event, json.dumps(data))
        for queue in list(self.subscribers):
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(message)

    def stats(self):
        return {"session_id": self.id, "avatar": self.avatar_name, "frames": self.frames, "late": self.late,
                "caught_up": self.caught_up, "dropped": self.video.dropped, "speaking": self.speaking,
                "utterances": self.utterances, "fps": self.fps, "seconds": round(time.monotonic() - self.started, 1)}

    # ----------------------------------------------------------------- speech in
    async def push(self, samples):
        if not self.speaking and self.speech_arrived is None:
            self.speech_arrived = time.monotonic()
        await asyncio.to_thread(self.engine.push, samples, SAMPLE_RATE)

    async def end_utterance(self):
        await asyncio.to_thread(self.engine.end_utterance)

    async def interrupt(self):
        """Stop the speech at once: the engine drops its queue, the buffered frames go out idle."""
        await asyncio.to_thread(self.engine.interrupt)
        with self.buffered:
            self.buffer = collections.deque(self._idle(f) if f.speaking else f for f in self.buffer)
        self.speech_arrived = None
        return self.last_frame

    def _idle(self, frame):
        return dataclasses.replace(frame, image=self.avatar.frame(frame.source_index),
                                   audio=np.zeros_like(frame.audio), speaking=False, caught_up=False)

    # ----------------------------------------------------------------- frames out
    def start(self):
        for work in (self._read_ahead, self._pace):
            thread = threading.Thread(target=work, name="session-%s-%s" % (self.id[:8], work.__name__), daemon=True)
            thread.start()
            self.threads.append(thread)

    def _read_ahead(self):
        while not self.closed.is_set():
            with self.buffered:
                self.buffered.wait_for(lambda: len(self.buffer) < self.lookahead or self.closed.is_set())
            frame = self.engine.read(timeout=0.5)
            if frame is not None:
                with self.buffered:
                    self.buffer.append(frame)
                    self.buffered.notify_all()

    def _next_frame(self):
        """(frame, late): late when the engine had not delivered it by its due time."""
        with self.buffered:
            late = not self.buffer
            self.buffered.wait_for(lambda: self.buffer or self.closed.is_set(), timeout=1.0)
            if not self.buffer:
                return None, late
            frame = self.buffer.popleft()
            self.buffered.notify_all()
            return frame, late

    def _pace(self):
        """Send one frame per period of the avatar's fps on the monotonic clock."""
        period = 1.0 / self.fps
        origin, index, last_stats = time.monotonic(), 0, 0.0
        pending, samples_sent = np.zeros(0, np.int16), 0
        while not self.closed.is_set():
            due = origin + index * period
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            frame, late = self._next_frame()
            if frame is None:
                continue
            self.video.offer(video_frame(frame))
            pending = np.concatenate([pending, frame.audio])
            while len(pending) >= AUDIO_CHUNK:
                self.audio.offer(audio_frame(pending[:AUDIO_CHUNK], samples_sent))
                pending, samples_sent = pending[AUDIO_CHUNK:], samples_sent + AUDIO_CHUNK
            now = time.monotonic()
            self.loop.call_soon_threadsafe(self._sent, frame, late, now)
            index += 1
            if now - due > RESYNC_SECONDS:
                origin, index = now, 0
            if now - last_stats >= STATS_SECONDS:
                last_stats = now
                self.loop.call_soon_threadsafe(lambda: self.publish("stats", self.stats()))

    def _sent(self, frame, late, now):
        index, speaking = frame.index, frame.speaking
        self.frames += 1
        self.late += late
        self.caught_up += frame.caught_up
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
        with self.buffered:
            self.buffered.notify_all()
        for task in list(self.tasks):
            task.cancel()
        self.video.offer(None)
        self.audio.offer(None)
        for thread in self.threads:
            await asyncio.to_thread(thread.join, 5)
        self.avatar.close()
        await self.pc.close()
        self.pc.remove_all_listeners()
        for queue in list(self.subscribers):
            queue.put_nowait(None)
        remove_folder(self.folder)
        # aiortc keeps closed tracks and transports referenced for a while: drop the heavy parts now.
        self.engine, self.threads = None, []
        self.buffer.clear()
        for track in (self.video, self.audio):
            while not track.frames.empty():
                track.frames.get_nowait()
        log.info("session %s end (%s): avatar %s, %.1f s, %d frames, %d late, %d caught up, %d dropped, "
                 "%d utterances",
                 self.id, reason, self.avatar_name, time.monotonic() - self.started, self.frames, self.late,
                 self.caught_up, self.video.dropped, self.utterances)


def _glibc():
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


def limit_arenas(count=2):
    """Fewer glibc malloc arenas: each session's threads would otherwise spread freed memory
    over up to 8 per core, which the system never gets back."""
    libc = _glibc()
    if libc is not None:
        libc.mallopt(-8, count)  # M_ARENA_MAX


def release_memory():
    """Hand freed heap memory back to the system after a session."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


class EchoResampler:
    """The browser's microphone frames as 16 kHz mono int16 samples."""

    def __init__(self):
        self.resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)

    def __call__(self, frame):
        frame.pts = None
        chunks = [f.to_ndarray().reshape(-1) for f in self.resampler.resample(frame)]
        return np.concatenate(chunks) if chunks else np.zeros(0, np.int16)


@dataclasses.dataclass(frozen=True)
class LiveSettings:
    """How the server runs live sessions: at most `max_sessions` at once, the engine in reduced
    precision when `fast`, computing batches of `batch_size` frames read `lookahead` frames
    ahead of their time; `max_lag` is live.Session's (None: every speech frame lip-synced)."""
    # Live sessions 2 CPU cores run in real time: bench_serve.py on this project's shared 2-core
    # machine did not reach real time even with one session (README, server section), so one.
    max_sessions: int = 1
    fast: bool = False
    batch_size: int = 4
    lookahead: int = 8
    max_lag: float = None


class LiveSessions:
    """The server's live sessions, run as `settings` (a LiveSettings) say."""

    def __init__(self, model, temp_root, settings=LiveSettings()):
        self.model, self.temp_root, self.settings = model, temp_root, settings
        self.sessions = {}
        use_clean_vp8()

    def get(self, session_id):
        session = self.sessions.get(session_id) if isinstance(session_id, str) else None
        if session is None:
            raise RequestError(404, "no live session %r; open one with POST /api/sessions" % session_id)
        return session

    def using(self, avatar_name):
        return sum(s.avatar_name == avatar_name for s in self.sessions.values())

    async def open(self, avatar_name, avatar, sdp, sdp_type):
        if len(self.sessions) >= self.settings.max_sessions:
            raise RequestError(503, "busy: %d live sessions are running (the --max_sessions this machine runs in "
                               "real time); try again later" % self.settings.max_sessions)
        if sdp_type != "offer" or not isinstance(sdp, str) or "m=" not in sdp:
            raise RequestError(400, "send a WebRTC offer: {\"avatar\", \"sdp\", \"type\": \"offer\"}")
        session = LiveSession(avatar_name, avatar, self.temp_root.folder("session"), asyncio.get_running_loop(),
                              self.settings.lookahead)
        self.sessions[session.id] = session
        try:
            answer = await self._negotiate(session, sdp, sdp_type)
        except BaseException:
            await self.close(session.id, "bad offer")
            raise
        log.info("session %s start: avatar %s, %dx%d at %g fps%s", session.id, avatar_name, *avatar.size, avatar.fps,
                 ", echo" if session.echo else "")
        return session, answer

    async def _negotiate(self, session, sdp, sdp_type):
        import live

        pc, session.echo = session.pc, False

        @pc.on("track")
        def on_track(track):
            if track.kind == "audio":  # echo mode: the microphone drives the avatar
                session.echo = True
                self._spawn(session, self._echo(session, track))

        @pc.on("connectionstatechange")
        async def on_state():
            if pc.connectionState in ("failed", "closed"):
                await self.close(session.id, "connection " + pc.connectionState)

        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type=sdp_type))
        except Exception as e:
            raise RequestError(400, "bad SDP offer (%s); send the offer your WebRTC stack created"
                               % (str(e).splitlines()[0] if str(e) else type(e).__name__))
        settings = self.settings
        session.engine = await asyncio.to_thread(live.Session, self.model, session.avatar, fast=settings.fast,
                                                 silence_gap=ECHO_SILENCE_GAP if session.echo else None,
                                                 batch_size=settings.batch_size, max_lag=settings.max_lag)
        try:
            pc.addTrack(session.video)
            pc.addTrack(session.audio)
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception as e:
            raise RequestError(400, "cannot answer this SDP offer (%s); offer to receive one video and one audio "
                               "track" % (str(e).splitlines()[0] if str(e) else type(e).__name__))
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
            asyncio.ensure_future(self.close(session.id, "never connected"))
            return
        session.start()

    async def _echo(self, session, track):
        resample = EchoResampler()
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            samples = resample(frame)
            if len(samples) and session.engine is not None:
                await session.push(samples)

    async def close(self, session_id, reason):
        session = self.sessions.pop(session_id, None)
        if session is not None:
            await session.close(reason)
            release_memory()

    async def close_all(self, reason):
        await asyncio.gather(*(self.close(sid, reason) for sid in list(self.sessions)))
