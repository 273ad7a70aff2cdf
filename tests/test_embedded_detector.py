"""The embedded default face detector (dlib HOG) on the real GRID clips and portraits."""
import subprocess
import sys

import av
import cv2
import numpy as np
import pytest

from conftest import MEDIA, REPO
from face_detection.embedded import EmbeddedDetector

# Per clip: the mouth centre (x, y) and the chin's y, medians over all frames of dlib's
# 68-landmark fits (frame to frame they move by at most 11 px in y, 6 px in x).
GRID_FACES = {
    "bbaf2n": ((158, 215), 248),
    "lwbsza": ((167, 216), 247),
    "swiz3n": ((170, 204), 245),
    "pwij3p": ((181, 209), 251),
}
WAV2LIP_BOTTOM_PAD = 10


def read_frames(path):
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="bgr24") for frame in container.decode(video=0)]


def iou(a, b):
    width = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.fixture(scope="module")
def detector():
    return EmbeddedDetector(device="cpu")


@pytest.fixture(scope="module")
def grid_frames():
    return {clip: read_frames(MEDIA / ("%s.mpg" % clip)) for clip in GRID_FACES}


def test_import_does_not_load_dlib():
    code = "import sys, face_detection.embedded; sys.exit('dlib' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0


def test_name_is_short(detector):
    assert isinstance(detector.name, str) and 0 < len(detector.name) <= 20


@pytest.mark.parametrize("clip", sorted(GRID_FACES))
def test_grid_every_frame_has_a_face_box_from_forehead_to_chin(detector, grid_frames, clip):
    frames = grid_frames[clip]
    boxes = detector.detect(frames)
    (mouth_x, mouth_y), chin_y = GRID_FACES[clip]
    height, width = frames[0].shape[:2]
    assert len(boxes) == len(frames)
    assert all(box is not None for box in boxes)
    for x1, y1, x2, y2 in boxes:
        assert all(type(value) is int for value in (x1, y1, x2, y2))
        assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
        # A whole-face box: the mouth sits centred horizontally, in the box's lower half,
        # and Wav2Lip's default bottom padding reaches the chin.
        assert abs((x1 + x2) / 2 - mouth_x) < 0.15 * (x2 - x1)
        assert (y1 + y2) / 2 < mouth_y < y2
        assert y2 + WAV2LIP_BOTTOM_PAD >= chin_y
        assert 0.3 * height < y2 - y1 < 0.8 * height


@pytest.mark.parametrize("clip", sorted(GRID_FACES))
def test_grid_boxes_are_steady_on_a_static_head(detector, grid_frames, clip):
    boxes = detector.detect(grid_frames[clip])
    overlaps = [iou(a, b) for a, b in zip(boxes, boxes[1:])]
    assert np.mean(overlaps) > 0.9
    assert min(overlaps) > 0.6  # HOG's scale pyramid can switch level between frames


def test_large_frame_is_detected_at_working_resolution_and_mapped_back(detector, grid_frames):
    frame = grid_frames["bbaf2n"][10]
    enlarged = cv2.resize(frame, (frame.shape[1] * 2, frame.shape[0] * 2), interpolation=cv2.INTER_CUBIC)
    box, large_box = detector.detect([frame, enlarged])
    assert iou([2 * value for value in box], large_box) > 0.75


def test_small_face_is_found_by_the_upsampled_retry(detector, grid_frames):
    frame = grid_frames["pwij3p"][10]
    scale = 0.35  # the face becomes ~45 px, below what HOG finds without upsampling
    small = cv2.resize(frame, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    (mouth_x, mouth_y), _ = GRID_FACES["pwij3p"]
    x1, y1, x2, y2 = detector.detect([small])[0]
    assert x1 < mouth_x * scale < x2 and y1 < mouth_y * scale < y2


@pytest.mark.parametrize("name", ["obama.jpg", "obama-240p.jpg", "astronaut.png", "two_people.jpg"])
def test_portraits_have_a_face(detector, name):
    image = cv2.imread(str(MEDIA / name))
    box = detector.detect([image])[0]
    assert box is not None
    x1, y1, x2, y2 = box
    assert 0 <= x1 < x2 <= image.shape[1] and 0 <= y1 < y2 <= image.shape[0]


def test_no_face_gives_none(detector, grid_frames):
    blank = np.zeros((288, 360, 3), np.uint8)
    background = np.ascontiguousarray(grid_frames["bbaf2n"][0][:, 260:])  # right of the head
    assert detector.detect([blank, background]) == [None, None]


def test_empty_batch(detector):
    assert detector.detect([]) == []
