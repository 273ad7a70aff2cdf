"""The live engine: avatars, the incremental mel, sessions against the offline core, idle,
interrupt and the sample clock, on real media with the conformance kit's weights."""
import threading
import time

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
    utterance = speech[:16000]                                # 1 s: 25 frames at 25 fps
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


def test_pushing_only_queues_the_mel_is_computed_where_frames_are_read(model, avatar, speech, monkeypatch):
    """The pushing thread does no mel work (it would run beside the generator's threads): the
    reading thread computes it, between generator calls, and the frames come out as before."""
    from live.mel import StreamingMel

    computed_on = []
    push = StreamingMel.push

    def recording(self, samples):
        computed_on.append(threading.current_thread())
        return push(self, samples)

    monkeypatch.setattr(StreamingMel, "push", recording)
    session = live.Session(model, avatar)
    for i in range(0, 16000, CHUNK):
        session.push(speech[i:i + CHUNK])
    session.end_utterance()
    assert not computed_on
    frames = []

    def read_the_utterance():
        while len(frames) < 100 and (not frames or frames[-1].speaking or not any(f.speaking for f in frames)):
            frames.append(session.read(timeout=10))

    reader = threading.Thread(target=read_the_utterance)
    reader.start()
    reader.join(60)
    assert sum(f.speaking for f in frames) == 25 and not frames[-1].speaking
    assert computed_on and set(computed_on) == {reader}


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


def test_a_session_behind_max_lag_catches_up_with_the_avatars_face(model, avatar, speech):
    """Speech frames whose audio arrived more than max_lag before they are computed go out
    with the avatar's own face (and their audio), so a session that fell behind catches up
    instead of lagging further; fresher frames are lip-synced as without max_lag."""
    def speaking_frames(session, first):
        frames = [first]
        while frames[-1].speaking:
            frames.append(session.read(timeout=60))
        return frames[:-1]

    exact, bounded = (live.Session(model, avatar, batch_size=1, max_lag=lag) for lag in (None, 0.5))
    exact.push(speech[:24000])
    exact.end_utterance()
    expected = speaking_frames(exact, exact.read())
    bounded.push(speech[:24000])
    bounded.end_utterance()
    first = bounded.read()                                   # its audio has just arrived: lip-synced
    time.sleep(0.6)                                          # now every later frame's audio is older than 0.5 s
    got = speaking_frames(bounded, first)
    assert [f.index for f in got] == [f.index for f in expected] and len(got) > 30
    assert not first.caught_up and np.array_equal(first.image, expected[0].image)
    assert all(f.caught_up for f in got[1:]) and not any(f.caught_up for f in expected)
    for f, e in zip(got[1:], expected[1:]):
        np.testing.assert_array_equal(f.image, avatar.frame(f.source_index))
        np.testing.assert_array_equal(f.audio, e.audio)
    assert not np.array_equal(expected[1].image, avatar.frame(expected[1].source_index))
    with pytest.raises(live.LiveError, match="max_lag"):
        live.Session(model, avatar, max_lag=-1)


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


# --------------------------------------------------------------------------- bad input
PORTRAIT = MEDIA / "obama-240p.jpg"         # 427x240
PORTRAIT_BOX = (30, 210, 120, 300)          # top bottom left right, around the face


@pytest.fixture(scope="module")
def portrait_path(tmp_path_factory):
    return live.prepare_avatar(str(PORTRAIT), str(tmp_path_factory.mktemp("portrait") / "obama"), box=PORTRAIT_BOX,
                               progress=False)


def one_line_error(excinfo, *words):
    message = str(excinfo.value)
    assert "\n" not in message and all(w in message for w in words), message


def test_image_avatar_with_a_fixed_box(portrait_path):
    with live.load_avatar(portrait_path) as a:
        assert (len(a), a.size, a.fps) == (1, (427, 240), 25.0)
        assert a.box(0) == PORTRAIT_BOX
        np.testing.assert_array_equal(a.frame(0), inference.videoio.read_image(str(PORTRAIT)))
        assert a.meta["options"]["box"] == list(PORTRAIT_BOX) and a.meta["detector"] is None


@pytest.mark.parametrize("damage", ["missing", "no_metadata", "corrupt_metadata", "other_version", "not_avatar",
                                    "truncated_frames", "missing_boxes", "boxes_outside"])
