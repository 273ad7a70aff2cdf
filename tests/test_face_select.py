"""Every face from the detectors, --face_select on two real people (a still and a video with a
moving crop), the detection cache keeping every face (damaged entries, prefixes, key)."""
import re

import numpy as np
import pytest
import torch

import inference
import naive_reference
import videoio
from conftest import MEDIA
from face_detection import fast, s3fd
from face_detection.cache import DetectionCache
from face_detection.embedded import EmbeddedDetector
from face_detection.select import select_faces
from options import SyncOptions

TWO = MEDIA / "two_people.jpg"              # 1126x661, two portraits side by side
GRID = MEDIA / "bbaf2n.mpg"
CROP_W, CROP_H, PAD, PAD_Y = 800, 480, 200, 120
HIDDEN = range(14, 18)                      # frames where the right person is covered


class Counting:
    """The embedded detector, counting the frames it is asked to detect."""

    def __init__(self):
        self.detector, self.frames = EmbeddedDetector(), 0
        self.name, self.cache_key = self.detector.name, self.detector.cache_key

    def detect_all(self, frames):
        self.frames += len(frames)
        return self.detector.detect_all(frames)


@pytest.fixture(scope="module")
def s3fd_path(tmp_path_factory, check):
    path = tmp_path_factory.mktemp("s3fd") / "s3fd.pth"
    torch.save(check.make_state_dict("s3fd", 11), path)
    return str(path)


@pytest.fixture(scope="module")
def people():
    """The two faces of two_people.jpg (x1, y1, x2, y2, score), left one first."""
    faces = EmbeddedDetector().detect_all([videoio.read_image(str(TWO))])[0]
    assert len(faces) == 2
    return sorted(faces, key=lambda f: f[0])


def crop_offset(t):
    """Top-left corner of frame t's crop in the padded picture: it moves right and up."""
    return PAD + 166 + 3 * t, 60 - 2 * t


@pytest.fixture(scope="module")
def moving_video(tmp_path_factory, people):
    """24 frames of a crop sliding over two_people.jpg; the right person hidden in HIDDEN."""
    import cv2

    picture = cv2.copyMakeBorder(videoio.read_image(str(TWO)), PAD_Y, PAD_Y, PAD, PAD, cv2.BORDER_CONSTANT, value=0)
    path = tmp_path_factory.mktemp("two") / "two_moving.mp4"
    with videoio.VideoWriter(str(path), 25, CROP_W, CROP_H, preset="ultrafast") as writer:
        for t in range(24):
            frame = picture.copy()
            if t in HIDDEN:
                x1, y1, x2, y2 = people[1][:4]
                frame[y1 + PAD_Y - 20:y2 + PAD_Y + 20, x1 + PAD - 20:x2 + PAD + 20] = 128
            x, y = crop_offset(t)
            writer.write(np.ascontiguousarray(frame[y:y + CROP_H, x:x + CROP_W]))
    return path


def person_of(box, t, people):
    """Which person (0 left, 1 right, None) the frame-t box (y1, y2, x1, x2) lies on."""
    x, y = crop_offset(t)
    cx, cy = (box[2] + box[3]) / 2 + x - PAD, (box[0] + box[1]) / 2 + y - PAD_Y
    inside = [i for i, f in enumerate(people) if f[0] <= cx <= f[2] and f[1] <= cy <= f[3]]
    return inside[0] if len(inside) == 1 else None


# --------------------------------------------------------------------------- detectors
def test_embedded_detector_reports_both_people_best_first(people):
    detector = EmbeddedDetector()
    picture = videoio.read_image(str(TWO))
    faces = detector.detect_all([picture])[0]
    assert faces[0][4] >= faces[1][4] and faces[0][:4] == detector.detect([picture])[0]
    assert people[0][2] < people[1][0]                          # side by side, apart


