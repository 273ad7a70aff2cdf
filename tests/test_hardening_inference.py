"""Hostile and careless inputs to inference (issue 12): each ends in one line and leaves nothing
behind, and the pipeline stops cleanly (signals, errors)."""
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

import av
import numpy as np
import pytest
import soundfile
import torch

import face_detection
import inference
import videoio
from conftest import CONFORMANCE, MEDIA, REPO
from face_detection.fast import FastDetector
from options import SyncOptions

FACE_VIDEO = MEDIA / "bbaf2n.mpg"          # 360x288, 25 fps, 75 frames
FACE_IMAGE = MEDIA / "obama-240p.jpg"      # 427x240
BOX = (60, 220, 110, 250)                  # y1 y2 x1 x2 around the GRID speaker's face
FACE = (110, 60, 250, 210)                 # the same face as a detector box x1 y1 x2 y2
# 0.6 s of speech at 25 fps: 9600 samples, 49 mel columns (hop 200, centred frames); windows start
# at int(i * 80 / 25) while they fit (i = 0..10, up to column 32), then one at 49 - 16 = 33.
FRAMES = 12


@pytest.fixture(scope="module")
def files(tmp_path_factory, check):
    """A Wav2Lip checkpoint under deterministic weights and 0.6 s of real speech (FRAMES output frames)."""
    folder = tmp_path_factory.mktemp("hardening")
    torch.save({"state_dict": check.make_state_dict("wav2lip", 11)}, folder / "wav2lip.pth")
    speech, rate = soundfile.read(str(MEDIA / "jfk.wav"), dtype="int16")
    soundfile.write(str(folder / "speech.wav"), speech[int(0.6 * rate):int(1.2 * rate)], rate)
    return folder


@pytest.fixture(scope="module")
def model(files):
    return inference.load_model(str(files / "wav2lip.pth"))


def decode(path):
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="bgr24") for f in container.decode(video=0)]


def one_error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


class Stub:
    """A detector that gives `box` for every frame (and counts the frames it saw)."""
    name = "stub"
    cache_key = "stub-v1"

    def __init__(self, box=FACE):
        self.box, self.frames = box, 0

    def detect(self, frames):
        self.frames += len(frames)
        return [self.box for _ in frames]


# --------------------------------------------------------------------------- item 1 (and 2: inverted boxes)
BAD_OPTIONS = {
    "fps zero": (["--fps", "0"], "--fps"),
    "fps negative": (["--fps", "-25"], "--fps"),
    "fps not a number": (["--fps", "nan"], "--fps"),
    "fps below one frame a second": (["--fps", "0.01"], "--fps"),
    "fps absurdly high": (["--fps", "100000"], "--fps"),
    "detection batch zero": (["--face_det_batch_size", "0"], "--face_det_batch_size"),
    "generator batch negative": (["--wav2lip_batch_size", "-3"], "--wav2lip_batch_size"),
    "generator batch beyond memory": (["--wav2lip_batch_size", "1000000"], "--wav2lip_batch_size"),
    "resize factor zero": (["--resize_factor", "0"], "--resize_factor"),
    "negative pads": (["--pads", "0", "-5", "0", "0"], "--pads"),
    "inverted box": (["--box", "220", "60", "110", "250"], "--box"),
    "negative box": (["--box", "60", "220", "-5", "250"], "--box"),
    "box half given": (["--box", "-1", "220", "110", "250"], "--box"),
    "inverted crop": (["--crop", "100", "50", "0", "-1"], "--crop"),
    "negative crop": (["--crop", "0", "-1", "-3", "-1"], "--crop"),
}


@pytest.mark.parametrize("case", BAD_OPTIONS, ids=str)
def test_bad_options_are_one_line_errors_before_any_work(case, tmp_path, capsys):
    """The checkpoint does not exist: an error about it would mean work began before validation."""
    flags, option = BAD_OPTIONS[case]
    outfile = tmp_path / "out.mp4"
    code = inference.main(["--checkpoint_path", str(tmp_path / "absent.pth"), "--face", str(FACE_IMAGE),
                           "--audio", str(MEDIA / "jfk.wav"), "--outfile", str(outfile), "--quiet", *flags])
    line = one_error_line(capsys)
    assert code == 1 and option in line, line
    assert not os.listdir(tmp_path)