def test_damaged_avatar_folders_give_one_line_errors(portrait_path, tmp_path, damage):
    import json
    import shutil

    path = tmp_path / "avatar"
    shutil.copytree(portrait_path, path)
    meta = json.loads((path / "avatar.json").read_text())
    if damage == "missing":
        shutil.rmtree(path)
    elif damage == "no_metadata":
        (path / "avatar.json").unlink()
    elif damage == "corrupt_metadata":
        (path / "avatar.json").write_text('{"format": "wav2lip-avatar", "vers')
    elif damage in ("other_version", "not_avatar"):
        meta.update({"version": 99} if damage == "other_version" else {"format": "something else"})
        (path / "avatar.json").write_text(json.dumps(meta))
    elif damage == "truncated_frames":
        with open(path / "frames.raw", "r+b") as f:
            f.truncate(1000)
    elif damage == "missing_boxes":
        (path / "boxes.npy").unlink()
    else:
        np.save(path / "boxes.npy", np.array([[0, 500, 0, 100]], np.int64))
    with pytest.raises(live.AvatarError) as e:
        live.load_avatar(path)
    one_line_error(e, "prepare_avatar.py", str(path))


def test_prepare_avatar_is_atomic_and_checks_its_input(tmp_path, portrait_path):
    class Failing:
        name, cache_key = "failing", None

        def detect(self, frames):
            raise RuntimeError("killed")

    out = tmp_path / "grid"
    with pytest.raises(RuntimeError):
        live.prepare_avatar(str(GRID), str(out), detector=Failing(), no_cache=True, progress=False)
    assert list(tmp_path.iterdir()) == []                    # nothing that looks like an avatar, no leftovers
    for face, options, words in [(tmp_path / "none.mp4", {}, ["not found"]),
                                 (JFK, {"box": PORTRAIT_BOX}, ["no video stream"]),
                                 (PORTRAIT, {"pads": (0, -1, 0, 0)}, ["--pads"]),
                                 (PORTRAIT, {"box": PORTRAIT_BOX, "no_such": 1}, ["no_such"])]:
        with pytest.raises(live.AvatarError) as e:
            live.prepare_avatar(str(face), str(out), progress=False, **options)
        one_line_error(e, *words)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(live.AvatarError) as e:
        live.prepare_avatar(str(PORTRAIT), str(tmp_path / "mine"), box=PORTRAIT_BOX, progress=False)
    one_line_error(e, "not an avatar")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


def test_prepare_avatar_command_line(tmp_path):
    import prepare_avatar

    out = tmp_path / "obama"
    assert prepare_avatar.main(["--face", str(PORTRAIT), "--out", str(out), "--box", *map(str, PORTRAIT_BOX),
                                "--pads", "0", "20", "0", "0", "--quiet"]) == 0
    with live.load_avatar(out) as a:
        assert a.options.pads == (0, 20, 0, 0) and a.box(0) == PORTRAIT_BOX
    assert prepare_avatar.main(["--face", str(tmp_path / "none.jpg"), "--out", str(out), "--quiet"]) == 1
    live.load_avatar(out).close()                            # the failed run left the old avatar alone
    assert prepare_avatar.main(["--face", str(PORTRAIT), "--out", str(out), "--box", "0", "100", "0", "100",
                                "--quiet"]) == 0
    with live.load_avatar(out) as a:                         # a new run replaces it
        assert a.box(0) == (0, 100, 0, 100)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["obama"]


def speaking_audio(session, limit=1000):
    """Read until the session is idle again; the speaking frames' audio, concatenated."""
    chunks = []
    for _ in range(limit):
        frame = session.read(timeout=60)
        if not frame.speaking:
            return np.concatenate(chunks) if chunks else np.zeros(0, np.int16)
        chunks.append(frame.audio)
    raise AssertionError("the utterance did not end")


def test_other_rates_and_channels_are_resampled_and_mixed_as_load_wav_does(model, portrait_path, speech):
    import soxr

    mono = speech[:9600]                                     # 0.6 s
    left = soxr.resample(mono, 16000, 44100, quality="HQ").astype(np.float32)
    stereo = np.stack([left, 0.5 * left], axis=1)            # samples x channels
    pcm = np.clip(np.rint(stereo * 32768), -32768, 32767).astype(np.int16)
    want = soxr.resample(audio.to_float32(pcm).mean(axis=1, dtype=np.float32), 44100, 16000, quality="HQ")
    with live.load_avatar(portrait_path) as a:
        session = live.Session(model, a)
        for i in range(0, len(pcm), 882):                    # 20 ms at 44.1 kHz
            session.push(pcm[i:i + 882], sample_rate=44100)
        session.push(np.zeros((0, 2), np.int16), sample_rate=44100)
        session.end_utterance()
        got = speaking_audio(session)
    np.testing.assert_array_equal(got[:len(want)], as_int16(want))
    assert not got[len(want):].any() and len(got) % 640 == 0


