"""Benchmarks of the lip-sync server (not tests; the README quotes their figures).

    python bench_serve.py --stacks                       # aiohttp vs FastAPI/uvicorn, minimal apps
    python bench_serve.py --checkpoint_path ckpt.pth --face face.mp4 --minutes 5 --fast
                                                         # one avatar over WebRTC: late frames, latency
    python bench_serve.py --checkpoint_path ckpt.pth --face face.mp4 --concurrency --fast

The WebRTC runs start serve.py on a free local port, prepare an avatar from --face, and connect
aiortc clients that stream --speech over the WebSocket at real-time pace, one utterance after
another with a pause; each client counts frames received and the latency from sending the
first chunk of an utterance to the first frame whose face differs from the idle frame.
"""
import argparse
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


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stacks", action="store_true", help="compare minimal aiohttp and FastAPI/uvicorn apps")
    p.add_argument("--runs", type=int, default=5)
    args = p.parse_args()
    if args.stacks:
        stacks(args.runs)


if __name__ == "__main__":
    main()
