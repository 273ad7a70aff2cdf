"""The live engine: avatars, the incremental mel, sessions against the offline core, idle,
interrupt and the sample clock, on real media with the conformance kit's weights."""
import threading

import numpy as np
import pytest
import torch

import audio
import inference
import live
from conftest import MEDIA
from face_detection.embedded import EmbeddedDetector

GRID = MEDIA / "bbaf2n.mpg"                 # 360x288, 25 fps, 75 frames
JFK = MEDIA / "jfk.wav"                     # 11 s of speech, 16 kHz
CHUNK = 320                                 # 20 ms at 16 kHz


@pytest.fixture(scope="module")
def model(tmp_path_factory, check):
    path = tmp_path_factory.mktemp("w2l") / "wav2lip.pth"
    torch.save(check.make_state_dict("wav2lip", 11), path)
    return inference.load_model(str(path))


@pytest.fixture(scope="module")
def avatar_path(tmp_path_factory):
    folder = tmp_path_factory.mktemp("avatars")
    return live.prepare_avatar(str(GRID), str(folder / "grid"), detector=EmbeddedDetector(),
                               cache_dir=str(folder / "cache"), progress=False)


@pytest.fixture
def avatar(avatar_path):
    with live.load_avatar(avatar_path) as a:
        yield a


@pytest.fixture(scope="module")
def speech():
    return audio.load_wav(str(JFK))


def drain(session):
    """Every frame readable now (read with timeout 0 until it would wait)."""
    frames = []
    while True:
        frame = session.read(timeout=0)
        if frame is None:
            return frames
        frames.append(frame)


def as_int16(x):
    return np.clip(np.rint(np.asarray(x) * 32768.0), -32768, 32767).astype(np.int16)


# --------------------------------------------------------------------------- mel
@pytest.mark.parametrize("sizes", [[CHUNK], [1, 7, 0, 401, 3000, 199]], ids=["20ms", "mixed"])
def test_streaming_mel_equals_melspectrogram_of_the_utterance(speech, sizes):
    mel, columns, i, k = live.StreamingMel(), [], 0, 0
    while i < len(speech):
        n = sizes[k % len(sizes)]
        columns.append(mel.push(speech[i:i + n]))
        i, k = i + n, k + 1
    columns.append(mel.end())
    got = np.concatenate(columns, axis=1)
    want = audio.melspectrogram(speech)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