def test_bad_pushes_are_refused_and_the_session_keeps_working(model, portrait_path, speech, tmp_path):
    not_audio = tmp_path / "notes.wav"
    not_audio.write_text("not audio")
    with live.load_avatar(portrait_path) as a:
        session = live.Session(model, a)
        session.push(np.zeros(0, np.float32))                # an empty chunk queues nothing
        assert not session.read().speaking
        utterance = speech[:4800]
        session.push(utterance[:2000])
        bad = [(np.array([0.1, np.nan], np.float32), {}, "NaN"), (np.array([np.inf]), {}, "NaN"),
               (np.zeros((4, 2, 2), np.float32), {}, "1-D"), (np.array(["a", "b"]), {}, "int16"),
               (np.zeros(10, np.float32), {"sample_rate": 0}, "sample_rate")]
        for samples, kwargs, word in bad:
            with pytest.raises(live.LiveError) as e:
                session.push(samples, **kwargs)
            one_line_error(e, word)
        with pytest.raises(live.LiveError) as e:
            session.push_file(not_audio)
        one_line_error(e, str(not_audio))
        session.push(utterance[2000:])
        session.end_utterance()
        got = speaking_audio(session)
    np.testing.assert_array_equal(got[:len(utterance)], as_int16(utterance))


def test_sessions_share_one_model_and_a_failing_one_harms_nothing(model, portrait_path, speech):
    """Two sessions on one model in two threads; one gets bad input meanwhile, the other's
    frames equal a session run alone."""
    utterance = speech[3200:9600]
    with live.load_avatar(portrait_path) as a:
        alone = live.Session(model, a)
        alone.push(utterance)
        alone.end_utterance()
        want = [alone.read() for _ in range(10)]
        results = {}

        def run():
            s = live.Session(model, a)
            for i in range(0, len(utterance), CHUNK):
                s.push(utterance[i:i + CHUNK])
            s.end_utterance()
            results["frames"] = [s.read(timeout=60) for _ in range(10)]

        worker = threading.Thread(target=run)
        worker.start()
        other = live.Session(model, a)
        assert other.generator is alone.generator             # folded once, shared
        for _ in range(20):
            with pytest.raises(live.LiveError):
                other.push(np.full(320, np.nan, np.float32))
            other.read()
        worker.join(120)
    assert not worker.is_alive()
    for got, expected in zip(results["frames"], want):
        assert (got.index, got.speaking) == (expected.index, expected.speaking)
        np.testing.assert_array_equal(got.image, expected.image)
        np.testing.assert_array_equal(got.audio, expected.audio)


