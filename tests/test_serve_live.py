"""Live sessions end to end: serve.py on a free local port, an aiortc client receiving the
avatar's video and audio; speech by upload and by the PCM WebSocket; interrupt; events."""
import asyncio
import re
import time

import aiohttp
import numpy as np
import pytest
from scipy.signal import correlate

import audio
import live
from conftest import MEDIA
from server.client import LiveClient
from serve_util import BOX, call, form, running_server, wait_job, write_checkpoint

FACE_VIDEO = MEDIA / "bbaf2n.mpg"          # the avatar: 360x288, 25 fps, 75 frames
SPEECH = MEDIA / "lwbsza.mpg"              # 3 s of speech (a video's audio track)
FPS = 25.0
MARGIN = 8                                 # H.264/VP8 blocks straddling the paste box's edge


@pytest.fixture(scope="module")
def server(tmp_path_factory, check):
    folder = tmp_path_factory.mktemp("live")
    checkpoint = write_checkpoint(check, folder)
    with running_server(folder, checkpoint, "--avatars", folder / "avatars") as running:
        async def prepare():
            async with aiohttp.ClientSession() as http:
                fields = [("name", "grid"), ("box", " ".join(map(str, BOX)))]
                status, body = await call(http, running, "POST", "/api/avatars", data=form(fields, face=FACE_VIDEO))
                assert status == 202, body
                job, _ = await wait_job(http, running, body["job_id"])
                assert job["state"] == "done", job
                status, body = await call(http, running, "GET", "/api/avatars")
                assert body["avatars"] == [{"name": "grid", "fps": 25.0, "width": 360, "height": 288, "frames": 75}]

        asyncio.run(prepare())
        running.avatar = live.load_avatar(folder / "avatars" / "grid")
        running.folder, running.checkpoint = folder, checkpoint
        yield running
        running.avatar.close()


class FaceMonitor:
    """Per received frame: how far its face box and its outside are from the avatar's frame."""

    def __init__(self, avatar):
        self.avatar, self.rows = avatar, {}
        y1, y2, x1, x2 = BOX
        self.inside = np.zeros((288, 360), bool)
        self.inside[y1 + MARGIN:y2 - MARGIN, x1 + MARGIN:x2 - MARGIN] = True
        self.outside = np.ones((288, 360), bool)
        self.outside[y1 - MARGIN:y2 + MARGIN, x1 - MARGIN:x2 + MARGIN] = False

    def __call__(self, frame, index):
        image = frame.to_ndarray(format="bgr24").astype(np.float64)
        expected = self.avatar.frame(live.pingpong(index, len(self.avatar))).astype(np.float64)
        diff = np.abs(image - expected)
        self.rows[index] = (diff[self.inside].mean(), 10 * np.log10(255.0 ** 2 / max((diff[self.outside] ** 2).mean(),
                                                                                      1e-12)))

    def face_diff(self, indices):
        return [self.rows[i][0] for i in indices if i in self.rows]

    def outside_psnr(self):
        return min(psnr for _, psnr in self.rows.values())


