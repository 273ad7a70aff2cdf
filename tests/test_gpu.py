"""The networks and the inference core on a CUDA device (skipped where there is none)."""
import numpy as np
import pytest
import torch

import face_detection
import inference
from options import SyncOptions
from conftest import CONFORMANCE
from models import SyncNet_color, Wav2Lip, Wav2Lip_disc_qual

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(autouse=True)
def no_tf32():
    # TF32 keeps 10 mantissa bits and exceeds the conformance tolerances.
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.parametrize("name, factory", [("wav2lip", Wav2Lip), ("syncnet_color", SyncNet_color),
                                           ("wav2lip_disc_qual", Wav2Lip_disc_qual), ("s3fd", face_detection.S3FD)])
def test_networks_conform_on_cuda(check, name, factory):
    check.check_model(name, factory, device="cuda")


def test_e2e_golden_on_cuda(check):
    z = np.load(CONFORMANCE / "e2e_video_seed21.npz")
    model = Wav2Lip()
    model.load_state_dict(check.make_state_dict("wav2lip", int(z["seed"])))
    model = model.cuda().eval()
    windows = [z["mel"][:, s:s + 16] for s in z["mel_starts"]]
    frames = list(z["frames"])
    boxes = inference.face_boxes(z["detections"], frames[0].shape, tuple(z["pads"]), bool(z["nosmooth"]))
    for t, out in enumerate(inference.lipsync_frames(model, frames, windows, boxes)):
        y1, y2, x1, x2 = z["boxes"][t]
        diff = np.abs(out[y1:y2, x1:x2].astype(np.int16) - z["patch_%d" % t].astype(np.int16))
        assert diff.max() <= 3 and diff.mean() <= 0.05


def test_video_pipeline_computes_in_full_float32_on_cuda(check, tmp_path):
    """The faithful path turns PyTorch's default TF32 off while it runs (and restores it); --fast keeps it."""
    from conftest import MEDIA

    model = Wav2Lip()
    model.load_state_dict(check.make_state_dict("wav2lip", 11))
    seen = []
    model.register_forward_pre_hook(lambda module, args: seen.append(torch.backends.cudnn.allow_tf32))
    model = model.cuda().eval()
    for fast in (False, True):
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        seen.clear()
        stats = inference.lipsync_video(model, str(MEDIA / "bbaf2n.mpg"), str(MEDIA / "jfk.wav"),
                                        str(tmp_path / "out.mp4"), options=SyncOptions(box=(60, 220, 110, 250), fast=fast),
                                        progress=False)
        assert stats["frames"] > 200 and seen and set(seen) == {fast}
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32


def test_syncnet_on_cuda_scores_in_full_float32_and_leaves_tf32_alone():
    from evaluation import load_syncnet, score_arrays
    from test_evaluation_weights import LSE, rule_state_dict

    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    syncnet = load_syncnet(rule_state_dict(), device="cuda")
    assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
    seen = []
    syncnet.netcnnlip.register_forward_pre_hook(lambda module, args: seen.append(torch.backends.cudnn.allow_tf32))
    src = np.load(LSE / "synth_source.npz")
    score_arrays(src["frames_bgr"][:6], src["audio_int16"][:6 * 640], syncnet)
    assert seen == [False] and torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
