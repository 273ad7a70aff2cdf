"""Fast face detection for `inference.py --fast`: keyframes only, on small copies of the frames.

Trade-offs against running the detector on every full-size frame:
- for S3FD, frames are downscaled so that their short side is FAST_SHORT_SIDE pixels and the
  boxes scaled back (a face must stay about 20 px tall in the small copy; other detectors pick
  their own working size);
- only every FAST_EVERY-th frame (and the last of each batch of FAST_BATCH frames) is a
  keyframe; the boxes of the frames between two keyframes are interpolated linearly, unless the
  face moved (an edge moved by more than MOVE_TOLERANCE of the face size, or a keyframe has no
  face), in which case those frames are detected too. Measured with the embedded detector on
  the four GRID clips (tests/test_speed_paths.py), the padded, smoothed boxes stay within 8 px
  (5% of the face height) of per-frame detection, 0 to 0.5 px on average.
With every face reported (detect_all, for choosing among several people), the frames between
two keyframes are detected when any of up to FAST_MAX_FACES faces moved, appeared or vanished.
"""
import cv2
import numpy as np

from .select import all_faces_of, iou

FAST_SHORT_SIDE = 180
FAST_EVERY = 8
FAST_BATCH = 64  # frames per call: 9 keyframes where batches of 16 would need 12
MOVE_TOLERANCE = 0.1
# With more faces than this in a keyframe only the best one decides whether the frames between
# are detected (a crowd, or untrained weights, would make every frame a keyframe).
FAST_MAX_FACES = 8


def downscale(frame, short_side=FAST_SHORT_SIDE):
    """`frame` with its short side at most `short_side` pixels (None: as it is), and the scale applied."""
    height, width = frame.shape[:2]
    scale = 1.0 if short_side is None else min(1.0, short_side / min(height, width))
    if scale == 1.0:
        return frame, 1.0
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(frame, size, interpolation=cv2.INTER_AREA), scale


def moved(a, b, tolerance=MOVE_TOLERANCE):
    """Whether the face boxes a and b (x1, y1, x2, y2) differ by more than `tolerance` of a's size."""
    size = max(a[2] - a[0], a[3] - a[1], 1)
    return max(abs(p - q) for p, q in zip(a[:4], b[:4])) > tolerance * size


def keyframe_indices(count, every):
    return sorted(set(range(0, count, every)) | {count - 1})


class FastDetector:
    """Wraps a detector (`.detect(frames) -> boxes or None`): same interface, far fewer pixels."""

    def __init__(self, detector, short_side=FAST_SHORT_SIDE, every=FAST_EVERY):
        self.detector, self.short_side, self.every = detector, short_side, every
        self.name = "%s (fast: short side %s px, every %d frames)" % (detector.name, short_side, every)
        base_key = getattr(detector, "cache_key", None)
        # Everything that shapes the boxes, for the detection cache.
        self.cache_key = None if base_key is None else "%s|fast:%s:%d:%g:%d" % (
            base_key, short_side, every, MOVE_TOLERANCE, FAST_MAX_FACES)

    def _detect(self, frames_bgr, all_faces=False):
        if not frames_bgr:
            return []
        pairs = [downscale(f, self.short_side) for f in frames_bgr]
        small = [p[0] for p in pairs]
        if all_faces:
            return [[tuple(int(v / scale) for v in face[:4]) + face[4:] for face in faces]
                    for faces, (_, scale) in zip(all_faces_of(self.detector, small), pairs)]
        boxes = self.detector.detect(small)
        return [None if b is None else tuple(int(v / scale) for v in b) for b, (_, scale) in zip(boxes, pairs)]

    def detect(self, frames_bgr):
        return self._keyframed(frames_bgr, self._detect, box_moved, _between)

    def detect_all(self, frames_bgr):
        """Every face per frame, [(x1, y1, x2, y2, score), ...] best first (see faces_moved and
        between_faces for the frames between keyframes)."""
        return self._keyframed(frames_bgr, lambda frames: self._detect(frames, all_faces=True), faces_moved,
                               between_faces)

    def _keyframed(self, frames_bgr, detect, changed, between):
        if len(frames_bgr) == 0:
            return []
        keys = keyframe_indices(len(frames_bgr), self.every)
        found = [None] * len(frames_bgr)
        for i, faces in zip(keys, detect([frames_bgr[i] for i in keys])):
            found[i] = faces
        redetect = []
        for a, b in zip(keys, keys[1:]):
            if changed(found[a], found[b]):
                redetect.extend(range(a + 1, b))
                continue
            for i in range(a + 1, b):
                found[i] = between(found[a], found[b], (i - a) / (b - a))
        for i, faces in zip(redetect, detect([frames_bgr[i] for i in redetect])):
            found[i] = faces
        return found


def box_moved(a, b):
    """Whether the frames between keyframes with best boxes a and b must be detected. Without a
    face at either end, one may still appear or leave in between: look."""
    return a is None or b is None or moved(a, b)


def _between(a, b, t):
    """Box a moved the fraction t of the way to box b, in whole pixels."""
    return tuple(int(round(p + (q - p) * t)) for p, q in zip(a[:4], b[:4]))


def between_faces(a, b, t):
    """The faces of keyframe a moved the fraction t of the way to their partners in keyframe b:
    the best face to the best (as `detect` does), every other one to the face of b that overlaps
    it most, if that one did not move (see moved); faces without a partner are left out."""
    faces, rest = [_between(a[0], b[0], t) + a[0][4:]], list(b[1:])
    for face in a[1:]:
        partner = max(rest, key=lambda other: iou(face, other), default=None)
        if partner is not None and not moved(face, partner):
            faces.append(_between(face, partner, t) + face[4:])
            rest.remove(partner)
    return faces


def faces_moved(a, b):
    """Whether the frames between keyframes with faces a and b must be detected: as box_moved for
    the best faces, or (with at most FAST_MAX_FACES faces) when any face moved, appeared or vanished."""
    if box_moved(a[0] if a else None, b[0] if b else None):
        return True
    if max(len(a), len(b)) > FAST_MAX_FACES:
        return False
    return len(a) != len(b) or len(between_faces(a, b, 0.0)) != len(a)
