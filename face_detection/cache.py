"""Face detections cached per input video, so re-syncing the same video to new audio skips detection.

An entry is keyed by the SHA-256 of the video file's content and of the detection settings
(detector and its weights, frame preparation, batch size), and holds the raw detector boxes
(x1, y1, x2, y2, or None) of the first frames of the video, in frame order.
"""
import hashlib
import json
import os
import tempfile

import numpy as np

FORMAT_VERSION = 1


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
        """(detections of the first `count` frames, frame shape), or None when not cached.

        An entry covers `count` frames if it holds that many or reached the end of the video."""
        try:
            with np.load(self._path(key)) as entry:
                boxes, found, shape, complete = entry["boxes"], entry["found"], entry["shape"], entry["complete"]
        except (OSError, KeyError, ValueError):  # absent, or damaged: detect again
            return None
        if len(boxes) < count and not complete:
            return None
        detections = [tuple(int(v) for v in b) if f else None for b, f in zip(boxes[:count], found[:count])]
        return detections, tuple(int(v) for v in shape)

    def save(self, key, detections, shape, complete):
        """Store `detections` (complete: they cover the whole video); written atomically."""
        os.makedirs(self.folder, exist_ok=True)
        boxes = np.array([d if d is not None else (0, 0, 0, 0) for d in detections], np.int64).reshape(-1, 4)
        found = np.array([d is not None for d in detections], bool)
        fd, tmp = tempfile.mkstemp(prefix=".partial-", suffix=".npz", dir=self.folder)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, boxes=boxes, found=found, shape=np.array(shape, np.int64), complete=complete)
            os.replace(tmp, self._path(key))
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