def test_resize_factor_beyond_the_frame_is_refused(model, files, tmp_path):
    with pytest.raises(videoio.VideoError, match="--resize_factor 500 leaves no pixels of a 360x288 frame"):
        inference.lipsync_video(model, str(FACE_VIDEO), str(files / "speech.wav"), str(tmp_path / "out.mp4"),
                                Stub(), SyncOptions(resize_factor=500), progress=False)
    assert not os.listdir(tmp_path)


# --------------------------------------------------------------------------- item 2
def test_box_reaching_outside_the_frame_is_clipped_with_a_notice(model, files, tmp_path, capsys):
    outfile = tmp_path / "clipped.mp4"
    inference.lipsync_video(model, str(FACE_IMAGE), str(files / "speech.wav"), str(outfile), None,
                            SyncOptions(box=(100, 400, 150, 260)), progress=False)
    notice = capsys.readouterr().err.strip().splitlines()
    assert len(notice) == 1 and "427x240" in notice[0] and "clipped to 100 240 150 260" in notice[0], notice
    source = videoio.read_image(str(FACE_IMAGE))
    frames = decode(outfile)
    assert len(frames) == FRAMES
    changed = np.abs(frames[0].astype(np.int16) - source.astype(np.int16)).mean(axis=2) > 12
    assert changed[100:240, 150:260].mean() > 0.3, "the clipped box was not generated"


@pytest.mark.parametrize("box", [(250, 300, 10, 20), (10, 100, 427, 500)], ids=["below", "right"])
def test_box_outside_the_frame_is_refused(box, model, files, tmp_path):
    with pytest.raises(inference.InferenceError, match="outside the 427x240 frame"):
        inference.lipsync_video(model, str(FACE_IMAGE), str(files / "speech.wav"), str(tmp_path / "out.mp4"),
                                None, SyncOptions(box=box), progress=False)
    assert not os.listdir(tmp_path)


# --------------------------------------------------------------------------- item 3
class MustNotDetect:
    name = "must not run"

    def detect(self, frames):
        raise AssertionError("detection ran before the output location was checked")


