"""Dubbing jobs and avatar preparations: queued, run one at a time in one worker thread (one
model, one detector), with progress per stage and an ETA; their folders go when they end."""
import logging
import queue
import threading
import time
import uuid

from server.uploads import RequestError, remove_folder

log = logging.getLogger("serve")


class Cancelled(Exception):
    """Raised inside a running job when the server shuts down or the job is deleted."""


class Job:
    def __init__(self, kind, folder, run, stages, name=None):
        self.id = uuid.uuid4().hex
        self.kind, self.folder, self.run, self.stages, self.name = kind, folder, run, list(stages), name
        self.state, self.stage, self.stage_fraction, self.error = "queued", None, 0.0, None
        self.result, self.stats = None, {}
        self.created = time.monotonic()
        self.stage_started = self.finished = None
        self.cancel = threading.Event()

    def report(self, stage, done, total):
        """inference.lipsync_video's progress callable: called from the worker thread."""
        if self.cancel.is_set():
            raise Cancelled()
        if stage != self.stage:
            self.stage, self.stage_started = stage, time.monotonic()
            if stage not in self.stages:
                self.stages.append(stage)
        self.stage_fraction = min(1.0, done / total) if total else 1.0

    def eta(self):
        """Seconds left in the current stage, from its rate so far (None before any progress)."""
        if self.state != "running" or not self.stage_fraction or self.stage_started is None:
            return None
        elapsed = time.monotonic() - self.stage_started
        return round(elapsed / self.stage_fraction * (1 - self.stage_fraction), 1)

    def progress(self):
        if self.state == "done":
            return 1.0
        if self.stage not in self.stages:
            return 0.0
        return round((self.stages.index(self.stage) + self.stage_fraction) / len(self.stages), 4)

    def to_dict(self):
        out = {"job_id": self.id, "kind": self.kind, "state": self.state, "stage": self.stage,
               "stages": self.stages, "progress": self.progress(), "eta_s": self.eta(), "error": self.error}
        if self.name:
            out["name"] = self.name
        if self.state == "done" and self.kind == "dub":
            out["result"] = "/api/jobs/%s/result" % self.id
        return out


class JobQueue:
    """At most `max_queued` waiting jobs; finished jobs' results are kept `keep_seconds`."""

    def __init__(self, max_queued=16, keep_seconds=3600, max_kept=100):
        self.max_queued, self.keep_seconds, self.max_kept = max_queued, keep_seconds, max_kept
        self.jobs = {}
        self.waiting = queue.Queue()
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.worker = threading.Thread(target=self._work, name="jobs", daemon=True)
        self.worker.start()

    def submit(self, job):
        with self.lock:
            self._expire()
            if sum(j.state == "queued" for j in self.jobs.values()) >= self.max_queued:
                raise RequestError(503, "busy: %d jobs are waiting; try again later" % self.max_queued)
            self.jobs[job.id] = job
        log.info("job %s %s queued", job.id, job.kind)
        self.waiting.put(job)
        return job

    def get(self, job_id):
        with self.lock:
            self._expire()
            job = self.jobs.get(job_id) if isinstance(job_id, str) else None
        if job is None:
            raise RequestError(404, "no job %r (finished jobs are kept %d s)" % (job_id, self.keep_seconds))
        return job

    def delete(self, job_id):
        job = self.get(job_id)
        job.cancel.set()
        with self.lock:
            self.jobs.pop(job.id, None)
        if job.state != "running":  # a running job removes its folder when it stops
            remove_folder(job.folder)

    def _expire(self):
        now = time.monotonic()
        finished = sorted((j for j in self.jobs.values() if j.finished is not None), key=lambda j: j.finished)
        for i, job in enumerate(finished):
            if now - job.finished > self.keep_seconds or len(finished) - i > self.max_kept:
                self.jobs.pop(job.id, None)
                remove_folder(job.folder)

    def _work(self):
        while not self.stopping.is_set():
            try:
                job = self.waiting.get(timeout=0.2)
            except queue.Empty:
                continue
            if not job.cancel.is_set():
                self._run(job)
            if job.state != "done" or job.result is None or job.id not in self.jobs:  # no result to keep
                remove_folder(job.folder)

    def _run(self, job):
        job.state, started = "running", time.monotonic()
        log.info("job %s %s start", job.id, job.kind)
        try:
            job.stats = job.run(job) or {}
            job.state = "done"
        except Cancelled:
            job.state, job.error = "cancelled", "cancelled (server shutting down or job deleted)"
        except Exception as e:  # the job's one-line error; the server goes on
            job.state, job.error = "failed", str(e).splitlines()[0] if str(e) else type(e).__name__
            if not isinstance(e, ValueError):
                log.exception("job %s crashed", job.id)
        job.finished = time.monotonic()
        log.info("job %s %s end: %s in %.1f s, frames %s%s", job.id, job.kind, job.state, job.finished - started,
                 job.stats.get("frames", "-"), ", error: %s" % job.error if job.error else "")

    def stop(self):
        """Cancel the running job (its partial output is removed), drop the waiting ones, remove folders."""
        self.stopping.set()
        with self.lock:
            jobs = list(self.jobs.values())
        for job in jobs:
            job.cancel.set()
        self.worker.join(timeout=60)
        for job in jobs:
            remove_folder(job.folder)
