"""serve.py's HTTP API without WebRTC: dubbing jobs (the CLI's output, progress), uploads checked
by content and size, names, options, tokens, and a clean shutdown leaving no temporary file."""
import asyncio
import hashlib
import os
import subprocess
import sys

import aiohttp
import cv2
import numpy as np
import pytest

import inference
from conftest import MEDIA, REPO
from options import SyncOptions
from serve_util import call, form, running_server, wait_job, write_checkpoint

FACE_VIDEO = MEDIA / "bbaf2n.mpg"
FACE_IMAGE = MEDIA / "obama-240p.jpg"
SPEECH = MEDIA / "lwbsza.mpg"            # a video whose audio track is the speech


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, check):
    return write_checkpoint(check, tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="module")
def server(tmp_path_factory, checkpoint):
    folder = tmp_path_factory.mktemp("serve")
    with running_server(folder, checkpoint, "--avatars", folder / "avatars", "--max_upload_mb", 1) as running:
        yield running


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def test_progress_callable_reports_stages_and_stops_the_run(checkpoint, tmp_path):
    """lipsync_video's progress(stage, done, total): detection up to its total, then lip-sync; an
    exception raised by the callable stops the run and leaves no output."""
    from face_detection import load_detector

    model = inference.inference_model(inference.load_model(checkpoint))
    calls = []

    def record(stage, done, total):
        calls.append((stage, done, total))
        if stage == "lipsync" and done:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        inference.lipsync_video(model, str(FACE_VIDEO), str(SPEECH), str(tmp_path / "out.mp4"),
                                load_detector(quiet=True), SyncOptions(), progress=record)
    frames = len(inference.mel_chunks(inference.audio.melspectrogram(inference.load_speech(str(SPEECH))), 25.0))
    detect = [(done, total) for stage, done, total in calls if stage == "detect"]
    # Detection runs in whole batches of 16 covering the 71 output frames (80), and stops at the
    # end of the 3 s, 25 fps clip (75 frames).
    assert frames == 71
    assert detect[0] == (0, 80) and detect[-1] == (75, 75) and [d for d, _ in detect] == sorted(d for d, _ in detect)
    assert [stage for stage, _, _ in calls[len(detect):]] == ["lipsync", "lipsync"]
    assert calls[-2] == ("lipsync", 0, frames) and calls[-1][1] > 0
    assert os.listdir(tmp_path) == []