def test_output_location_is_checked_before_detection(model, files, tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_bytes(b"")
    for outfile, message in ((tmp_path, "is a folder"), (a_file / "sub" / "out.mp4", "is a file")):
        with pytest.raises(videoio.VideoError, match=message):
            inference.lipsync_video(model, str(FACE_VIDEO), str(files / "speech.wav"), str(outfile),
                                    MustNotDetect(), progress=False)
    assert sorted(os.listdir(tmp_path)) == ["a_file"]


def test_outfile_naming_a_folder_is_one_line(files, tmp_path, capsys):
    code = inference.main(["--checkpoint_path", str(files / "wav2lip.pth"), "--face", str(FACE_IMAGE),
                           "--audio", str(files / "speech.wav"), "--outfile", str(tmp_path), "--quiet"])
    assert code == 1 and "is a folder" in one_error_line(capsys)
    assert not os.listdir(tmp_path)


def check_output_as(uid, path):
    """videoio.check_output(path) in a forked child with the real user id `uid` (None: ours)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read)
            if uid is not None:
                os.setuid(uid)
            try:
                videoio.check_output(path)
                os.write(write, b"ok")
            except videoio.VideoError as e:
                os.write(write, str(e).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        answer = pipe.read().decode()
    os.waitpid(pid, 0)
    return answer


def test_unwritable_output_folder_is_refused():
    # root may write anywhere: check as an unprivileged user then (os.access uses the real uid),
    # in a folder that user can reach.
    uid = 65534 if os.geteuid() == 0 else None
    with tempfile.TemporaryDirectory() as folder:
        os.chmod(folder, 0o777)
        locked = os.path.join(folder, "locked")
        os.mkdir(locked, 0o555)
        os.chmod(locked, 0o555)
        answer = check_output_as(uid, os.path.join(locked, "new", "out.mp4"))
        assert "is not writable" in answer and locked in answer, answer
        assert check_output_as(uid, os.path.join(folder, "new", "out.mp4")) == "ok"  # the user can write there
        assert not os.listdir(locked)


def test_unwritable_default_cache_folder_warns_once_and_runs(model, files, tmp_path, monkeypatch, capsys):
    from face_detection.cache import default_folder

    blocker = tmp_path / "not_a_folder"
    blocker.write_bytes(b"")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    monkeypatch.setattr(face_detection, "load_detector", lambda *args, **kwargs: Stub())
    code = inference.main(["--checkpoint_path", str(files / "wav2lip.pth"), "--face", str(FACE_VIDEO),
                           "--audio", str(files / "speech.wav"), "--outfile", str(tmp_path / "cli.mp4"), "--quiet"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    notices = captured.err.strip().splitlines()
    assert len(notices) == 1 and str(blocker) in notices[0] and "without the cache" in notices[0], notices
    # A second run in the same process (as the evaluation makes them) says nothing more.
    inference.lipsync_video(model, str(FACE_VIDEO), str(files / "speech.wav"), str(tmp_path / "api.mp4"), Stub(),
                            progress=False, cache_dir=default_folder())
    assert not capsys.readouterr().err
    assert len(decode(tmp_path / "cli.mp4")) == len(decode(tmp_path / "api.mp4")) == FRAMES


# --------------------------------------------------------------------------- item 5
def open_paths():
    """The files this process holds open."""
    folder = "/proc/self/fd"
    paths = []
    for fd in os.listdir(folder):
        try:
            paths.append(os.readlink(os.path.join(folder, fd)))
        except OSError:
            pass
    return paths


def test_writer_checks_the_frame_count_before_the_move(tmp_path):
    target = tmp_path / "short.mp4"
    with pytest.raises(videoio.VideoError, match="wrote 3 frames .* expected 5"):
        with videoio.VideoWriter(str(target), 25, 64, 64, expected_frames=5) as writer:
            for _ in range(3):
                writer.write(np.zeros((64, 64, 3), np.uint8))
    assert not os.listdir(tmp_path)


def test_writer_closes_and_removes_the_file_when_the_encoder_fails(tmp_path):
    speech = tmp_path / "speech.wav"
    speech.write_bytes((MEDIA / "jfk.wav").read_bytes())
    target = tmp_path / "out" / "video.mp4"
    with pytest.raises(videoio.VideoError, match="encoding .* failed"):
        with videoio.VideoWriter(str(target), 25, 64, 64, audio_path=str(speech)) as writer:
            writer.write(np.zeros((64, 64, 3), np.uint8))
            speech.write_bytes(b"\x00garbage" * 1000)  # the audio becomes unreadable before it is muxed
    assert not os.listdir(target.parent)
    assert not [p for p in open_paths() if p.startswith(str(target.parent))]


def test_writer_flushes_before_the_rename_and_keeps_the_process_umask(tmp_path, monkeypatch):
    target = tmp_path / "video.mp4"
    events = []
    fsync, replace = os.fsync, os.replace

    def spy_fsync(fd):
        events.append(("fsync", os.readlink("/proc/self/fd/%d" % fd)))
        fsync(fd)

    def spy_replace(src, dst):
        events.append(("replace", os.fspath(src)))
        replace(src, dst)

    def no_umask(mask):
        raise AssertionError("the process-wide umask was changed")

    monkeypatch.setattr(os, "fsync", spy_fsync)
    monkeypatch.setattr(os, "replace", spy_replace)
    monkeypatch.setattr(os, "umask", no_umask)
    with videoio.VideoWriter(str(target), 25, 64, 64) as writer:
        writer.write(np.zeros((64, 64, 3), np.uint8))
    assert [e[0] for e in events] == ["fsync", "replace"] and events[0][1] == events[1][1], events
    assert len(decode(target)) == 1


def test_writer_mode_follows_the_umask(tmp_path):
    script = ("import os, sys; sys.path.insert(0, %r); os.umask(0o027); import numpy, videoio\n"
              "with videoio.VideoWriter(sys.argv[1], 25, 64, 64) as w:\n"
              "    w.write(numpy.zeros((64, 64, 3), numpy.uint8))\n"
              "print(oct(os.stat(sys.argv[1]).st_mode & 0o777), oct(os.umask(0)))\n" % str(REPO))
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path / "v.mp4")], capture_output=True,
                            text=True, timeout=60)
    assert result.stdout.split() == ["0o640", "0o27"], result


# --------------------------------------------------------------------------- item 6
class FaceInFrames:
    """A detector stub: a face only in the frames whose first pixel is in `faces`."""
    name = "stub"

    def __init__(self, faces):
        self.faces = faces

    def detect(self, frames):
        return [FACE if int(f[0, 0, 0]) in self.faces else None for f in frames]


def test_fast_detection_finds_a_face_between_faceless_keyframes():
    frames = [np.full((32, 32, 3), i, np.uint8) for i in range(16)]     # keyframes 0, 8 and 15
    boxes = FastDetector(FaceInFrames({3, 4, 5}), short_side=None, every=8).detect(frames)
    assert [i for i, b in enumerate(boxes) if b is not None] == [3, 4, 5]


# --------------------------------------------------------------------------- item 7
def linear_run(n, start):
    """n detector boxes x1 y1 x2 y2 moving 4 px a frame (integer means)."""
    return [(start + 4 * i, 20, start + 4 * i + 40, 60) for i in range(n)]


def test_short_face_runs_are_smoothed_over_themselves():
    run3, run4 = linear_run(3, 10), linear_run(4, 30)
    detections = [None] + run3 + [None, None] + run4 + [None]
    boxes = inference.face_boxes_with_gaps(detections, (100, 200), pads=(0, 0, 0, 0))
    for run, first in ((run3, 1), (run4, 6)):
        got = boxes[first:first + len(run)]
        x1 = [b[2] for b in got]
        # The first frame averages the whole run; none takes the run's last box (the collapse).
        assert x1[0] == np.mean([d[0] for d in run]), x1
        assert max(x1) < run[-1][0] and x1 == sorted(x1), x1
    assert boxes[0] is None and boxes[4] is None and boxes[-1] is None


def test_whole_short_video_keeps_the_originals_boxes():
    """A video of 4 frames, a face in each: the original's smoothing gives every frame the last box."""
    run = linear_run(4, 30)
    x1, y1, x2, y2 = run[-1]
    assert inference.face_boxes_with_gaps(run, (100, 200), pads=(0, 0, 0, 0)) == [(y1, y2, x1, x2)] * 4


@pytest.mark.parametrize("path", sorted(CONFORMANCE.glob("e2e_*.npz")), ids=lambda p: p.stem)
def test_face_boxes_with_gaps_match_e2e_golden(path):
    z = np.load(path)
    detections = [tuple(int(v) for v in d) for d in z["detections"]]
    got = inference.face_boxes_with_gaps(detections, z["frames"].shape[1:], tuple(z["pads"]), bool(z["nosmooth"]))
    np.testing.assert_array_equal(np.array(got)[z["source_index"]], z["boxes"])


# --------------------------------------------------------------------------- item 8
def test_static_video_decodes_its_first_frame_once(model, files, tmp_path, monkeypatch):
    calls = []
    read_frames = videoio.read_frames
    monkeypatch.setattr(videoio, "read_frames", lambda path: calls.append(path) or read_frames(path))
    outfile = tmp_path / "static.mp4"
    stats = inference.lipsync_video(model, str(FACE_VIDEO), str(files / "speech.wav"), str(outfile), None,
                                    SyncOptions(static=True, box=BOX), progress=False)
    assert len(calls) == 1, "the video was opened %d times for %d frames" % (len(calls), stats["frames"])
    frames = decode(outfile)
    first = decode(FACE_VIDEO)[0]
    y1, y2, x1, x2 = BOX
    assert len(frames) == stats["frames"] == FRAMES
    outside = np.ones(first.shape[:2], bool)
    outside[y1 - 8:y2 + 8, x1 - 8:x2 + 8] = False
    for frame in frames:  # every output frame is the first frame (codec loss aside) outside the face
        diff = frame[outside].astype(np.float64) - first[outside].astype(np.float64)
        assert 10 * np.log10(255.0 ** 2 / np.mean(diff ** 2)) > 35.0


# --------------------------------------------------------------------------- item 10
def test_signals_stop_the_cli_with_one_line_and_no_partial_file(files, tmp_path):
    """Ctrl-C and SIGTERM while the video is being written: 128 + the signal's number, nothing left."""
    runs = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        folder = tmp_path / sig.name
        folder.mkdir()
        command = [sys.executable, str(REPO / "inference.py"), "--checkpoint_path", str(files / "wav2lip.pth"),
                   "--face", str(FACE_IMAGE), "--audio", str(MEDIA / "jfk.wav"), "--fps", "60",
                   "--outfile", str(folder / "out.mp4"), "--box", *map(str, BOX), "--quiet"]
        runs[sig] = folder, subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                             text=True)
    try:
        deadline = time.monotonic() + 300  # generous: the machine may be shared
        pending = dict(runs)
        while pending and time.monotonic() < deadline:  # signal each run once its partial file exists
            for sig, (folder, process) in list(pending.items()):
                if any(p.name.startswith(".partial-") for p in folder.iterdir()) or process.poll() is not None:
                    process.send_signal(sig)
                    del pending[sig]
            time.sleep(0.05)
        assert not pending, "no partial file appeared within 300 s"
        for sig, (folder, process) in runs.items():
            _, err = process.communicate(timeout=120)
            assert process.returncode == 128 + sig, (sig, process.returncode, err)
            assert err.strip().splitlines() == ["error: stopped by %s; no output written" % sig.name], err
            assert not os.listdir(folder), os.listdir(folder)
    finally:
        for _, process in runs.values():
            if process.poll() is None:
                process.kill()
                process.wait()


