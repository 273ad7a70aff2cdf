"""Helpers for the server tests: a conformance-weights checkpoint, serve.py started on a free
local port (stopped with SIGTERM, checking that it leaves no temporary file), HTTP calls."""
import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time

import aiohttp
import torch

from bench_serve import free_port
from conftest import REPO

BOX = (60, 220, 110, 250)                  # y1 y2 x1 x2 around the GRID speaker's face (bbaf2n.mpg)


def write_checkpoint(check, folder):
    """An official-format Wav2Lip checkpoint with the conformance kit's deterministic weights."""
    path = os.path.join(folder, "wav2lip.pth")
    state = {"module." + k: v for k, v in check.make_state_dict("wav2lip", 11).items()}
    torch.save({"state_dict": state, "optimizer": None, "global_step": 0, "global_epoch": 0}, path)
    return path


def rss_mb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS for %d" % pid)


class ServerProcess:
    def __init__(self, proc, port, tmp_dir, log_path, token=None):
        self.proc, self.port, self.tmp_dir, self.log_path, self.token = proc, port, tmp_dir, log_path, token
        self.url = "http://127.0.0.1:%d" % port

    def headers(self):
        return {"Authorization": "Bearer " + self.token} if self.token else {}

    def log(self):
        with open(self.log_path) as f:
            return f.read()


@contextlib.contextmanager
def running_server(folder, checkpoint, *args, token=None, env=None, timeout=90):
    """serve.py on a free port with its temporary files under `folder`/tmp; on leaving, stopped
    with SIGTERM, which must end it cleanly and remove every temporary file."""
    port = free_port()
    tmp_dir = os.path.join(folder, "tmp")
    os.makedirs(tmp_dir, exist_ok=True)
    log_path = os.path.join(folder, "server-%d.log" % port)
    command = [sys.executable, str(REPO / "serve.py"), "--checkpoint_path", checkpoint, "--port", str(port),
               "--tmp_dir", tmp_dir, *map(str, args)]
    if token:
        command += ["--token", token]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                                env={**os.environ, **(env or {})})
    server = ServerProcess(proc, port, tmp_dir, log_path, token)
    try:
        wait_healthy(server, timeout)
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise AssertionError("server did not stop within 30 s of SIGTERM:\n" + server.log()[-3000:])
    assert proc.returncode == 0, "server exited with %s:\n%s" % (proc.returncode, server.log()[-3000:])
    assert os.listdir(tmp_dir) == [], "temporary files left: %s" % os.listdir(tmp_dir)


def wait_healthy(server, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise AssertionError("server exited at start-up:\n" + server.log()[-3000:])
        try:
            with socket.create_connection(("127.0.0.1", server.port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise AssertionError("server did not listen within %d s:\n%s" % (timeout, server.log()[-3000:]))


def form(fields=(), **files):
    """A multipart form: `files` maps field names to paths (or (filename, bytes))."""
    data = aiohttp.FormData()
    for name, value in fields:
        data.add_field(name, str(value))
    for name, source in files.items():
        if isinstance(source, tuple):
            data.add_field(name, source[1], filename=source[0])
        else:
            with open(source, "rb") as f:
                data.add_field(name, f.read(), filename=os.path.basename(source))
    return data


async def call(http, server, method, path, **kwargs):
    """(status, JSON or bytes) of one request, with the server's token unless headers are given."""
    kwargs.setdefault("headers", server.headers())
    async with http.request(method, server.url + path, **kwargs) as response:
        if response.content_type == "application/json":
            return response.status, await response.json()
        return response.status, await response.read()


async def wait_job(http, server, job_id, seconds=240):
    """Poll a job until it ends; returns its last status and the progress values seen."""
    seen, deadline = [], time.monotonic() + seconds
    while time.monotonic() < deadline:
        status, job = await call(http, server, "GET", "/api/jobs/" + job_id)
        assert status == 200, job
        seen.append(job["progress"])
        if job["state"] in ("done", "failed", "cancelled"):
            return job, seen
        await asyncio.sleep(0.1)
    raise AssertionError("job %s did not end within %d s" % (job_id, seconds))