def test_s3fd_reports_every_face_nms_keeps_as_the_original(s3fd_path):
    """Against the original-style loop (batch candidate list, NMS, 0.5): the same faces in the same
    order; ties (hundreds at 1.0 with deterministic weights) fall as there."""
    detector = s3fd.S3FDDetector(s3fd_path)
    frames = [f[::4, ::4].copy() for _, f in zip(range(3), videoio.read_frames(str(GRID)))]
    faces = detector.detect_all(frames)
    assert [f[0][:4] for f in faces] == detector.detect(frames)
    candidates = naive_reference.batch_detect(detector.net, np.array(frames)[..., ::-1].copy())
    for b, got in enumerate(faces):
        dets = candidates[:, b, :]
        kept = [d for d in dets[s3fd.nms(dets)] if d[-1] > 0.5]
        assert len(got) == len(kept) > 1
        assert [g[:4] for g in got] == [s3fd.clip_to_frame(tuple(int(v) for v in np.clip(d, 0, None)[:4]), 90, 72)
                                        for d in kept]
        np.testing.assert_allclose([g[4] for g in got], [d[4] for d in kept], rtol=1e-5)


def test_fast_detector_reports_all_faces_and_its_best_is_unchanged():
    frames = [f for _, f in zip(range(20), videoio.read_frames(str(GRID)))]
    detector = fast.FastDetector(EmbeddedDetector(), short_side=None, every=8)
    faces = detector.detect_all(frames)
    assert [f[0][:4] for f in faces] == detector.detect(frames)


# --------------------------------------------------------------------------- selection
@pytest.mark.parametrize("choice, person", [("largest", 1), ("center", 0), ("index:0", 0), ("index:1", 1),
                                            ("point:320,150", 0)])
def test_face_select_picks_the_face_on_a_still(choice, person, people):
    picture = videoio.read_image(str(TWO))
    box = select_faces(choice, EmbeddedDetector().detect_all([picture]), picture.shape)[0]
    assert box == people[person][:4]


def moving_boxes(video, detector, cache, choice):
    source = inference.FaceSource(str(video))
    boxes, _ = inference.input_boxes(source, detector, 24, SyncOptions(face_select=choice), False, cache_dir=cache)
    return boxes