def test_stale_partial_files_of_killed_runs_are_removed(tmp_path):
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    old = time.time() - 3600
    names = {"dead-old": ".partial-%d-0a1b.mp4" % ended.pid, "dead-fresh": ".partial-%d-2c3d.mp4" % ended.pid,
             "alive-old": ".partial-%d-4e5f.mp4" % os.getpid(), "other-name": ".partial-x7y8.mp4",
             "cache entry": ".partial-%d-0a1b.npz" % ended.pid}
    for what, name in names.items():
        (tmp_path / name).write_bytes(b"partial")
        if what != "dead-fresh":
            os.utime(tmp_path / name, (old, old))
    with videoio.VideoWriter(str(tmp_path / "new.mp4"), 25, 64, 64) as writer:
        writer.write(np.zeros((64, 64, 3), np.uint8))
    kept = sorted(names[w] for w in names if w != "dead-old")
    assert sorted(os.listdir(tmp_path)) == sorted(kept + ["new.mp4"])


# --------------------------------------------------------------------------- item 11
def pipeline_threads():
    return [t for t in threading.enumerate() if t.name.endswith("(work)") and t.is_alive()]


class FailsSecondBatch(Stub):
    def detect(self, frames):
        if self.frames:
            raise RuntimeError("detector failed")
        return super().detect(frames)


def test_errors_stop_the_background_threads(model, files, tmp_path, monkeypatch):
    assert not pipeline_threads()
    with pytest.raises(RuntimeError, match="detector failed") as detection_error:
        inference.lipsync_video(model, str(FACE_VIDEO), str(files / "speech.wav"), str(tmp_path / "a.mp4"),
                                FailsSecondBatch(), SyncOptions(face_det_batch_size=2), progress=False)
    assert not pipeline_threads(), "decoder threads outlive the detection error"

    write = videoio.VideoWriter.write

    def failing_write(self, frame):
        if self.frames_written == 3:
            raise OSError(28, "No space left on device")
        write(self, frame)

    monkeypatch.setattr(videoio.VideoWriter, "write", failing_write)
    with pytest.raises(OSError, match="No space") as encoding_error:
        inference.lipsync_video(model, str(FACE_VIDEO), str(files / "speech.wav"), str(tmp_path / "b.mp4"),
                                None, SyncOptions(box=BOX, wav2lip_batch_size=2), progress=False)
    assert not pipeline_threads(), "decoder and generator threads outlive the encoding error"
    assert detection_error.value and encoding_error.value  # both tracebacks were alive while checked
    assert not os.listdir(tmp_path)
