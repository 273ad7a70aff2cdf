"""Avatars: a face video (or image) prepared once for live sessions: its frames, stored for random
access, their paste boxes and a small metadata file.

    live.prepare_avatar("anna.mp4", "avatars/anna", pads=(0, 20, 0, 0))
    avatar = live.load_avatar("avatars/anna")
    avatar.frame(i), avatar.box(i), avatar.fps, avatar.size, len(avatar)

Folder layout: avatar.json (metadata, written last), frames.raw (every frame as raw BGR uint8,
one after the other) and boxes.npy ((N, 4) y1, y2, x1, x2; -1 where a frame has no face).
Frames are read one at a time with a positioned read, so memory does not grow with the
avatar's length and loading is instant. Raw frames were chosen by measuring, per 1280x720
frame (20 upscaled GRID frames, 2 busy cores, median of 3): raw read 2.4 ms and 2.76 MB on disk;
PNG level 3 22.7 ms / 0.52 MB, level 1 39.5 ms / 0.57 MB; lossless WebP 14.3 ms / 0.30 MB;
JPEG q95 5.5 ms / 0.11 MB but lossy. Only the raw read leaves time for the generator in 40 ms.
"""
import json
import os
import shutil
import tempfile
import threading

import numpy as np
from tqdm import tqdm

from options import OptionsError, SyncOptions

FORMAT = "wav2lip-avatar"
VERSION = 1
META, FRAMES, BOXES = "avatar.json", "frames.raw", "boxes.npy"


class AvatarError(ValueError):
    """A missing, corrupt or incompatible avatar, or bad input to prepare one; one line naming the fix."""


def _redo(path):
    return "re-run python prepare_avatar.py --face VIDEO --out %s" % path


class Avatar:
    """A prepared avatar on disk; frames are read as they are needed. Safe to share between threads."""

    def __init__(self, path, meta, boxes):
        self.path = path
        self.meta = meta
        self.fps = float(meta["fps"])
        self.size = (int(meta["width"]), int(meta["height"]))
        self.options = SyncOptions.from_dict(meta["options"])
        self._boxes = boxes
        self._frame_bytes = self.size[0] * self.size[1] * 3
        self._file = open(os.path.join(path, FRAMES), "rb", buffering=0)
        self._lock = threading.Lock()

    def __len__(self):
        return len(self._boxes)

    def frame(self, i):
        """Frame `i` as a new BGR uint8 array (height, width, 3)."""
        if not 0 <= i < len(self):
            raise IndexError("avatar frame %d of %d" % (i, len(self)))
        data = bytearray(self._frame_bytes)
        with self._lock:
            self._file.seek(i * self._frame_bytes)
            read = self._file.readinto(data)
        if read != self._frame_bytes:
            raise AvatarError("%s is truncated; %s" % (os.path.join(self.path, FRAMES), _redo(self.path)))
        return np.frombuffer(data, np.uint8).reshape(self.size[1], self.size[0], 3)

    def box(self, i):
        """Paste box (y1, y2, x1, x2) of frame `i`, or None when it has no face."""
        box = self._boxes[i]
        return None if box[0] < 0 else tuple(int(v) for v in box)

    def close(self):
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def load_avatar(path):
    """The Avatar prepared in folder `path`; AvatarError (one line) when it is missing or damaged."""
    path = str(path)
    if not os.path.isdir(path):
        raise AvatarError("avatar folder not found: %s; prepare it with python prepare_avatar.py --face VIDEO "
                          "--out %s" % (path, path))
    try:
        with open(os.path.join(path, META)) as f:
            meta = json.load(f)
    except (OSError, ValueError):
        raise AvatarError("%s has no readable %s (not an avatar, or preparation did not finish); %s"
                          % (path, META, _redo(path)))
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise AvatarError("%s is not a Wav2Lip avatar; %s" % (path, _redo(path)))
    if meta.get("version") != VERSION:
        raise AvatarError("avatar %s has format version %r, this code reads version %d; %s"
                          % (path, meta.get("version"), VERSION, _redo(path)))
    try:
        count, width, height = int(meta["frames"]), int(meta["width"]), int(meta["height"])
        float(meta["fps"])
        SyncOptions.from_dict(meta["options"])
    except (KeyError, TypeError, ValueError, OptionsError):
        raise AvatarError("the metadata of avatar %s is damaged; %s" % (path, _redo(path)))
    frames_path = os.path.join(path, FRAMES)
    expected = count * width * height * 3
    if not os.path.isfile(frames_path) or os.path.getsize(frames_path) != expected:
        raise AvatarError("%s is missing or not %d bytes (%d frames of %dx%d); %s"
                          % (frames_path, expected, count, width, height, _redo(path)))
    try:
        boxes = np.load(os.path.join(path, BOXES), allow_pickle=False)
    except (OSError, ValueError):
        raise AvatarError("%s is missing or damaged; %s" % (os.path.join(path, BOXES), _redo(path)))
    if not _boxes_fit(boxes, count, width, height):
        raise AvatarError("the boxes of avatar %s do not fit its %d frames of %dx%d; %s"
                          % (path, count, width, height, _redo(path)))
    return Avatar(path, meta, boxes)


