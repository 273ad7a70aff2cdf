"""Face detections cached per input video, so re-syncing the same video to new audio skips detection.

An entry is keyed by the SHA-256 of the video file's content and of the detection settings
(detector, its weights, device class and tolerances, frame preparation, batch size), and holds
every face the detector reported ([(x1, y1, x2, y2, score), ...] per frame, best first) for the
first frames of the video, in frame order and in whole detection batches, so that any prefix of
an entry is what a fresh detection of that prefix gives. Choosing among the faces happens after
the cache: another --face_select never detects again.
"""
import hashlib
import json
import os
import tempfile
import zipfile

import numpy as np

FORMAT_VERSION = 2


def default_folder():
    """The user's cache folder: $XDG_CACHE_HOME/wav2lip/detections (~/.cache when unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "wav2lip", "detections")


def file_sha256(path, chunk=1 << 22):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


class DetectionCache:
    """Detections on disk in `folder`, one small .npz per (video content, settings)."""

    def __init__(self, folder):
        self.folder = folder

    def key(self, video_path, settings):
        """Entry name for `video_path` detected with `settings` (a JSON-serialisable dict)."""
        text = json.dumps({"video": file_sha256(video_path), "settings": settings, "format": FORMAT_VERSION},
                          sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def _path(self, key):
        return os.path.join(self.folder, key + ".npz")

    def load(self, key, count):
        """(faces of the first `count` frames, frame shape), or None when not cached.

        An entry covers `count` frames if it holds that many or reached the end of the video."""
        try:
            with np.load(self._path(key)) as entry:
                counts, boxes, scores = entry["counts"], entry["boxes"], entry["scores"]
                shape, complete = tuple(int(v) for v in entry["shape"]), bool(entry["complete"])
            if counts.ndim != 1 or (counts < 0).any() or boxes.shape != (int(counts.sum()), 4) \
                    or scores.shape != (len(boxes),) or len(shape) != 3:
                raise ValueError("inconsistent entry")
        except (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile):  # absent or damaged: detect again
            return None
        if len(counts) < count and not complete:
            return None
        ends = np.cumsum(counts[:count])
        faces = [[tuple(int(v) for v in box) + (float(s),) for box, s in zip(boxes[end - n:end], scores[end - n:end])]
                 for n, end in zip(counts[:count], ends)]
        return faces, shape

    def save(self, key, detections, shape, complete):
        """Store `detections` (every face per frame; complete: they cover the whole video), atomically."""
        os.makedirs(self.folder, exist_ok=True)
        flat = [face for faces in detections for face in faces]
        boxes = np.array([face[:4] for face in flat], np.int64).reshape(-1, 4)
        scores = np.array([face[4] for face in flat], np.float64)
        counts = np.array([len(faces) for faces in detections], np.int64)
        fd, tmp = tempfile.mkstemp(prefix=".partial-", suffix=".npz", dir=self.folder)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, counts=counts, boxes=boxes, scores=scores, shape=np.array(shape, np.int64),
                         complete=complete)
            os.replace(tmp, self._path(key))
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
