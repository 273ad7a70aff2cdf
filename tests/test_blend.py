"""--blend feather / seamless and --color_match on real GRID faces under deterministic weights:
pixels outside the face box and above the mask stay the input's, the mouth is the generator's;
the blend options reach the streaming pipeline; bad options fail in one line before any work."""
import numpy as np
import pytest

import inference
import lipsync
import videoio
from conftest import MEDIA
from options import OptionsError, SyncOptions

GRID = MEDIA / "bbaf2n.mpg"
SPEECH = MEDIA / "swiz3n.mpg"
BOX = (60, 220, 110, 250)                   # y1 y2 x1 x2 around the bbaf2n speaker's face
FRAMES = 6


@pytest.fixture(scope="module")
def generator(check):
    from models import Wav2Lip

    model = Wav2Lip()
    model.load_state_dict(check.make_state_dict("wav2lip", 11))
    return inference.inference_model(model.eval())


@pytest.fixture(scope="module")
def inputs():
    frames = [f for _, f in zip(range(FRAMES), videoio.read_frames(str(GRID)))]
    mel = inference.audio.melspectrogram(inference.load_speech(str(SPEECH)))
    return frames, inference.mel_chunks(mel, 25.0)[:FRAMES]


def synced(generator, inputs, options):
    frames, windows = inputs
    return list(inference.lipsync_frames(generator, frames, windows, [BOX], batch_size=FRAMES, options=options))


@pytest.fixture(scope="module")
def rect(generator, inputs):
    return synced(generator, inputs, None)


def test_rect_option_is_the_originals_paste(generator, inputs, rect):
    assert all(np.array_equal(a, b) for a, b in zip(synced(generator, inputs, SyncOptions()), rect))


@pytest.mark.parametrize("options", [SyncOptions(blend="feather"), SyncOptions(blend="seamless"),
                                     SyncOptions(blend="feather", mask_shape="box", mask_edge=0.2),
                                     SyncOptions(blend="seamless", color_match=True)],
                         ids=["feather", "seamless", "feather-box", "seamless-color"])
