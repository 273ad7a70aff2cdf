"""Benchmarks of the lip-sync server (not tests; the README quotes their figures).

    python bench_serve.py --stacks                       # aiohttp vs FastAPI/uvicorn, minimal apps
    python bench_serve.py --checkpoint_path ckpt.pth --face face.mp4 --speech speech.wav --minutes 5 --fast
                                                         # one 720p avatar over WebRTC: late frames, latency
    python bench_serve.py ... --size 854x480 --sessions 2 --fast     # concurrent sessions
    python bench_serve.py ... --receive_only                          # the clients do not decode the video
    python bench_serve.py --encoders --face face.mp4 --size 1280x720 # WebRTC video encoding alone

The WebRTC runs start serve.py on a free local port, prepare an avatar from --face (scaled to
--size, face detected), and connect aiortc clients that stream --speech over the WebSocket at
real-time pace, one utterance after another with a 1 s pause; each client reports the frames
the server sent and counted late, and the latency from sending the first chunk of an utterance
to receiving the utterance's first lip-synced frame.
"""
import argparse
import asyncio
import http.client
import os
import socket
import statistics
import subprocess
import sys
import time

MINIMAL_AIOHTTP = """
from aiohttp import web
async def health(request):
    return web.json_response({"status": "ok"})
app = web.Application()
app.router.add_get("/health", health)
web.run_app(app, host="127.0.0.1", port=%d, print=None, access_log=None)
"""
MINIMAL_FASTAPI = """
import uvicorn
from fastapi import FastAPI
app = FastAPI()
@app.get("/health")
def health():
    return {"status": "ok"}
uvicorn.run(app, host="127.0.0.1", port=%d, log_level="warning", access_log=False)
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def wait_for(port, path="/health", seconds=60, headers=None, proc=None):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError("server exited with status %d" % proc.returncode)
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", path, headers=headers or {})
            if conn.getresponse().status < 500:
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("server on port %d did not answer within %d s" % (port, seconds))


def measure_stack(source, requests=500):
    """(idle RSS MB, median GET latency ms) of a minimal app."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", source % port], env=dict(os.environ))
    try:
        wait_for(port, proc=proc)
        conn = http.client.HTTPConnection("127.0.0.1", port)
        latencies = []
        for _ in range(requests):
            start = time.perf_counter()
            conn.request("GET", "/health")
            conn.getresponse().read()
            latencies.append((time.perf_counter() - start) * 1000)
        time.sleep(1)
        return rss_mb(proc.pid), statistics.median(latencies)
    finally:
        proc.terminate()
        proc.wait(10)


def stacks(runs):
    for name, source in (("aiohttp", MINIMAL_AIOHTTP), ("fastapi+uvicorn", MINIMAL_FASTAPI)):
        try:
            figures = [measure_stack(source) for _ in range(runs)]
        except RuntimeError as e:
            print("%s: %s" % (name, e))
            continue
        print("%-16s idle RSS %.0f MB, GET /health median latency %.2f ms (medians of %d runs)"
              % (name, statistics.median(f[0] for f in figures), statistics.median(f[1] for f in figures), runs))


def scaled_copy(face, size, folder):
    """`face` re-encoded at `size` (width, height), the avatar's resolution for the run."""
    import cv2

    import videoio

    path = os.path.join(folder, "face-%dx%d.mp4" % size)
    frames = [videoio.read_image(face)] if videoio.is_image(face) else videoio.read_frames(face)
    fps = 25.0 if videoio.is_image(face) else videoio.video_fps(face)
    with videoio.VideoWriter(path, fps, *size, preset="ultrafast") as writer:
        for frame in frames:
            writer.write(cv2.resize(frame, size, interpolation=cv2.INTER_CUBIC))
    return path


async def run_clients(url, sessions, seconds, speech, fps):
    """`sessions` clients, each streaming utterances of `speech` over the WebSocket for `seconds`."""
    import aiohttp

    from server.client import LiveClient

    async def one(http):
        received = {}
        client = await LiveClient.connect(http, url, "bench", fps=fps,
                                          on_video=lambda frame, index: received.setdefault(index, time.monotonic()))
        latencies, stop_at = [], time.monotonic() + seconds
        ws = await http.ws_connect("%s/api/sessions/%s/pcm" % (url, client.session_id))
        while time.monotonic() < stop_at - len(speech) / 16000:
            sent = time.monotonic()
            await client.stream_pcm(speech, ws=ws)
            start = await client.wait_event("speech_start", sent, seconds=60)
            while start["frame"] not in received and max(received, default=-1) < start["frame"]:
                await asyncio.sleep(0.005)
            if start["frame"] in received:
                latencies.append(received[start["frame"]] - sent)
            await client.wait_event("speech_end", sent, seconds=max(60.0, 20 * len(speech) / 16000))
            await asyncio.sleep(1.0)
        await ws.close()
        stats = await client.close()
        return stats, latencies, len(received)

    async with aiohttp.ClientSession() as http:
        results = await asyncio.gather(*(one(http) for _ in range(sessions)))
    return results


