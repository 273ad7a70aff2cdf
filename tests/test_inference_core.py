"""The numeric core of inference against the conformance goldens: mel, mel windows, S3FD
post-processing, face boxes, and whole-pipeline output frames under deterministic weights."""
import numpy as np
import pytest
import torch

import audio
import face_detection
import inference
from conftest import CONFORMANCE
from face_detection import s3fd

E2E_FILES = sorted(CONFORMANCE.glob("e2e_*.npz"))


def test_melspectrogram_matches_golden(check):
    check.check_melspectrogram(lambda path: audio.melspectrogram(audio.load_wav(path, 16000)))
    check.check_mel_from_samples(audio.melspectrogram)


def test_mel_chunk_starts_match_golden(check):
    check.check_mel_chunks(inference.mel_chunk_starts)


def test_mel_chunks_are_windows_of_the_mel():
    mel = np.arange(80 * 40, dtype=np.float64).reshape(80, 40)
    chunks = inference.mel_chunks(mel, 25.0)
    assert [c.shape for c in chunks] == [(80, 16)] * len(chunks)
    np.testing.assert_array_equal(chunks[1], mel[:, 3:19])
    np.testing.assert_array_equal(chunks[-1], mel[:, -16:])


def test_s3fd_network_and_postprocess_conform(check):
    check.check_model("s3fd", face_detection.S3FD)
    check.check_s3fd_postprocess(s3fd.postprocess)


def test_s3fd_best_box_is_the_originals_choice():
    z = np.load(CONFORMANCE / "s3fd_post_A.npz")
    maps = [torch.from_numpy(z[k]) for k in ("cls1", "reg1", "cls2", "reg2", "cls3", "reg3",
                                             "cls4", "reg4", "cls5", "reg5", "cls6", "reg6")]
    got = s3fd.best_boxes(maps)
    for b, box in enumerate(got):
        assert box == tuple(int(v) for v in z["api_box_b%d" % b])
    # A map set without any face above 0.5 gives None.
    quiet = [m.clone() for m in maps]
    for level in range(6):
        quiet[2 * level][:, 1] = -10.0
    assert s3fd.best_boxes(quiet) == [None, None]


@pytest.mark.parametrize("path", E2E_FILES, ids=lambda p: p.stem)
def test_face_boxes_match_e2e_golden(path):
    z = np.load(path)
    got = inference.face_boxes(z["detections"], z["frames"].shape[1:], tuple(z["pads"]), bool(z["nosmooth"]))
    np.testing.assert_array_equal(got[z["source_index"]], z["boxes"])


def test_face_boxes_smoothing_edge_cases():
    """Videos under 5 frames, worked out by hand from the spec: the window is the slice from
    N - 5 in Python's negative-index sense, of the array as it stands."""
    det = np.array([[10, 20, 30, 40], [12, 22, 32, 42], [14, 24, 34, 44]])
    # N = 3: every box is the truncated mean of the last two rows: (22 + 24) / 2 = 23, then again 23.
    np.testing.assert_array_equal(inference.face_boxes(det, (100, 100), pads=(0, 0, 0, 0)), [[23, 43, 13, 33]] * 3)
    # N = 4: every box becomes the last row.
    det = np.array([[10 + 2 * k, 20 + 2 * k, 30 + 2 * k, 40 + 2 * k] for k in range(4)])
    np.testing.assert_array_equal(inference.face_boxes(det, (100, 100), pads=(0, 0, 0, 0)), [[26, 46, 16, 36]] * 4)
    # N = 1 and 2: the whole array (for 2, the second mean already sees the smoothed first box).
    np.testing.assert_array_equal(inference.face_boxes(det[:1], (100, 100), pads=(0, 0, 0, 0)), [[20, 40, 10, 30]])
    np.testing.assert_array_equal(inference.face_boxes(det[:2], (100, 100), pads=(0, 0, 0, 0)),
                                  [[21, 41, 11, 31], [21, 41, 11, 31]])


