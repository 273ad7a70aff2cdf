"""A lip-sync server: live avatars over WebRTC and dubbing jobs, behind one HTTP API and a page.

    python serve.py --checkpoint_path checkpoints/wav2lip_gan.pth --avatars avatars/

Listens on 127.0.0.1:8000 (any other --host needs a token). The model and face detector load
once; dubbing jobs and avatar preparations run queued in one worker thread, live sessions each
in their own reader thread. aiohttp + aiortc (aiortc's own stack), chosen by measuring
(`python bench_serve.py --stacks`): a minimal aiohttp app idles at 37 MB RSS against 47 MB for
FastAPI on uvicorn, with a median GET latency of 0.31 ms against 0.82 ms.
"""
import argparse
import asyncio
import hmac
import json
import logging
import os
import shutil
import sys
import threading

import numpy as np
from aiohttp import WSMsgType, web

import inference
from hparams import parse_bool
from options import OptionsError, SyncOptions
from server.jobs import Job, JobQueue
from server.rtc import LiveSessions, LiveSettings, limit_arenas
from server.uploads import NAME, RequestError, TempRoot, check_name, keep_audio, keep_face, read_form, remove_folder

log = logging.getLogger("serve")
STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "server", "static")
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
TOKEN_ENV = "WAV2LIP_TOKEN"
JSON_BYTES = 256 * 1024
MAX_SPEECH_SECONDS = 600
# live.load_avatar parses its .npy header with ast.literal_eval, and CPython 3.11's parser fails
# ("AST constructor recursion depth mismatch") when two threads parse at once: one load at a time.
AVATAR_LOAD = threading.Lock()
# The options a job or avatar takes from a form, by their inference.py names.
FORM_OPTIONS = ("static", "fps", "pads", "resize_factor", "crop", "box", "rotate", "nosmooth", "on_no_face", "fast",
                "blend", "mask_shape", "mask_edge", "color_match", "face_select")


# --------------------------------------------------------------------------- requests
def error_response(status, message):
    return web.json_response({"error": message}, status=status)


@web.middleware
async def errors(request, handler):
    """Every failure as a JSON error with its status; never a traceback."""
    try:
        return await handler(request)
    except RequestError as e:
        return error_response(e.status, str(e))
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return error_response(e.status, e.reason)
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:
        log.exception("request %s %s failed", request.method, request.path)
        return error_response(500, "internal error; the server log has the details")


async def quiet_closing_races(app):
    """aiortc leaves a connect task behind when a client closes its session while ICE is still
    starting; its InvalidStateError (and the cancelled gathers around it) are logged as one line,
    not as asyncio's "exception was never retrieved" traceback. Everything else as before."""
    from aiortc.exceptions import InvalidStateError

    def handle(loop, context):
        error = context.get("exception")
        if isinstance(error, (InvalidStateError, asyncio.CancelledError)):
            log.info("webrtc: %s after its connection closed (ignored)", type(error).__name__)
            return
        loop.default_exception_handler(context)

    asyncio.get_running_loop().set_exception_handler(handle)


def token_check(token):
    @web.middleware
    async def authorize(request, handler):
        if token and (request.path.startswith("/api/") or request.path == "/health"):
            given = request.headers.get("Authorization", "")
            given = given[7:] if given.startswith("Bearer ") else None
            if given is None and (request.path.endswith("/pcm") or request.path.endswith("/events")):
                given = request.query.get("token")  # WebSocket and EventSource cannot set headers
            if given is None or not hmac.compare_digest(given.encode(), token.encode()):
                return error_response(401, "missing or wrong token: send Authorization: Bearer <token>")
        return await handler(request)
    return authorize


async def read_json(request):
    if request.content_length is not None and request.content_length > JSON_BYTES:
        raise RequestError(413, "JSON body over %d bytes" % JSON_BYTES)
    try:
        body = json.loads(await request.content.read(JSON_BYTES + 1))
    except (ValueError, UnicodeDecodeError):
        raise RequestError(400, "send a JSON object body")
    if not isinstance(body, dict):
        raise RequestError(400, "send a JSON object body")
    return body