def test_blend_keeps_outside_and_upper_face_and_takes_the_mouth(generator, inputs, rect, options):
    frames, _ = inputs
    y1, y2, x1, x2 = BOX
    mask = lipsync.lower_face_mask(y2 - y1, x2 - x1, options.mask_shape, options.mask_edge)
    assert not mask[:(y2 - y1) // 2].any()
    for source, hard, out in zip(frames, rect, synced(generator, inputs, options)):
        outside = np.ones(source.shape[:2], bool)
        outside[y1:y2, x1:x2] = False
        np.testing.assert_array_equal(out[outside], hard[outside])
        face, original, generated = out[y1:y2, x1:x2], source[y1:y2, x1:x2], hard[y1:y2, x1:x2]
        np.testing.assert_array_equal(face[mask == 0], original[mask == 0])    # upper face and beyond the edge
        mouth = mask > 0.5
        assert np.abs(generated[mouth].astype(int) - original[mouth]).mean() > 5   # the model changed it
        if options.blend == "feather" and not options.color_match:
            weight = mask[..., None]
            np.testing.assert_array_equal(face, np.rint(original * (1.0 - weight) + generated * weight))
            assert mask.max() == pytest.approx(1.0, abs=0.01)
        else:  # gradient-domain or colour-matched: not the input, not the raw patch either
            assert np.abs(face[mouth].astype(int) - original[mouth]).mean() > 1
            assert np.abs(face[mouth].astype(int) - generated[mouth]).mean() > 1


def lab_mean(pixels):
    import cv2

    return cv2.cvtColor(pixels.reshape(-1, 1, 3), cv2.COLOR_BGR2LAB).reshape(-1, 3).astype(float).mean(0)


def test_color_match_moves_the_mouth_towards_the_input_colours(generator, inputs):
    frames, _ = inputs
    y1, y2, x1, x2 = BOX
    inside = lipsync.lower_face_mask(y2 - y1, x2 - x1) > 0
    plain = synced(generator, inputs, SyncOptions(blend="feather"))
    matched = synced(generator, inputs, SyncOptions(blend="feather", color_match=True))
    for source, a, b in zip(frames, plain, matched):
        target = lab_mean(source[y1:y2, x1:x2][inside])
        before = np.linalg.norm(lab_mean(a[y1:y2, x1:x2][inside]) - target)
        after = np.linalg.norm(lab_mean(b[y1:y2, x1:x2][inside]) - target)
        assert after < 0.5 * before, (before, after)


def short_speech(path, seconds=0.6):
    """The first `seconds` of a real speech clip as a 16 kHz wav."""
    import wave

    samples = inference.audio.load_wav(str(MEDIA / "jfk.wav"), 16000)[:int(16000 * seconds)]
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(16000)
        f.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return path


def test_lipsync_video_blends_with_its_options(generator, tmp_path, monkeypatch):
    """The options reach the pipeline: with feather the upper face of every encoded frame is the input's."""
    seen = []
    write = videoio.VideoWriter.write
    monkeypatch.setattr(videoio.VideoWriter, "write", lambda self, frame: (seen.append(frame.copy()), write(self, frame)))
    stats = inference.lipsync_video(generator, str(GRID), str(short_speech(tmp_path / "speech.wav")),
                                    str(tmp_path / "out.mp4"), options=SyncOptions(box=BOX, blend="feather"),
                                    progress=False)
    frames = [f for _, f in zip(range(len(seen)), videoio.read_frames(str(GRID)))]
    y1, y2, x1, x2 = BOX
    upper = slice(y1, (y1 + y2) // 2), slice(x1, x2)
    assert len(seen) == len(frames) == stats["frames"] >= 10
    assert all(np.array_equal(s[upper], f[upper]) for s, f in zip(seen, frames))
    lower = slice((y1 + y2) // 2, y2), slice(x1, x2)
    assert any(not np.array_equal(s[lower], f[lower]) for s, f in zip(seen, frames))


@pytest.mark.parametrize("flags, message", [
    (["--blend", "foo"], "--blend 'foo': choose rect, feather, seamless"),
    (["--blend", "feather", "--mask_shape", "star"], "--mask_shape 'star'"),
    (["--blend", "feather", "--mask_edge", "0.6"], "--mask_edge 0.6"),
    (["--color_match"], "--color_match needs --blend feather or seamless"),
    (["--face_select", "index:x"], "--face_select 'index:x': choose best"),
    (["--face_select", "point:3"], "--face_select 'point:3'"),
])
def test_bad_blend_and_selection_options_fail_in_one_line_before_any_work(flags, message, capsys, tmp_path):
    out = tmp_path / "out.mp4"
    code = inference.main(["--checkpoint_path", str(tmp_path / "missing.pth"), "--face", str(GRID),
                           "--audio", str(SPEECH), "--outfile", str(out)] + flags)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not out.exists()
    with pytest.raises(OptionsError):
        SyncOptions.from_args(inference.build_parser().parse_args(
            ["--checkpoint_path", "x", "--face", "x", "--audio", "x"] + flags)).validate()


def test_live_session_with_feather_gives_the_offline_frames(generator, tmp_path):
    """A live session over an avatar prepared with --blend feather pastes as the offline path does."""
    import audio
    import live
    from face_detection.embedded import EmbeddedDetector

    path = live.prepare_avatar(str(GRID), str(tmp_path / "avatar"), detector=EmbeddedDetector(),
                               cache_dir=str(tmp_path / "cache"), progress=False, blend="feather")
    speech = audio.load_wav(str(MEDIA / "jfk.wav"))[:6400]           # 0.4 s: 10 frames
    with live.load_avatar(path) as avatar:
        assert avatar.options.blend == "feather"
        session = live.Session(generator, avatar)
        session.push(speech)
        session.end_utterance()
        frames = []
        while True:
            frame = session.read()
            if not frame.speaking:
                break
            frames.append(frame)
        windows = inference.mel_chunks(audio.melspectrogram(speech), avatar.fps)
        windows += [windows[-1]] * (len(frames) - len(windows))
        sources = [f.source_index for f in frames]
        offline = list(inference.lipsync_frames(generator, [avatar.frame(s) for s in sources], windows,
                                                [avatar.box(s) for s in sources], batch_size=16,
                                                options=avatar.options))
        for frame, want, source in zip(frames, offline, sources):
            y1, y2, x1, x2 = avatar.box(source)
            diff = np.abs(frame.image.astype(np.int16) - want)
            assert diff.max() <= 3 and diff.mean() <= 0.05
            upper = slice(y1, (y1 + y2) // 2), slice(x1, x2)
            np.testing.assert_array_equal(frame.image[upper], avatar.frame(source)[upper])