def test_job_writes_the_cli_file(server, checkpoint, tmp_path):
    """A job (face detected in an image, options from the form) gives the bytes inference.py writes."""
    cli_out = tmp_path / "cli.mp4"
    result = subprocess.run([sys.executable, str(REPO / "inference.py"), "--checkpoint_path", checkpoint,
                             "--face", FACE_IMAGE, "--audio", SPEECH, "--outfile", cli_out, "--fps", "10",
                             "--pads", "0", "20", "0", "0", "--no_cache", "--quiet"],
                            capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr

    async def scenario():
        async with aiohttp.ClientSession() as http:
            fields = [("fps", "10"), ("pads", "0,20,0,0")]
            status, body = await call(http, server, "POST", "/api/jobs",
                                      data=form(fields, face=FACE_IMAGE, audio=SPEECH))
            assert status == 202, body
            job, seen = await wait_job(http, server, body["job_id"])
            assert job["state"] == "done", job
            assert job["stages"] == ["detect", "lipsync"] and job["stage"] == "lipsync"
            assert job["progress"] == 1.0 and seen == sorted(seen)
            status, video = await call(http, server, "GET", job["result"])
            assert status == 200
            return video

    assert sha256(asyncio.run(scenario())) == sha256(cli_out.read_bytes())
    assert "job" in server.log() and " end: done" in server.log()


def test_bad_requests_get_their_errors(server, tmp_path):
    text_file = tmp_path / "notes.wav"
    text_file.write_text("this is not audio\n" * 100)
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((240, 320, 3), 128, np.uint8))

    async def scenario():
        async with aiohttp.ClientSession() as http:
            async def post_job(fields=(), **files):
                files = {"face": FACE_VIDEO, "audio": SPEECH, **files}
                return await call(http, server, "POST", "/api/jobs", data=form(fields, **files))

            status, body = await post_job(audio=text_file)
            assert status == 415 and "no audio" in body["error"]
            status, body = await post_job(face=text_file)
            assert status == 415 and "neither an image nor a video" in body["error"]
            status, body = await post_job(face=("big.mp4", os.urandom(3 << 20)))
            assert status == 413 and "--max_upload_mb" in body["error"]
            status, body = await post_job([("pads", "0 ten 0 0")])
            assert status == 400 and "--pads" in body["error"]
            status, body = await post_job([("box", "200 100 0 50")])
            assert status == 400 and "--box 200 100 0 50 is not a box" in body["error"]
            status, body = await post_job([("blend", "foo")])
            assert status == 400 and "--blend 'foo'" in body["error"]
            status, body = await post_job([("face_select", "index:x")])
            assert status == 400 and "--face_select" in body["error"]
            status, body = await post_job([("mask_edge", "wide")])
            assert status == 400 and "--mask_edge" in body["error"]
            status, body = await post_job([("blend", "feather"), ("face_select", "largest"), ("color_match", "1")])
            assert status == 202, body
            status, body = await post_job([("wav2lip_batch_size", "100000")])
            assert status == 400 and "unknown field" in body["error"]
            status, body = await call(http, server, "POST", "/api/jobs", data=form(face=FACE_VIDEO))
            assert status == 400 and "missing file field(s) audio" in body["error"]
            status, body = await call(http, server, "POST", "/api/jobs", json={"face": "/etc/passwd"})
            assert status == 400 and "multipart" in body["error"]

            status, body = await post_job(face=blank)  # a face image without a face: the job fails
            assert status == 202
            job, _ = await wait_job(http, server, body["job_id"])
            assert job["state"] == "failed" and "no face found" in job["error"] and "--box" in job["error"]
            status, body = await call(http, server, "GET", "/api/jobs/%s/result" % job["job_id"])
            assert status == 409

            for path in ("/api/jobs/nosuchjob", "/api/jobs/..%2F..%2Fetc", "/api/sessions/x/interrupt"):
                status, body = await call(http, server, "POST" if "sessions" in path else "GET", path)
                assert status == 404 and "error" in body
            status, body = await call(http, server, "POST", "/api/avatars",
                                      data=form([("name", "../evil")], face=FACE_VIDEO))
            assert status == 400 and "bad avatar name" in body["error"]
            status, body = await call(http, server, "DELETE", "/api/avatars/..%2F..%2Ftmp")
            assert status == 400 and "bad avatar name" in body["error"]
            status, body = await call(http, server, "GET", "/health")
            assert status == 200 and body["status"] == "ok"

    asyncio.run(scenario())
    assert os.path.isdir(tmp_path) and not os.path.exists(REPO.parent / "evil")


def test_page_is_served(server):
    async def scenario():
        async with aiohttp.ClientSession() as http:
            status, page = await call(http, server, "GET", "/")
            assert status == 200 and b"Dub" in page and b"/static/app.js" in page
            status, script = await call(http, server, "GET", "/static/app.js")
            assert status == 200 and b"/api/sessions" in script
            status, _ = await call(http, server, "GET", "/static/../serve.py")
            assert status in (403, 404)

    asyncio.run(scenario())


def test_token_required_off_localhost(checkpoint, tmp_path):
    refused = subprocess.run([sys.executable, str(REPO / "serve.py"), "--checkpoint_path", checkpoint,
                              "--host", "0.0.0.0"], capture_output=True, text=True, cwd=REPO, timeout=120,
                             env={k: v for k, v in os.environ.items() if k != "WAV2LIP_TOKEN"})
    assert refused.returncode == 1 and "--token" in refused.stderr and "WAV2LIP_TOKEN" in refused.stderr

    with running_server(tmp_path, checkpoint, "--avatars", tmp_path / "avatars", token="s3cret-token") as server:
        async def scenario():
            async with aiohttp.ClientSession() as http:
                for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-token"}):
                    for method, path in (("GET", "/health"), ("GET", "/api/avatars"), ("POST", "/api/jobs"),
                                         ("GET", "/api/sessions/x/events?token=wrong")):
                        status, body = await call(http, server, method, path, headers=headers)
                        assert status == 401 and "Bearer" in body["error"], (path, headers)
                status, body = await call(http, server, "GET", "/api/avatars")
                assert status == 200 and body == {"avatars": []}
                status, body = await call(http, server, "GET", "/api/sessions/x/events?token=s3cret-token",
                                          headers={})
                assert status == 404  # past the token check: no such session

        asyncio.run(scenario())
        assert "token required" in server.log()