def parse_options(fields, allowed=FORM_OPTIONS):
    """SyncOptions from form fields named as inference.py's flags (whitelisted, validated)."""
    unknown = sorted(set(fields) - set(allowed))
    if unknown:
        raise RequestError(400, "unknown field(s) %s; options are %s" % (", ".join(unknown), ", ".join(allowed)))
    values = {}
    for name, text in fields.items():
        default = getattr(SyncOptions(), name)
        try:
            if isinstance(default, bool):
                values[name] = parse_bool(text)
            elif isinstance(default, tuple):
                values[name] = tuple(int(v) for v in text.replace(",", " ").split())
                if len(values[name]) != 4:
                    raise ValueError
            else:
                values[name] = type(default)(text)
        except (ValueError, TypeError, OverflowError):
            raise RequestError(400, "--%s %r is not a %s" % (name, text, "list of four integers top bottom left "
                                                             "right" if isinstance(default, tuple) else
                                                             type(default).__name__))
    try:
        return SyncOptions.from_dict(values).validate()
    except OptionsError as e:
        raise RequestError(400, str(e))


# --------------------------------------------------------------------------- the server
class Server:
    def __init__(self, model, detector, avatars, temp_root, max_upload_mb=500, keep_seconds=3600,
                 live=LiveSettings()):
        self.model, self.detector, self.avatars, self.temp_root = model, detector, avatars, temp_root
        self.max_upload = int(max_upload_mb * (1 << 20))
        self.jobs = JobQueue(keep_seconds=keep_seconds)
        self.sessions = LiveSessions(model, temp_root, live)
        os.makedirs(avatars, exist_ok=True)

    def avatar_path(self, name):
        path = os.path.join(self.avatars, check_name(name, "avatar name"))
        if not os.path.isdir(path):
            raise RequestError(404, "no avatar %r; GET /api/avatars lists them" % name)
        return path

    # ------------------------------------------------------------- health and page
    async def health(self, request):
        return web.json_response({"status": "ok", "sessions": len(self.sessions.sessions),
                                  "max_sessions": self.sessions.settings.max_sessions,
                                  "jobs_waiting": sum(j.state == "queued" for j in self.jobs.jobs.values())})

    async def page(self, request):
        return web.FileResponse(os.path.join(STATIC, "index.html"))

    # ------------------------------------------------------------- avatars
    async def list_avatars(self, request):
        import live

        out = []
        for name in sorted(os.listdir(self.avatars)):
            if NAME.fullmatch(name) and os.path.isdir(os.path.join(self.avatars, name)):
                try:
                    avatar = await asyncio.to_thread(load_avatar, os.path.join(self.avatars, name))
                except live.AvatarError:  # a foreign folder: not an avatar
                    continue
                with avatar:
                    out.append({"name": name, "fps": avatar.fps, "width": avatar.size[0], "height": avatar.size[1],
                                "frames": len(avatar)})
        return web.json_response({"avatars": out})

    async def create_avatar(self, request):
        folder = self.temp_root.folder("avatar")
        try:
            fields, files = await read_form(request, folder, ("face",), self.max_upload)
            name = check_name(fields.pop("name", ""), "avatar name")
            options = parse_options(fields)
            if os.path.exists(os.path.join(self.avatars, name)):
                raise RequestError(409, "avatar %r exists; delete it first or choose another name" % name)
            face = keep_face(*files["face"])
        except BaseException:
            remove_folder(folder)
            raise
        job = Job("avatar", folder, lambda job: self._prepare_avatar(job, face, name, options),
                  ("detect",) if options.detect else (), name=name)
        self.jobs.submit(job)
        return web.json_response({"name": name, "job_id": job.id}, status=202)

    def _prepare_avatar(self, job, face, name, options):
        """live.prepare_avatar writes the avatar under a temporary name and renames it into place."""
        import live

        target = os.path.join(self.avatars, name)
        if os.path.exists(target):
            raise RequestError(409, "avatar %r was created meanwhile; choose another name" % name)
        live.prepare_avatar(face, target, detector=self.detector, no_cache=True, progress=job.report,
                            **options.to_dict())
        with load_avatar(target) as avatar:
            return {"frames": len(avatar)}

    async def delete_avatar(self, request):
        name = request.match_info["name"]
        path = self.avatar_path(name)
        if self.sessions.using(name):
            raise RequestError(409, "avatar %r is in use by %d live session(s); close them first"
                               % (name, self.sessions.using(name)))
        await asyncio.to_thread(shutil.rmtree, path)
        log.info("avatar %s deleted", name)
        return web.json_response({"deleted": name})

    # ------------------------------------------------------------- dubbing jobs
    async def create_job(self, request):
        folder = self.temp_root.folder("job")
        try:
            fields, files = await read_form(request, folder, ("face", "audio"), self.max_upload)
            options = parse_options(fields)
            face, speech = keep_face(*files["face"]), keep_audio(*files["audio"])
        except BaseException:
            remove_folder(folder)
            raise
        outfile = os.path.join(folder, "result.mp4")
        job = Job("dub", folder, lambda job: self._dub(job, face, speech, outfile, options),
                  ("detect", "lipsync") if options.detect else ("lipsync",))
        self.jobs.submit(job)
        return web.json_response({"job_id": job.id}, status=202)

    def _dub(self, job, face, speech, outfile, options):
        stats = inference.lipsync_video(self.model, face, speech, outfile, self.detector, options, progress=job.report)
        for path in (face, speech):
            os.remove(path)
        job.result = outfile
        return stats

    async def job_status(self, request):
        return web.json_response(self.jobs.get(request.match_info["id"]).to_dict())

    async def job_result(self, request):
        job = self.jobs.get(request.match_info["id"])
        if job.state != "done" or job.result is None:
            raise RequestError(409, "job %s is %s; its result is ready when its state is done" % (job.id, job.state))
        return web.FileResponse(job.result, headers={"Content-Type": "video/mp4",
                                                     "Content-Disposition": 'attachment; filename="dub-%s.mp4"'
                                                     % job.id[:8]})

    async def delete_job(self, request):
        self.jobs.delete(request.match_info["id"])
        return web.json_response({"deleted": request.match_info["id"]})

    # ------------------------------------------------------------- live sessions
    async def open_session(self, request):
        import live

        body = await read_json(request)
        name = body.get("avatar")
        path = self.avatar_path(name)
        try:
            avatar = await asyncio.to_thread(load_avatar, path)
        except live.AvatarError as e:
            raise RequestError(409, str(e))
        try:
            session, answer = await self.sessions.open(name, avatar, body.get("sdp"), body.get("type"))
        except BaseException:
            avatar.close()
            raise
        return web.json_response({"session_id": session.id, "sdp": answer.sdp, "type": answer.type})

    async def session_speech(self, request):
        session = self.sessions.get(request.match_info["id"])
        folder = self.temp_root.folder("speech")
        try:
            _, files = await read_form(request, folder, ("audio",), self.max_upload)
            path = keep_audio(*files["audio"])
            samples = await asyncio.to_thread(speech_samples, path)
        finally:
            remove_folder(folder)
        await session.push(samples)
        await session.end_utterance()
        return web.json_response({"seconds": round(len(samples) / 16000, 3)})

    async def session_pcm(self, request):
        session = self.sessions.get(request.match_info["id"])
        ws = web.WebSocketResponse(max_msg_size=1 << 20)  # no heartbeat: senders need not read
        await ws.prepare(request)
        async for message in ws:
            if message.type == WSMsgType.BINARY:
                if len(message.data) % 2:
                    await ws.send_json({"error": "PCM message of %d bytes: send whole 16-bit samples "
                                                 "(an even number of bytes)" % len(message.data)})
                    continue
                await session.push(np.frombuffer(message.data, "<i2"))
            elif message.type == WSMsgType.TEXT:
                if message.data.strip() == "end":
                    await session.end_utterance()
                else:
                    await ws.send_json({"error": "unknown text message %r; send 'end' to end the utterance"
                                                 % message.data[:40]})
            if session.closed.is_set():
                break
        await ws.close()
        return ws

    async def session_interrupt(self, request):
        frame = await self.sessions.get(request.match_info["id"]).interrupt()
        return web.json_response({"interrupted": True, "frame": frame})

    async def session_events(self, request):
        session = self.sessions.get(request.match_info["id"])
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        queue = asyncio.Queue(100)
        session.subscribers.add(queue)
        try:
            await response.write(b"event: hello\ndata: %s\n\n" % json.dumps(session.stats()).encode())
            while (message := await queue.get()) is not None:
                await response.write(message.encode())
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            session.subscribers.discard(queue)
        return response

    async def close_session(self, request):
        session = self.sessions.get(request.match_info["id"])
        stats = session.stats()
        await self.sessions.close(session.id, "closed by client")
        return web.json_response(stats)

    # ------------------------------------------------------------- lifecycle
    async def shutdown(self, app):
        await self.sessions.close_all("server shutdown")
        await asyncio.to_thread(self.jobs.stop)
        self.temp_root.remove()
        log.info("server stopped")

    def app(self, token=None):
        app = web.Application(middlewares=[errors, token_check(token)], client_max_size=JSON_BYTES)
        app.router.add_get("/", self.page)
        app.router.add_static("/static/", STATIC)
        app.router.add_get("/health", self.health)
        app.router.add_get("/api/avatars", self.list_avatars)
        app.router.add_post("/api/avatars", self.create_avatar)
        app.router.add_delete("/api/avatars/{name}", self.delete_avatar)
        app.router.add_post("/api/sessions", self.open_session)
        app.router.add_post("/api/sessions/{id}/speech", self.session_speech)
        app.router.add_get("/api/sessions/{id}/pcm", self.session_pcm)
        app.router.add_post("/api/sessions/{id}/interrupt", self.session_interrupt)
        app.router.add_get("/api/sessions/{id}/events", self.session_events)
        app.router.add_delete("/api/sessions/{id}", self.close_session)
        app.router.add_post("/api/jobs", self.create_job)
        app.router.add_get("/api/jobs/{id}", self.job_status)
        app.router.add_get("/api/jobs/{id}/result", self.job_result)
        app.router.add_delete("/api/jobs/{id}", self.delete_job)
        app.on_startup.append(quiet_closing_races)
        app.on_shutdown.append(self.shutdown)
        return app