class AudioMonitor:
    """The received audio placed at its RTP timestamps, as 16 kHz mono."""

    def __init__(self):
        self.first, self.chunks = None, []

    def __call__(self, frame):
        self.first = frame.pts if self.first is None else self.first
        samples = frame.to_ndarray().reshape(-1, len(frame.layout.channels)).mean(axis=1)
        self.chunks.append(((frame.pts - self.first) % (1 << 32), samples, frame.sample_rate))

    def samples_16k(self):
        rate = self.chunks[0][2]
        out = np.zeros(max(offset + len(s) for offset, s, _ in self.chunks))
        for offset, s, _ in self.chunks:
            out[offset:offset + len(s)] = s
        return out[::rate // 16000]


def test_video_frames_reach_the_encoder_as_yuv420p():
    """The pacer converts each frame with OpenCV, so aiortc's encoder thread does not (swscale):
    the same luma within a level, and decoded back no further from the frame than swscale's."""
    import av
    import videoio
    from server.rtc import video_frame

    image = next(iter(videoio.read_frames(str(MEDIA / "bbaf2n.mpg"))))          # 360x288, BGR
    out = video_frame(live.Frame(image, np.zeros(640, np.int16), 1.0, 25, 0, False))
    assert out.format.name == "yuv420p" and (out.width, out.height) == (360, 288) and out.pts == 90000
    swscale = av.VideoFrame.from_ndarray(image, format="bgr24").reformat(format="yuv420p")
    assert np.abs(out.to_ndarray()[:288].astype(int) - swscale.to_ndarray()[:288]).max() <= 1

    def decoded_error(frame):
        return np.abs(frame.reformat(format="bgr24").to_ndarray().astype(int) - image).mean()

    assert decoded_error(out) <= decoded_error(swscale)
    odd = video_frame(live.Frame(image[:-1, :-1], np.zeros(640, np.int16), 0.0, 0, 0, False))
    assert odd.format.name == "bgr24" and np.array_equal(odd.to_ndarray(), image[:-1, :-1])


def test_the_server_encodes_vp8_without_the_denoiser():
    """Live sessions' VP8 goes through CleanVp8Encoder (aiortc's settings, the temporal denoiser
    off): on real frames it decodes closer to them than aiortc's own encoder at the same
    bitrate, and still makes a keyframe when the receiver asks for one."""
    import aiortc.rtcrtpsender
    import cv2
    import videoio
    from aiortc.codecs import depayload, get_decoder, get_encoder
    from aiortc.jitterbuffer import JitterFrame
    from aiortc.rtcrtpparameters import RTCRtpCodecParameters
    from server.rtc import CleanVp8Encoder, LiveSessions, video_frame

    vp8, h264 = (RTCRtpCodecParameters(mimeType=m, clockRate=90000) for m in ("video/VP8", "video/H264"))
    LiveSessions(None, None)
    assert isinstance(aiortc.rtcrtpsender.get_encoder(vp8), CleanVp8Encoder)
    assert not isinstance(aiortc.rtcrtpsender.get_encoder(h264), CleanVp8Encoder)
    images = [image for _, image in zip(range(40), videoio.read_frames(str(MEDIA / "bbaf2n.mpg")))]

    def luma_error(encoder, keyframe_at=None):
        decoder, errors, keyframes = get_decoder(vp8), [], []
        for i, image in enumerate(images):
            payloads, timestamp = encoder.encode(video_frame(live.Frame(image, np.zeros(640, np.int16), i / 25, i,
                                                                        i, False)), force_keyframe=i == keyframe_at)
            data = b"".join(depayload(vp8, payload) for payload in payloads)
            keyframes.append(data[0] & 1 == 0)  # VP8 frame tag: bit 0 clear on a keyframe
            for decoded in decoder.decode(JitterFrame(data, timestamp)):
                luma = cv2.cvtColor(image, cv2.COLOR_BGR2YUV)[:, :, 0].astype(int)
                errors.append(np.abs(decoded.to_ndarray(format="gray").astype(int) - luma).mean())
        return np.mean(errors[5:]), keyframes

    clean, keyframes = luma_error(CleanVp8Encoder(), keyframe_at=20)
    theirs, _ = luma_error(get_encoder(vp8))
    assert clean < theirs
    assert [i for i, key in enumerate(keyframes) if key] == [0, 20]


def test_uploaded_speech_over_webrtc(server):
    """The face region changes only during the utterance, the rest stays the avatar's (up to
    codec loss), the avatar idles again afterwards, and audio and video agree within one frame."""
    faces, sound = FaceMonitor(server.avatar), AudioMonitor()
    speech = audio.load_wav(str(SPEECH), 16000)

    async def scenario():
        async with aiohttp.ClientSession() as http:
            client = await LiveClient.connect(http, server.url, "grid", on_video=faces, on_audio=sound)
            await client.wait_event("hello")
            while client.video_frames < 25:
                await asyncio.sleep(0.05)
            sent = time.monotonic()
            status, body = await client.post("speech", data=form(audio=SPEECH))
            assert status == 200 and abs(body["seconds"] - len(speech) / 16000) < 0.01
            start = await client.wait_event("speech_start", sent)
            end = await client.wait_event("speech_end", sent, seconds=60)
            await asyncio.sleep(1.0)
            stats = await client.close()
            return start, end, stats

    start, end, stats = asyncio.run(scenario())
    assert start["latency_ms"] is not None and stats["frames"] >= end["frame"] + 20
    assert end["frame"] - start["frame"] == len(range(start["frame"], end["frame"]))
    frames_of_speech = round(len(speech) / 16000 * FPS)
    assert abs((end["frame"] - start["frame"]) - frames_of_speech) <= 2

    idle_before = faces.face_diff(range(start["frame"]))
    speaking = faces.face_diff(range(start["frame"], end["frame"]))
    idle_after = faces.face_diff(range(end["frame"], max(faces.rows) + 1))
    assert len(idle_before) >= 20 and len(speaking) >= 0.9 * frames_of_speech and len(idle_after) >= 15
    codec = max(idle_before + idle_after)
    assert codec < 6.0, "idle frames are not the avatar's frames"
    assert min(speaking) > 2 * codec, "frames of the utterance do not change the face"
    assert faces.outside_psnr() > 30.0, "pixels outside the face box changed beyond codec loss"

    # The utterance's first sample goes out with its first frame: find it in the received audio.
    received = sound.samples_16k()
    head = speech[:16000]
    scores = correlate(received, head, mode="valid")
    audio_start = int(np.argmax(scores)) / 16000
    assert abs(audio_start - start["frame"] / FPS) <= 1 / FPS, (audio_start, start["frame"] / FPS)


def test_max_lag_reaches_the_servers_sessions(server, tmp_path):
    """serve.py --max_lag bounds its sessions' lag: with a bound shorter than any frame takes,
    the utterance's frames go out caught up (the avatar's own face, events as usual) and the
    session's stats count them."""
    faces = FaceMonitor(server.avatar)

    async def scenario(running):
        async with aiohttp.ClientSession() as http:
            client = await LiveClient.connect(http, running.url, "grid", on_video=faces)
            await client.wait_event("hello")
            sent = time.monotonic()
            status, body = await client.post("speech", data=form(audio=SPEECH))
            assert status == 200, body
            start = await client.wait_event("speech_start", sent)
            end = await client.wait_event("speech_end", sent, seconds=60)
            await asyncio.sleep(0.5)
            return start, end, await client.close()

    with running_server(tmp_path, server.checkpoint, "--avatars", server.folder / "avatars",
                        "--max_lag", "0.001") as running:
        start, end, stats = asyncio.run(scenario(running))
    speech_frames = end["frame"] - start["frame"]
    assert speech_frames > 50 and stats["caught_up"] >= speech_frames - 2, (speech_frames, stats)
    speaking = faces.face_diff(range(start["frame"], end["frame"]))
    assert len(speaking) >= 0.9 * speech_frames and max(speaking) < 6.0, "caught-up frames are not the avatar's"
    assert re.search(r"[1-9][0-9]* caught up", running.log()), "the session's log line has no caught-up count"


def test_pcm_websocket_interrupt_and_events(server):
    """Speech streamed in 20 ms chunks at real-time pace; 'end' ends an utterance; an interrupt
    stops the next one within a frame; a PCM message of an odd length gets an error."""
    speech = np.clip(np.rint(audio.load_wav(str(MEDIA / "jfk.wav"), 16000) * 32768), -32768, 32767).astype(np.int16)
    faces = FaceMonitor(server.avatar)

    async def scenario():
        async with aiohttp.ClientSession() as http:
            client = await LiveClient.connect(http, server.url, "grid", on_video=faces)
            await client.wait_event("hello")
            while client.video_frames < 25:
                await asyncio.sleep(0.05)
            ws = await http.ws_connect("%s/api/sessions/%s/pcm" % (server.url, client.session_id))
            await ws.send_bytes(b"\x01\x02\x03")
            error = await ws.receive_json(timeout=10)
            assert "even number of bytes" in error["error"]

            sent = time.monotonic()
            await client.stream_pcm(speech[:int(1.5 * 16000)], ws=ws)        # one utterance, ended by 'end'
            first_start = await client.wait_event("speech_start", sent)
            first_end = await client.wait_event("speech_end", sent, seconds=30)

            sent = time.monotonic()
            streaming = asyncio.ensure_future(client.stream_pcm(speech[2 * 16000:6 * 16000], end=False, ws=ws))
            second_start = await client.wait_event("speech_start", sent)
            while max(faces.rows) < second_start["frame"] + 5:   # a few speaking frames received
                await asyncio.sleep(0.02)
            streaming.cancel()                  # speech sent after the interrupt would be a new utterance
            status, interrupted = await client.post("interrupt")
            assert status == 200
            second_end = await client.wait_event("speech_end", sent)
            await ws.close()
            await asyncio.sleep(0.5)
            await client.close()
            return first_start, first_end, second_start, interrupted, second_end

    first_start, first_end, second_start, interrupted, second_end = asyncio.run(scenario())
    assert abs((first_end["frame"] - first_start["frame"]) - 1.5 * FPS) <= 2
    assert first_start["latency_ms"] is not None and second_start["frame"] > first_end["frame"]
    assert second_end["frame"] - interrupted["frame"] <= 1, (interrupted, second_end)
    codec = max(faces.face_diff(range(first_start["frame"])))
    speaking = faces.face_diff(range(second_start["frame"], interrupted["frame"]))
    assert speaking and min(speaking) > 2 * codec, (first_start, first_end, second_start, interrupted, second_end)
    after = faces.face_diff(range(second_end["frame"], second_end["frame"] + 10))
    assert after and max(after) < max(6.0, 2 * codec), "the avatar still speaks after the interrupt"
