"""LSE-D / LSE-C against the conformance goldens (conformance/lse), offsets, and input checks."""
import numpy as np
import pytest
import torch

from conftest import MEDIA
from evaluation import ClipTooShortError, MediaError, load_syncnet, mfcc, score_arrays, score_video
from evaluation import lse, video
from test_evaluation_weights import GOLDEN, LSE, rule_state_dict

TOL = GOLDEN["tolerance"]
CLIPS = ("grid_bbaf2n", "synth")


@pytest.fixture(scope="module")
def net():
    return load_syncnet(rule_state_dict())


@pytest.fixture(scope="module")
def sources():
    return {clip: np.load(LSE / ("%s_source.npz" % clip)) for clip in CLIPS}


@pytest.fixture(scope="module")
def embeddings(net, sources):
    """Per clip (mfcc, video embeddings, audio embeddings) of the golden input arrays."""
    out = {}
    for clip, src in sources.items():
        n = lse.window_count(len(src["frames_bgr"]), len(src["audio_int16"]))
        features = mfcc(src["audio_int16"])
        out[clip] = features, lse.embed_video(src["frames_bgr"], n, net), lse.embed_audio(features, n, net)
    return out


def assert_matches(result, golden, tol):
    assert result["offset"] == golden["offset"]
    assert abs(result["min_dist"] - golden["min_dist"]) <= tol["min_dist_abs"]
    assert abs(result["confidence"] - golden["conf"]) <= tol["conf_abs"]
    assert np.abs(np.array(result["curve"]) - golden["mdist"]).max() <= tol["mdist_abs"]


@pytest.mark.parametrize("clip", CLIPS)
def test_mfcc_and_window_embeddings_match_trace(clip, embeddings):
    trace = np.load(LSE / ("%s_trace.npz" % clip))
    features, video_emb, audio_emb = embeddings[clip]
    assert features.dtype == np.float64 and features.shape == trace["mfcc"].shape
    assert np.abs(features - trace["mfcc"]).max() <= TOL["mfcc_abs"]
    assert np.abs(video_emb.numpy() - trace["im_feat"]).max() <= TOL["embeddings_abs"]
    assert np.abs(audio_emb.numpy() - trace["cc_feat"]).max() <= TOL["embeddings_abs"]
    distances = lse.distance_curve(video_emb, audio_emb).numpy()
    assert np.abs(distances - trace["dists"]).max() <= TOL["from_arrays"]["mdist_abs"]


@pytest.mark.parametrize("clip", CLIPS)
def test_curve_offset_distance_confidence_match_golden(clip, embeddings):
    _, video_emb, audio_emb = embeddings[clip]
    assert_matches(lse.sync_scores(video_emb, audio_emb), GOLDEN["clips"][clip]["from_arrays"], TOL["from_arrays"])


def test_score_arrays_squashes_non_square_frames_and_stops_at_the_audio(net, sources):
    golden = GOLDEN["clips"]["synth"]["from_arrays"]
    result = score_arrays(sources["synth"]["frames_bgr"], sources["synth"]["audio_int16"], net)
    assert result["n_windows"] == golden["n_windows"]
    assert_matches(result, golden, TOL["from_arrays"])


def sync_expert(net, frames, samples):
    """`net` with both heads refitted so that each aligned window pair embeds to its own point.

    Under the rule weights the curve's minimum stays at offset 0 for any audio shift (the
    zero-padded shifts cost more than the weights' weak sync cue gains: measured 0, 0, 0 for
    -3, 0, +3), so the shift test needs weights that carry sync; the arithmetic under test
    (MFCC steps per frame, window indices, padding, sign) is the same for any weights.
    """
    n = lse.window_count(len(frames), len(samples))
    clip = torch.from_numpy(np.stack(frames)).permute(3, 0, 1, 2).float()
    lips = torch.stack([clip[:, v:v + 5] for v in range(n)])
    coefficients = torch.from_numpy(mfcc(samples).T).float()
    sounds = torch.stack([coefficients[None, :, 4 * v:4 * v + 20] for v in range(n)])
    targets = torch.from_numpy(np.random.default_rng(0).standard_normal((n, 1024)))
    state = dict(net.state_dict())
    with torch.no_grad():
        for head, hidden in (("netfclip", net.netfclip[:3](net.netcnnlip(lips).flatten(1))),
                             ("netfcaud", net.netfcaud[:3](net.netcnnaud(sounds).flatten(1)))):
            design = torch.cat([hidden.double(), torch.ones(n, 1, dtype=torch.float64)], 1)
            solution = torch.linalg.lstsq(design, targets, driver="gelsd").solution  # exact: n < 513
            state[head + ".3.weight"], state[head + ".3.bias"] = solution[:-1].T.float(), solution[-1].float()
    return load_syncnet(state)


def test_audio_shift_of_three_frames_moves_the_offset_by_three(net, sources):
    frames = sources["grid_bbaf2n"]["frames_bgr"][:30]  # 25 windows keep it quick
    samples = sources["grid_bbaf2n"]["audio_int16"]
    expert = sync_expert(net, frames, samples)
    shift = 3 * lse.SAMPLES_PER_FRAME
    base = score_arrays(frames, samples, expert)["offset"]
    delayed = score_arrays(frames, np.concatenate([np.zeros(shift, np.int16), samples]), expert)
    advanced = score_arrays(frames, samples[shift:], expert)
    assert base == 0
    assert delayed["offset"] == base - 3  # audio behind the video
    assert advanced["offset"] == base + 3  # audio ahead of the video: positive, as the spec defines
    assert delayed["confidence"] > 5 and advanced["confidence"] > 5  # a clear dip, not a padding artefact


def test_clips_shorter_than_one_window_are_rejected(net, sources):
    frames = sources["grid_bbaf2n"]["frames_bgr"]
    samples = sources["grid_bbaf2n"]["audio_int16"]
    with pytest.raises(ClipTooShortError, match="5 frames.*at least 6 frames and 3840 samples"):
        score_arrays(frames[:5], samples, net)
    with pytest.raises(ClipTooShortError, match="3839 audio samples"):
        score_arrays(frames[:6], samples[:3839], net)
    assert score_arrays(frames[:6], samples[:3840], net)["n_windows"] == 1
    with pytest.raises(ValueError, match="int16"):  # audio scaled to [-1, 1) would be mis-scored
        score_arrays(frames, samples / 32768.0, net)


def test_other_frame_rates_are_rejected_or_resampled(net):
    clip = str(MEDIA / "video_01.mp4")  # 29.97 fps, 3 s
    with pytest.raises(MediaError, match="29.97 fps but LSE assumes 25 fps"):
        score_video(clip, net)
    assert 75 <= len(video.read_frames(clip, fps=25)) <= 78  # 3.0 s video, 3.04 s container


@pytest.fixture
def tf32_on():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_tf32_is_off_while_scoring_and_restored_after(net, sources, tf32_on):
    """As in inference: full float32 inside the SyncNet passes, the process's setting untouched
    (on a GPU, test_gpu.py checks that loading leaves it alone too)."""
    seen = []
    hooks = [branch.register_forward_pre_hook(lambda module, args: seen.append(
        (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)))
        for branch in (net.netcnnlip, net.netcnnaud)]
    src = sources["synth"]
    try:
        score_arrays(src["frames_bgr"][:6], src["audio_int16"][:6 * 640], net)  # one window
    finally:
        for hook in hooks:
            hook.remove()
    assert len(seen) == 2 and set(seen) == {(False, False)}
    assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