def load_avatar(path):
    import live

    with AVATAR_LOAD:
        return live.load_avatar(path)


def speech_samples(path):
    """16 kHz int16 samples of an uploaded speech file, at most MAX_SPEECH_SECONDS long."""
    import av

    import audio

    with av.open(path) as container:  # a stated length over the limit is refused before decoding
        if container.duration is not None and container.duration / av.time_base > MAX_SPEECH_SECONDS:
            raise RequestError(413, "speech of %.0f s is over %d s; send it in parts"
                               % (container.duration / av.time_base, MAX_SPEECH_SECONDS))
    wav = audio.load_wav(path, 16000)
    if len(wav) > MAX_SPEECH_SECONDS * 16000:
        raise RequestError(413, "speech of %.0f s is over %d s; send it in parts" % (len(wav) / 16000,
                                                                                  MAX_SPEECH_SECONDS))
    return np.clip(np.rint(wav * 32768.0), -32768, 32767).astype(np.int16)


# --------------------------------------------------------------------------- command line
def build_parser():
    p = argparse.ArgumentParser(description="Serve live Wav2Lip avatars over WebRTC and dubbing jobs.")
    p.add_argument("--checkpoint_path", required=True, help="Wav2Lip checkpoint (wav2lip.pth or wav2lip_gan.pth)")
    p.add_argument("--avatars", default="avatars", help="folder of prepared avatars (created if missing)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on; any other than localhost needs a token")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--token", default=None, help="bearer token every API request must carry (default: $%s)" % TOKEN_ENV)
    p.add_argument("--max_upload_mb", type=float, default=500, help="largest upload accepted (HTTP 413 beyond)")
    p.add_argument("--max_sessions", type=int, default=LiveSettings.max_sessions,
                   help="live sessions at once (default: what 2 CPU cores run in real time)")
    p.add_argument("--fast", action="store_true", help="live sessions in reduced precision (see inference.py --fast)")
    p.add_argument("--live_batch_size", type=int, default=4,
                   help="frames the live generator computes at once (smaller: lower latency, more CPU per frame; "
                        "the int8 generator of --fast on CPUs takes one)")
    p.add_argument("--lookahead", type=int, default=8,
                   help="live frames computed ahead of their time (at least a batch; more: fewer late frames, "
                        "more latency)")
    p.add_argument("--max_lag", type=float, default=None,
                   help="seconds a live session may fall behind its speech (an overloaded CPU) before its speech "
                        "frames go out with the avatar's own face to catch up (default: never; all lip-synced)")
    p.add_argument("--keep_results_minutes", type=float, default=60, help="how long finished job results are kept")
    p.add_argument("--tmp_dir", default=None, help="parent of the server's temporary folder (default: the system's)")
    p.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")
    p.add_argument("--s3fd_path", default=None, help="S3FD weights (default face_detection/detection/sfd/s3fd.pth)")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    for noisy in ("aioice", "aiortc"):  # their INFO lines are per ICE check
        logging.getLogger(noisy).setLevel(logging.WARNING)
    token = args.token or os.environ.get(TOKEN_ENV) or None
    if args.host not in LOCAL_HOSTS and not token:
        print("error: --host %s is reachable from other machines; pass --token or set %s" % (args.host, TOKEN_ENV),
              file=sys.stderr)
        return 1
    if args.max_upload_mb <= 0 or args.max_sessions < 0 or args.live_batch_size < 1 or args.lookahead < 1 or \
            (args.max_lag is not None and args.max_lag <= 0):
        print("error: --max_upload_mb and --max_lag must be above 0, --max_sessions at least 0, --live_batch_size "
              "and --lookahead at least 1", file=sys.stderr)
        return 1
    from face_detection import load_detector
    from models.checkpoint import CheckpointError

    limit_arenas()
    device = args.device or inference.best_device()
    try:
        model = inference.inference_model(inference.load_model(args.checkpoint_path, device))
        detector = load_detector(args.s3fd_path, device)
    except (CheckpointError, OSError, ValueError) as e:
        print("error: %s" % e, file=sys.stderr)
        return 1
    live_settings = LiveSettings(args.max_sessions, args.fast, args.live_batch_size, args.lookahead, args.max_lag)
    server = Server(model, detector, args.avatars, TempRoot(args.tmp_dir), args.max_upload_mb,
                    args.keep_results_minutes * 60, live_settings)
    log.info("serving on http://%s:%d/ (%s; uploads up to %g MB, %d live sessions at most)",
             args.host, args.port, "token required on every request" if token else "no token: local use only",
             args.max_upload_mb, args.max_sessions)
    try:
        web.run_app(server.app(token), host=args.host, port=args.port, print=None, shutdown_timeout=5,
                    access_log=None)
    finally:
        server.temp_root.remove()
    return 0


if __name__ == "__main__":
    sys.exit(main())