def test_face_select_follows_the_chosen_person_in_a_moving_video(moving_video, people, tmp_path):
    """Each choice names its person in the first frame and stays on them in every frame; while the
    right person is hidden, a choice of them has no face there (frames pass through) instead of
    jumping to the left one, as the per-frame best does. Changing the choice never detects again."""
    detector, cache = Counting(), str(tmp_path / "cache")
    # point: a pixel of the left face in the first frame
    x, y = crop_offset(0)
    point = "point:%d,%d" % ((people[0][0] + people[0][2]) // 2 + PAD - x,
                             (people[0][1] + people[0][3]) // 2 + PAD_Y - y)
    # In frame 0 the left face is nearer the centre; by the last frame the right one is.
    for choice, person in [("largest", 1), ("center", 0), ("index:0", 0), ("index:1", 1), (point, 0)]:
        boxes = moving_boxes(moving_video, detector, cache, choice)
        for t, box in enumerate(boxes):
            expected = None if person == 1 and t in HIDDEN else person
            assert (box and person_of(box, t, people)) == expected, (choice, t, box)
    assert detector.frames == 24                                # one detection of the whole video
    # best is today's: each frame's top face, padded and smoothed; here it flips between the two.
    faces, shape = inference.find_faces(inference.FaceSource(str(moving_video)), EmbeddedDetector(), 24, 16,
                                        False, inference.StageClock())
    tops = [f[0][:4] if f else None for f in faces]
    assert {person_of((y1, y2, x1, x2), t, people) for t, (x1, y1, x2, y2) in enumerate(tops)} == {0, 1}
    assert moving_boxes(moving_video, detector, cache, "best") == inference.face_boxes_with_gaps(tops, shape)


@pytest.mark.parametrize("choice, message", [("index:7", "the first frame has 2 face(s); choose index:0 (leftmost) to index:1"),
                                             ("point:5000,10", "outside the 1126x661 frame"),
                                             ("point:5,5", "no face of the first frame contains that pixel")])
def test_impossible_choice_fails_in_one_line_before_generation(choice, message, tmp_path, monkeypatch):
    monkeypatch.setattr(inference, "_render", lambda *a: pytest.fail("generation started"))
    with pytest.raises(inference.InferenceError, match=re.escape(message)) as error:
        inference.lipsync_video(None, str(TWO), str(MEDIA / "jfk.wav"), str(tmp_path / "out.mp4"), EmbeddedDetector(),
                                SyncOptions(face_select=choice), progress=False)
    assert "\n" not in str(error.value) and not (tmp_path / "out.mp4").exists()


def test_small_faces_of_an_event_video_run(tmp_path, check):
    """video_01.mp4: several small faces; the largest is followed, blended with feather."""
    from models import Wav2Lip
    from test_blend import short_speech

    model = Wav2Lip()
    model.load_state_dict(check.make_state_dict("wav2lip", 11))
    stats = inference.lipsync_video(model.eval(), str(MEDIA / "video_01.mp4"), str(short_speech(tmp_path / "s.wav")),
                                    str(tmp_path / "out.mp4"), EmbeddedDetector(),
                                    SyncOptions(face_select="largest", blend="feather"), progress=False)
    assert stats["frames"] >= 10 and stats["input_frames_without_face"] < stats["frames"]
    assert (tmp_path / "out.mp4").stat().st_size > 0


# --------------------------------------------------------------------------- detection cache
def grid_source(tmp_path, resize_factor=4):
    video = tmp_path / "face.mp4"
    if not video.exists():
        video.write_bytes(GRID.read_bytes())
    return inference.FaceSource(str(video), SyncOptions(resize_factor=resize_factor))


def test_damaged_cache_entry_is_detected_again(tmp_path):
    cache = DetectionCache(str(tmp_path / "cache"))
    detector, clock = Counting(), inference.StageClock()
    first = inference.find_faces(grid_source(tmp_path), detector, 8, 8, False, clock, cache)
    (entry,) = (tmp_path / "cache").iterdir()
    data = entry.read_bytes()
    for damaged in (data[:len(data) // 2], data[:100] + bytes(len(data) - 100), b""):
        entry.write_bytes(damaged)
        before = detector.frames
        assert inference.find_faces(grid_source(tmp_path), detector, 8, 8, False, clock, cache) == first
        assert detector.frames == before + 8                    # detected again, and stored again:
        assert inference.find_faces(grid_source(tmp_path), detector, 8, 8, False, clock, cache) == first
        assert detector.frames == before + 8


def test_cached_prefix_equals_a_fresh_run_off_the_batch_boundary(tmp_path, s3fd_path):
    """S3FD's ties depend on the whole batch: a 5-frame run from an entry made for 7 frames (batches
    of 4) gives what a fresh 5-frame run gives."""
    detector, clock = s3fd.S3FDDetector(s3fd_path), inference.StageClock()
    cache = DetectionCache(str(tmp_path / "cache"))
    inference.find_faces(grid_source(tmp_path), detector, 7, 4, False, clock, cache)
    cached = inference.find_faces(grid_source(tmp_path), detector, 5, 4, False, clock, cache)
    fresh = inference.find_faces(grid_source(tmp_path), detector, 5, 4, False, clock)
    assert len(cached[0]) == 5 and cached == fresh


def test_cache_key_names_the_device_and_the_fast_tolerances(s3fd_path, monkeypatch):
    on_cpu = s3fd.S3FDDetector(s3fd_path, "cpu")
    assert on_cpu.cache_key != s3fd.S3FDDetector(s3fd_path, "cuda").cache_key
    key = fast.FastDetector(on_cpu).cache_key
    monkeypatch.setattr(fast, "MOVE_TOLERANCE", 0.2)
    assert fast.FastDetector(on_cpu).cache_key != key