@pytest.mark.parametrize("length", [5, 400, 401, 599, 3000])
def test_streaming_mel_of_short_utterances(speech, length):
    mel = live.StreamingMel()
    x = speech[8000:8000 + length]
    got = np.concatenate([mel.push(x[:length // 2]), mel.push(x[length // 2:]), mel.end()], axis=1)
    np.testing.assert_allclose(got, audio.melspectrogram(x), atol=1e-4, rtol=0)


def test_streaming_mel_columns_wait_only_for_their_samples(speech):
    """Column t is returned as soon as samples up to t * hop + n_fft / 2 have arrived."""
    mel = live.StreamingMel()
    assert mel.push(speech[:400]).shape[1] == 0              # the start's reflection is not known yet
    assert mel.push(speech[400:401]).shape[1] == 1           # column 0: samples 0..400
    assert mel.push(speech[401:2000]).shape[1] == 8          # columns 1..8: up to 8 * 200 + 400
    assert mel.end().shape[1] == 2                           # the last two contain the end's reflection


# --------------------------------------------------------------------------- sessions
def test_session_reproduces_the_offline_core_frame_for_frame(model, avatar, speech):
    """Acceptance 1: 20 ms chunks of real speech, each frame as soon as its window is final,
    against inference.lipsync_frames on the same avatar frames, mel windows and boxes."""
    utterance = speech[:25600]                                # 1.6 s: 40 frames at 25 fps
    session = live.Session(model, avatar)
    frames, pushed_when = [], []
    for i in range(0, len(utterance), CHUNK):
        session.push(utterance[i:i + CHUNK])
        got = drain(session)
        frames += got
        pushed_when += [min(i + CHUNK, len(utterance))] * len(got)
    session.end_utterance()
    while True:
        frame = session.read()
        if not frame.speaking:                                # then idle
            break
        frames.append(frame)
    assert [f.index for f in frames] == list(range(len(frames)))
    assert all(f.speaking for f in frames)

    mel = audio.melspectrogram(utterance)
    starts = inference.mel_chunk_starts(mel.shape[1], avatar.fps)
    windows = inference.mel_chunks(mel, avatar.fps)
    assert len(frames) == -(-len(utterance) // 640) >= len(windows)
    # Frame j arrived with the first chunk that completed its window (its columns reach start + 16).
    for j, samples in enumerate(pushed_when):
        needed = starts[j] * 200 + 3400
        assert samples == -(-needed // CHUNK) * CHUNK, j

    sources = [f.source_index for f in frames]
    assert sources == [live.pingpong(i, len(avatar)) for i in range(len(frames))]
    windows += [windows[-1]] * (len(frames) - len(windows))   # frames past the offline ones keep its last window
    offline = list(inference.lipsync_frames(model, [avatar.frame(s) for s in sources], windows,
                                            [avatar.box(s) for s in sources], batch_size=16))
    for frame, want, source in zip(frames, offline, sources):
        y1, y2, x1, x2 = avatar.box(source)
        diff = np.abs(frame.image[y1:y2, x1:x2].astype(np.int16) - want[y1:y2, x1:x2])
        assert diff.max() <= 3 and diff.mean() <= 0.05, (frame.index, diff.max(), diff.mean())
        outside = frame.image.copy()
        outside[y1:y2, x1:x2] = want[y1:y2, x1:x2]
        np.testing.assert_array_equal(outside, want)
    # The audio is the utterance's, sample for sample, zero-padded to the end of its last frame.
    out_audio = np.concatenate([f.audio for f in frames])
    assert len(out_audio) == 640 * len(frames)
    np.testing.assert_array_equal(out_audio[:len(utterance)], as_int16(utterance))
    assert not out_audio[len(utterance):].any()


def test_idle_frames_are_the_avatars_own_in_ping_pong(model, avatar):
    """Acceptance 2: idle frames are the avatar's frames byte for byte, forward then backward."""
    session = live.Session(model, avatar)
    count = 2 * len(avatar)
    frames = [session.read() for _ in range(count)]
    expected = list(range(len(avatar))) + list(range(len(avatar) - 2, 0, -1)) + [0, 1]
    assert [f.source_index for f in frames] == expected
    for i, f in enumerate(frames):
        assert (f.index, f.pts, f.speaking) == (i, i / avatar.fps, False)
        assert f.image.dtype == np.uint8 and f.image.shape == (avatar.size[1], avatar.size[0], 3)
        np.testing.assert_array_equal(f.image, avatar.frame(f.source_index))
        assert f.audio.dtype == np.int16 and len(f.audio) == 640 and not f.audio.any()


def test_pingpong_of_short_avatars():
    assert [live.pingpong(i, 1) for i in range(4)] == [0, 0, 0, 0]
    assert [live.pingpong(i, 2) for i in range(5)] == [0, 1, 0, 1, 0]
    assert [live.pingpong(i, 3) for i in range(7)] == [0, 1, 2, 1, 0, 1, 2]


def test_utterance_pushed_during_idle_starts_at_the_next_frame(model, avatar, speech):
    session = live.Session(model, avatar)
    idle = [session.read() for _ in range(5)]
    utterance = speech[16000:24000]                          # 0.5 s
    session.push(utterance)
    session.end_utterance()
    first = session.read()
    assert (first.index, first.speaking, first.source_index) == (5, True, 5)
    np.testing.assert_array_equal(first.audio, as_int16(utterance[:640]))
    rest = [session.read() for _ in range(13)]
    assert [f.speaking for f in rest] == [True] * 12 + [False]
    assert [f.index for f in idle + [first] + rest] == list(range(19))


def test_interrupt_returns_to_idle_within_one_frame(model, avatar, speech):
    session = live.Session(model, avatar)
    session.push(speech[:32000])
    session.end_utterance()
    first = session.read()                                   # computes a batch ahead
    assert first.speaking
    session.interrupt()
    after = [session.read() for _ in range(20)]
    assert not any(f.speaking for f in after)
    assert [f.index for f in after] == list(range(1, 21))
    for f in after:
        np.testing.assert_array_equal(f.image, avatar.frame(f.source_index))
        assert not f.audio.any()


def test_interrupt_wakes_a_reader_waiting_for_speech(model, avatar, speech):
    session = live.Session(model, avatar)
    session.push(speech[:1000])                              # less than the first frame's window needs
    got = []
    reader = threading.Thread(target=lambda: got.append(session.read(timeout=30)))
    reader.start()
    reader.join(0.2)
    session.interrupt()
    reader.join(30)
    assert not reader.is_alive() and len(got) == 1 and got[0] is not None
    assert (got[0].index, got[0].speaking) == (0, False)