class ReceiveOnlyDecoder:
    """Stands in for the client's video decoder: a 16x16 frame with the received frame's
    timestamp, so the client counts and times what arrives without decoding it on the cores
    the server runs on (--receive_only)."""

    def __init__(self):
        from av import VideoFrame

        from server.rtc import VIDEO_TIME_BASE

        self.video_frame, self.time_base = VideoFrame, VIDEO_TIME_BASE

    def decode(self, encoded_frame):
        frame = self.video_frame(16, 16, "yuv420p")
        frame.pts, frame.time_base = encoded_frame.timestamp, self.time_base
        return [frame]


def receive_only():
    """Make this process's aiortc receivers pass video through ReceiveOnlyDecoder."""
    import aiortc.rtcrtpreceiver

    decoder_for = aiortc.rtcrtpreceiver.get_decoder
    aiortc.rtcrtpreceiver.get_decoder = \
        lambda codec: ReceiveOnlyDecoder() if codec.mimeType.lower().startswith("video/") else decoder_for(codec)


def webrtc(args):
    import tempfile

    import numpy as np

    import audio
    import benchmark

    folder = tempfile.mkdtemp(prefix="bench-serve-")
    size = tuple(int(v) for v in args.size.split("x"))
    face = scaled_copy(args.face, size, folder)
    port = free_port()
    command = [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "serve.py"),
               "--checkpoint_path", args.checkpoint_path, "--avatars", os.path.join(folder, "avatars"),
               "--port", str(port), "--max_sessions", str(args.sessions), "--tmp_dir", folder]
    proc = subprocess.Popen(command + (["--fast"] if args.fast else []), stdout=subprocess.DEVNULL)
    try:
        wait_for(port, proc=proc)
        url = "http://127.0.0.1:%d" % port
        prepare_avatar(url, face, args.fast)
        speech = np.clip(np.rint(audio.load_wav(args.speech, 16000) * 32768), -32768, 32767).astype(np.int16)
        if args.receive_only:
            receive_only()
        before = benchmark.cpu_ticks()
        results = asyncio.run(run_clients(url, args.sessions, args.minutes * 60, speech, 25.0))
        after = benchmark.cpu_ticks()
    finally:
        proc.terminate()
        proc.wait(30)
    print("avatar %dx%d, %d session(s), %.1f min, --fast %s%s" % (*size, args.sessions, args.minutes, args.fast,
                                                                ", clients not decoding" if args.receive_only else ""))
    for i, (stats, latencies, received) in enumerate(results):
        print("session %d: %d frames sent in %.1f s (%.2f fps), %d late, %d dropped, %d received; latency from "
              "speech to the first lip-synced frame received: median %.0f ms (%d utterances)"
              % (i, stats["frames"], stats["seconds"], stats["frames"] / stats["seconds"], stats["late"],
                 stats["dropped"], received, 1000 * statistics.median(latencies) if latencies else float("nan"),
                 len(latencies)))
    if after[1] > before[1]:
        print("CPU steal (the hypervisor running other guests on this VM's CPUs): %.1f%% of the run"
              % (100 * benchmark.steal_between(before, after)))


def prepare_avatar(url, face, fast):
    """The avatar "bench" from `face` through the server's API (face detected)."""
    import json
    import urllib.request
    import uuid

    boundary = uuid.uuid4().hex
    with open(face, "rb") as f:
        data = f.read()
    body = b"".join([("--%s\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\nbench\r\n" % boundary).encode(),
                     ("--%s\r\nContent-Disposition: form-data; name=\"face\"; filename=\"face.mp4\"\r\n"
                      "Content-Type: video/mp4\r\n\r\n" % boundary).encode(), data,
                     ("\r\n--%s--\r\n" % boundary).encode()])
    request = urllib.request.Request(url + "/api/avatars", body, method="POST",
                                     headers={"Content-Type": "multipart/form-data; boundary=" + boundary})
    job = json.load(urllib.request.urlopen(request))["job_id"]
    while True:
        status = json.load(urllib.request.urlopen(url + "/api/jobs/" + job))
        if status["state"] != "queued" and status["state"] != "running":
            break
        time.sleep(0.5)
    if status["state"] != "done":
        raise RuntimeError("avatar preparation %s: %s" % (status["state"], status["error"]))