def _boxes_fit(boxes, count, width, height):
    if boxes.shape != (count, 4) or boxes.dtype.kind != "i" or count < 1:
        return False
    face = boxes[:, 0] >= 0
    b = boxes[face]
    return bool(np.all(boxes[~face] == -1) and np.all((b[:, 0] < b[:, 1]) & (b[:, 1] <= height)
                                                       & (b[:, 2] >= 0) & (b[:, 2] < b[:, 3]) & (b[:, 3] <= width)))


# --------------------------------------------------------------------------- preparation
def prepare_avatar(face, out_dir, *, detector=None, s3fd_path=None, device="cpu", cache_dir=None, no_cache=False,
                   progress=True, **options):
    """Prepare the avatar of `face` (a video or an image) in `out_dir` and return its path.

    `options` are SyncOptions fields, named as inference.py's flags (pads, resize_factor, crop,
    box, rotate, nosmooth, static, fps, face_det_batch_size, on_no_face, fast). Boxes come
    through the detection cache (`cache_dir`, default the user's cache folder) unless `no_cache`;
    `detector` overrides the one load_detector(s3fd_path, device) picks. The folder is written
    beside `out_dir` under a temporary name and renamed into place when complete."""
    import inference
    from face_detection.cache import default_folder, file_sha256

    try:
        opts = SyncOptions.from_dict(options).validate()
    except (OptionsError, TypeError) as e:
        raise AvatarError(str(e))
    out_dir = os.path.abspath(str(out_dir))
    if os.path.exists(out_dir) and not os.path.isfile(os.path.join(out_dir, META)):
        raise AvatarError("%s exists and is not an avatar; choose another output folder" % out_dir)
    try:
        source = inference.FaceSource(str(face), opts)
        if opts.detect and detector is None:
            from face_detection import load_detector

            detector = load_detector(s3fd_path, device)
        parent = os.path.dirname(out_dir)
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".partial-%s-" % os.path.basename(out_dir), dir=parent)
        try:
            count, shape = _write_frames(source, os.path.join(tmp, FRAMES), progress)
            cache = None if no_cache else cache_dir or default_folder()
            boxes, _ = inference.input_boxes(source, detector, count, opts, progress, None, cache)
            boxes = boxes * count if len(boxes) == 1 else boxes
            missing = sum(b is None for b in boxes)
            if missing == count:
                raise AvatarError("no face found in any frame of %s; pass --box top bottom left right" % face)
            if missing and opts.on_no_face == "error":
                raise AvatarError("no face found in frame %d of %s (%d frames without a face); drop --on_no_face "
                                  "error to show them unchanged" % (boxes.index(None), face, missing))
            np.save(os.path.join(tmp, BOXES), np.array([b if b is not None else (-1,) * 4 for b in boxes], np.int64))
            meta = {"format": FORMAT, "version": VERSION, "fps": source.fps, "width": shape[1], "height": shape[0],
                    "frames": count, "frames_without_face": missing, "options": opts.to_dict(),
                    "detector": getattr(detector, "name", None) if opts.detect else None,
                    "source": {"path": os.path.abspath(str(face)), "sha256": file_sha256(str(face))}}
            with open(os.path.join(tmp, META), "w") as f:
                json.dump(meta, f, indent=1)
            _move_into_place(tmp, out_dir)
        finally:
            if os.path.exists(tmp):
                shutil.rmtree(tmp)
    except AvatarError:
        raise
    except (OSError, ValueError) as e:  # inference, videoio and the detectors' one-line errors
        raise AvatarError(str(e)) from None
    return out_dir


def _write_frames(source, path, progress):
    """Write every prepared frame of `source` to `path`; return (count, frame shape)."""
    count, shape = 0, None
    bar = tqdm(desc="avatar frames", unit="frame", disable=not progress)
    with open(path, "wb") as f:
        for frame in source.frames():
            if shape is None:
                shape = frame.shape
            elif frame.shape != shape:
                raise AvatarError("frame size changes inside %s; re-encode it at one size" % source.path)
            f.write(np.ascontiguousarray(frame).tobytes())
            count += 1
            bar.update(1)
    bar.close()
    if not count:
        raise AvatarError("%s has no decodable video frames" % source.path)
    return count, shape


def _move_into_place(tmp, out_dir):
    """Rename the finished folder to `out_dir`, replacing an older avatar there."""
    if not os.path.exists(out_dir):
        os.rename(tmp, out_dir)
        return
    old = tmp + "-old"
    os.rename(out_dir, old)
    os.rename(tmp, out_dir)
    shutil.rmtree(old)
