"""Choosing one face when frames hold several, and following it from frame to frame.

Detectors report every face of a frame (`detect_all`: [(x1, y1, x2, y2, score), ...], best
first). `best` takes each frame's first face: the original's choice, frame by frame. Every
other choice (see options.parse_face_select) picks a face once and then follows it: in each next
frame the face overlapping the last box most (IoU at least TRACK_IOU), otherwise the one whose
centre is nearest, if within TRACK_DISTANCE of the face's size. A frame without such a face has
no face (it passes through unchanged); the last box waits for the face to come back, so the
choice never jumps to another person.
"""
import math

from options import parse_face_select

TRACK_IOU = 0.3
TRACK_DISTANCE = 0.5


class SelectionError(ValueError):
    """A face choice the input cannot satisfy; the message is one line naming the fix."""


def all_faces_of(detector, frames_bgr):
    """`detector.detect_all(frames)`; a detector that only reports its best face gives that face, score 1."""
    if hasattr(detector, "detect_all"):
        return detector.detect_all(frames_bgr)
    return [[] if box is None else [tuple(box) + (1.0,)] for box in detector.detect(frames_bgr)]


def iou(a, b):
    """Intersection over union of boxes a and b (x1, y1, x2, y2, ...); 0 when apart."""
    w = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union if union > 0 else 0.0


def _centre(box):
    return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2


def _area(box):
    return (box[2] - box[0]) * (box[3] - box[1])


def _distance(a, b):
    return math.dist(_centre(a), _centre(b))


def pick(kind, value, faces, frame_shape):
    """The face of one frame's `faces` that the choice (kind, value) names, or None."""
    if not faces:
        return None
    height, width = frame_shape[:2]
    if kind == "largest":
        return max(faces, key=_area)
    if kind == "center":
        return min(faces, key=lambda f: math.dist(_centre(f), (width / 2, height / 2)))
    if kind == "index":
        left_to_right = sorted(faces, key=lambda f: _centre(f)[0])
        return left_to_right[value] if value < len(left_to_right) else None
    if kind == "point":
        x, y = value
        inside = [f for f in faces if f[0] <= x < f[2] and f[1] <= y < f[3]]
        return min(inside, key=_area) if inside else None
    raise SelectionError("unknown face choice %r" % kind)


def check_first(spec, faces, frame_shape):
    """Raise SelectionError when `spec` (index:N, point:X,Y) names no face of the first frame's `faces`."""
    kind, value = parse_face_select(spec)
    height, width = frame_shape[:2]
    if kind == "point" and not (0 <= value[0] < width and 0 <= value[1] < height):
        raise SelectionError("--face_select %s is outside the %dx%d frame; give a pixel inside it (x below %d, "
                             "y below %d)" % (spec, width, height, width, height))
    if kind in ("index", "point") and pick(kind, value, faces, frame_shape) is None:
        boxes = ", ".join("%d,%d-%d,%d" % tuple(f[:4]) for f in sorted(faces, key=lambda f: _centre(f)[0]))
        if kind == "index":
            raise SelectionError("--face_select %s: the first frame has %d face(s); choose index:0 (leftmost) to "
                                 "index:%d" % (spec, len(faces), len(faces) - 1) if faces else
                                 "--face_select %s: the first frame has no face; use largest or center" % spec)
        raise SelectionError("--face_select %s: no face of the first frame contains that pixel (faces x1,y1-x2,y2: "
                             "%s)" % (spec, boxes or "none"))


def follow(last, faces):
    """The face of `faces` that continues the box `last`, or None."""
    if not faces:
        return None
    overlapping = max(faces, key=lambda f: iou(last, f))
    if iou(last, overlapping) >= TRACK_IOU:
        return overlapping
    nearest = min(faces, key=lambda f: _distance(last, f))
    size = max(last[2] - last[0], last[3] - last[1])
    return nearest if _distance(last, nearest) <= TRACK_DISTANCE * size else None


def select_faces(spec, faces_per_frame, frame_shape):
    """One box (x1, y1, x2, y2) or None per frame from every frame's faces, as `spec` chooses."""
    kind, value = parse_face_select(spec)
    if kind == "best":
        return [tuple(faces[0][:4]) if faces else None for faces in faces_per_frame]
    if faces_per_frame:
        check_first(spec, faces_per_frame[0], frame_shape)
    chosen, last = [], None
    for faces in faces_per_frame:
        face = pick(kind, value, faces, frame_shape) if last is None else follow(last, faces)
        last = face or last
        chosen.append(None if face is None else tuple(face[:4]))
    return chosen