def encoders(face, size, frames=150):
    """Median ms per frame of aiortc's VP8 and H.264 encoders and the server's VP8 encoder
    (server.rtc.CleanVp8Encoder) on `face`'s frames scaled to `size`, as the server hands them
    over (server.rtc.video_frame's conversion timed apart), and each one's luma PSNR (decoded)."""
    import cv2
    import numpy as np
    from aiortc.codecs import depayload, get_decoder, get_encoder
    from aiortc.jitterbuffer import JitterFrame
    from aiortc.rtcrtpparameters import RTCRtpCodecParameters

    import live
    import videoio
    from server.rtc import CleanVp8Encoder, video_frame

    width, height = size
    images = [cv2.resize(image, (width, height)) for _, image in zip(range(75), videoio.read_frames(face))]
    silence = np.zeros(640, np.int16)
    codecs = {name: RTCRtpCodecParameters(mimeType=name, clockRate=90000) for name in ("video/VP8", "video/H264")}
    for name, codec, encoder in (("aiortc VP8", codecs["video/VP8"], get_encoder(codecs["video/VP8"])),
                                 ("server VP8", codecs["video/VP8"], CleanVp8Encoder()),
                                 ("aiortc H.264", codecs["video/H264"], get_encoder(codecs["video/H264"]))):
        decoder = get_decoder(codec)
        converting, encoding, psnr = [], [], []
        for i in range(frames):
            start = time.perf_counter()
            frame = video_frame(live.Frame(images[i % len(images)], silence, i / 25, i, i % len(images), False))
            converted = time.perf_counter()
            payloads, timestamp = encoder.encode(frame)
            converting.append(converted - start)
            encoding.append(time.perf_counter() - converted)
            data = b"".join(depayload(codec, payload) for payload in payloads)
            for decoded in decoder.decode(JitterFrame(data, timestamp)):
                luma = decoded.to_ndarray(format="gray").astype(np.float64)
                reference = cv2.cvtColor(images[i % len(images)], cv2.COLOR_BGR2YUV)[:, :, 0]
                psnr.append(10 * np.log10(255 ** 2 / max(1e-9, np.mean((luma - reference) ** 2))))
        converting, encoding = converting[10:], encoding[10:]  # the first frames set the encoder up
        print("%s %dx%d: encoding median %.1f ms a frame, p90 %.1f; conversion to %s %.1f ms; luma PSNR %.1f dB "
              "(%d frames)" % (name, width, height, statistics.median(encoding) * 1000,
                               statistics.quantiles(encoding, n=10)[-1] * 1000, frame.format.name,
                               statistics.median(converting) * 1000, statistics.mean(psnr[10:]), len(encoding)))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stacks", action="store_true", help="compare minimal aiohttp and FastAPI/uvicorn apps")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--checkpoint_path", help="Wav2Lip checkpoint for the WebRTC runs")
    p.add_argument("--face", help="face video or image of the avatar (re-encoded at --size)")
    p.add_argument("--speech", help="speech file streamed by every client, one utterance after another")
    p.add_argument("--size", default="1280x720", help="avatar size WIDTHxHEIGHT")
    p.add_argument("--sessions", type=int, default=1, help="concurrent live sessions")
    p.add_argument("--minutes", type=float, default=5.0)
    p.add_argument("--fast", action="store_true", help="serve.py --fast")
    p.add_argument("--encoders", action="store_true", help="time aiortc's video encoders on --face at --size")
    p.add_argument("--receive_only", action="store_true",
                   help="the clients receive the video but do not decode it (a browser elsewhere would)")
    args = p.parse_args()
    if args.stacks:
        stacks(args.runs)
    elif args.encoders:
        if not args.face:
            p.error("--encoders needs --face")
        encoders(args.face, tuple(int(v) for v in args.size.split("x")))
    elif not (args.checkpoint_path and args.face and args.speech):
        p.error("give --stacks, or --checkpoint_path, --face and --speech for a WebRTC run")
    else:
        webrtc(args)


if __name__ == "__main__":
    main()