# --------------------------------------------------------------------------- a long session
def rss_mb():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def test_thirty_minutes_under_a_simulated_clock(model, tmp_path, speech):
    """Acceptance 3: a microphone-like stream (20 ms chunks, 0.3 s of speech every 2 minutes,
    silence in between ending each utterance by the silence gap) read as it arrives: no frame
    missing or repeated, audio and video on one clock, no drift, memory flat after a minute.
    (Generator runs dominate the test's time: the speech is kept short, in float32, which is
    fast everywhere; bfloat16 is emulated, 3x slower, on CPUs without native support.)"""
    small = live.prepare_avatar(str(GRID), str(tmp_path / "small"), resize_factor=4, box=(23, 66, 23, 54),
                                progress=False)                # 90x72, 75 frames
    minutes, period, burst = 30, 6000, 4800                   # chunks between bursts; speech samples a burst
    spf, per_minute = 640, 3000
    with live.load_avatar(small) as avatar:
        session = live.Session(model, avatar, silence_gap=0.2)
        index = total_audio = lag_max = 0
        pushed_speech, spoken = [], []
        for c in range(minutes * per_minute):
            start = (c % period - 100) * CHUNK
            if 0 <= start < burst:
                offset = 8000 + (c // period) * 4000 % (len(speech) - burst - 8000)
                chunk = speech[offset + start:offset + start + CHUNK]
                if start == 0:  # silence before the first loud sample is skipped, as between utterances
                    chunk = chunk[np.argmax(np.abs(chunk) > live.session.SILENCE_LEVEL):]
                pushed_speech.append(as_int16(chunk))
                chunk = speech[offset + start:offset + start + CHUNK]
            else:
                chunk = np.zeros(CHUNK, np.float32)
            session.push(chunk)
            arrived = (c + 1) * CHUNK
            # Read the frames whose audio has arrived; within an utterance the session may wait
            # for its window's look-ahead (None), and catches up with idle frames after it.
            while (index + 1) * spf <= arrived:
                frame = session.read(timeout=0)
                if frame is None:
                    break
                assert (frame.index, frame.pts) == (index, index / 25.0)
                assert len(frame.audio) == spf
                total_audio += len(frame.audio)
                if frame.speaking:
                    spoken.append(frame.audio)
                index += 1
            lag_max = max(lag_max, arrived // spf - index)
            if c == per_minute - 1:
                after_first_minute = rss_mb()
        at_end = rss_mb()
    assert index >= minutes * 60 * 25 - 1                     # read up to the end: nothing fell behind
    assert lag_max <= live.LOOKAHEAD_SECONDS * 25 + 2          # at most the look-ahead behind the speech
    assert total_audio == index * spf                          # audio time equals video time, sample for sample
    pushed, out = np.concatenate(pushed_speech), np.concatenate(spoken)
    np.testing.assert_array_equal(out[out != 0], pushed[pushed != 0])
    assert len(spoken) >= minutes // 2 * burst / spf
    assert at_end - after_first_minute < 50, (after_first_minute, at_end)


@pytest.mark.parametrize("precision", ["bfloat16", "int8"])
def test_fast_session_stays_within_the_fast_tolerance(model, avatar, speech, monkeypatch, precision):
    """--fast live: the reduced-precision generator's mouths against the faithful session's,
    within the tolerance inference.py --fast states for it (tests/test_speed_paths.py), each
    precision forced (the hardware picks one)."""
    import lipsync
    import test_speed_paths as stated

    dtype, (mean_limit, p99_limit, max_limit) = {
        "bfloat16": (torch.bfloat16, (stated.FAST_MOUTH_MEAN, stated.FAST_MOUTH_P99, stated.FAST_MOUTH_MAX)),
        "int8": (torch.qint8, (stated.INT8_MOUTH_MEAN, stated.INT8_MOUTH_P99, stated.INT8_MOUTH_MAX))}[precision]
    monkeypatch.setattr(lipsync, "fast_dtype", lambda device: dtype)
    utterance = speech[3200:9600]
    outputs = {}
    for fast in (False, True):
        session = live.Session(model, avatar, fast=fast)
        session.push(utterance)
        session.end_utterance()
        outputs[fast] = [session.read() for _ in range(10)]
    for faithful, fast in zip(outputs[False], outputs[True]):
        assert fast.speaking and fast.source_index == faithful.source_index
        np.testing.assert_array_equal(fast.audio, faithful.audio)
        y1, y2, x1, x2 = avatar.box(fast.source_index)
        mouth = slice((y1 + y2) // 2, y2), slice(x1, x2)
        diff = np.abs(fast.image[mouth].astype(np.int16) - faithful.image[mouth])
        assert diff.mean() <= mean_limit and np.percentile(diff, 99) <= p99_limit
        assert diff.max() <= max_limit
    assert any(not np.array_equal(a.image, b.image) for a, b in zip(outputs[False], outputs[True]))
    # On the same generator the fast session's frames are the offline core's, byte for byte.
    windows = inference.mel_chunks(audio.melspectrogram(utterance), avatar.fps)
    windows += [windows[-1]] * (10 - len(windows))
    sources = [f.source_index for f in outputs[True]]
    offline = inference.lipsync_frames(live.session.generator_for(model, fast=True), [avatar.frame(s) for s in sources],
                                       windows, [avatar.box(s) for s in sources], batch_size=16)
    for frame, want in zip(outputs[True], offline):
        np.testing.assert_array_equal(frame.image, want)


def test_int8_session_makes_each_frame_as_soon_as_it_can(model, avatar, speech, monkeypatch):
    """The int8 generator runs one face at a time, so a session behind its audio hands it one
    frame per call: a batch would hold back its first frames until its last was made. The
    faithful generator still takes what is ready as one batch."""
    import lipsync

    monkeypatch.setattr(lipsync, "fast_dtype", lambda device: torch.qint8)
    batches = []
    generate_batch = lipsync.generate_batch
    monkeypatch.setattr(lipsync, "generate_batch", lambda model, items, *rest: batches.append(len(items))
                        or generate_batch(model, items, *rest))
    for fast, expected in ((True, [1] * 8), (False, [8])):
        batches.clear()
        session = live.Session(model, avatar, fast=fast, batch_size=8)
        session.push(speech[:16000])  # a second of speech queued before the first read: 8 frames ready
        frames = [session.read() for _ in range(8)]
        assert all(f.speaking for f in frames) and [f.index for f in frames] == list(range(8))
        assert batches == expected, batches