def test_face_boxes_with_gaps_keeps_none_and_smooths_runs():
    """A face in frame 0, none in frame 1, then a run of 6: boxes worked out by hand (pads 0 10 0 0)."""
    run = [(10 + k, 20 + 2 * k, 30 + k, 40 + 2 * k) for k in range(6)]  # padded: y 20+2k..50+2k, x 10+k..30+k
    got = inference.face_boxes_with_gaps([(10, 20, 30, 40), None] + run, (100, 100), pads=(0, 10, 0, 0))
    assert got[:2] == [(20, 50, 10, 30), None]  # a run of one keeps its box
    # Boxes 0 and 1 average rows 0-4 and 1-5; from box 2 on the window is the last five rows as
    # they stand, already holding smoothed boxes (means truncated: 26.8, 27.2, 27.4, 27.2 ...).
    assert got[2:] == [(24, 54, 12, 32), (26, 56, 13, 33), (26, 56, 13, 33), (27, 57, 13, 33), (27, 57, 13, 33),
                       (27, 57, 13, 33)]


@pytest.fixture(scope="module")
def e2e_models(check):
    models = {}
    for path in E2E_FILES:
        seed = int(np.load(path)["seed"])
        if seed not in models:
            from models import Wav2Lip

            model = Wav2Lip()
            model.load_state_dict(check.make_state_dict("wav2lip", seed))
            models[seed] = model.eval()
    return models


@pytest.mark.parametrize("path", E2E_FILES, ids=lambda p: p.stem)
def test_lipsync_frames_reproduce_e2e_golden(path, e2e_models):
    z = np.load(path)
    mel = audio.melspectrogram(z["wav16k"].astype(np.float32) / 32768.0)
    np.testing.assert_allclose(mel, z["mel"], atol=2e-3)
    windows = inference.mel_chunks(mel, float(z["fps"]))
    np.testing.assert_array_equal(inference.mel_chunk_starts(mel.shape[1], float(z["fps"])), z["mel_starts"])
    frames = list(z["frames"])
    boxes = inference.face_boxes(z["detections"], frames[0].shape, tuple(z["pads"]), bool(z["nosmooth"]))
    outputs = list(inference.lipsync_frames(e2e_models[int(z["seed"])], frames, windows, boxes, batch_size=8))
    assert len(outputs) == len(z["source_index"])
    for t, out in enumerate(outputs):
        source = frames[z["source_index"][t]]
        y1, y2, x1, x2 = z["boxes"][t]
        patch = out[y1:y2, x1:x2].astype(np.int16)
        diff = np.abs(patch - z["patch_%d" % t].astype(np.int16))
        assert diff.max() <= 3 and diff.mean() <= 0.05, (t, diff.max(), diff.mean())
        outside = out.copy()
        outside[y1:y2, x1:x2] = source[y1:y2, x1:x2]
        np.testing.assert_array_equal(outside, source)
    # The inputs are never modified in place.
    np.testing.assert_array_equal(np.stack(frames), z["frames"])


def test_s3fd_detector_keeps_runaway_boxes_representable(tmp_path, check):
    """Untrained weights decode boxes far outside the frame; they are bounded by the frame."""
    torch.save(check.make_state_dict("s3fd", 11), tmp_path / "s3fd.pth")
    detector = face_detection.S3FDDetector(str(tmp_path / "s3fd.pth"))
    frame = np.full((64, 96, 3), 128, np.uint8)
    for box in detector.detect([frame, frame]):
        assert box is None or (0 <= box[0] <= 96 and 0 <= box[2] <= 96 and 0 <= box[1] <= 64 and 0 <= box[3] <= 64)
    maps = [m.clone() for m in detector.maps([frame])]
    maps[1][:, 2:] = 1e4  # sizes exp(0.2 * 1e4): infinite in float32
    maps[0][:, 1] = 50.0
    assert all(0 <= v <= 2 ** 31 - 1 for v in s3fd.best_boxes(maps)[0])
