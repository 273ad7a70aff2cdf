"""inference.py end to end on real media, and its one-line errors on bad input."""
import os
import subprocess
import sys

import av
import numpy as np
import pytest
import torch

import inference
import videoio
from options import SyncOptions
from conftest import MEDIA, REPO

FACE_VIDEO = MEDIA / "bbaf2n.mpg"          # 360x288, 25 fps, 75 frames
SPEECH_VIDEO = MEDIA / "lwbsza.mpg"        # its audio track drives the face
BOX = (60, 220, 110, 250)                  # y1 y2 x1 x2 around the GRID speaker's face


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, check):
    """An official-format Wav2Lip checkpoint (DataParallel keys) and other networks' files."""
    folder = tmp_path_factory.mktemp("ckpt")
    wav2lip = {"module." + k: v for k, v in check.make_state_dict("wav2lip", 11).items()}
    torch.save({"state_dict": wav2lip, "optimizer": None, "global_step": 0, "global_epoch": 0},
               folder / "wav2lip.pth")
    torch.save({"state_dict": check.make_state_dict("syncnet_color", 11)}, folder / "lipsync_expert.pth")
    torch.save(check.make_state_dict("s3fd", 11), folder / "s3fd.pth")
    return folder


def decode(path):
    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="bgr24") for f in container.decode(video=0)]
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate)
        audio = container.streams.audio
        audio_seconds = float(audio[0].duration * audio[0].time_base) if audio else 0.0
    return frames, fps, audio_seconds


def ffmpeg_samples(path):
    """Samples of the audio track at 16 kHz as the ffmpeg tool decodes it (not our decoder)."""
    import imageio_ffmpeg

    pcm = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-i", str(path), "-vn",
                          "-ac", "1", "-ar", "16000", "-f", "s16le", "-"], capture_output=True, check=True).stdout
    return len(pcm) // 2


def spec_frames(samples, fps):
    """Output frames the spec gives for `samples` of 16 kHz speech, in closed form: T = 1 + n // 200
    mel columns; every i with int(80 i / fps) + 16 <= T, i.e. i < (T - 15) fps / 80, plus the last."""
    columns = 1 + samples // 200
    return -(-(columns - 15) * fps // 80) + 1


def psnr(diff):
    return 10 * np.log10(255.0 ** 2 / max(np.mean(diff ** 2), 1e-12))


def run_cli(*args, cache_home=None):
    """inference.py in a subprocess; its detection cache goes to `cache_home` (default: none kept)."""
    env = dict(os.environ)
    if cache_home is not None:
        env["XDG_CACHE_HOME"] = str(cache_home)
    else:
        args = args + ("--no_cache",)
    return subprocess.run([sys.executable, str(REPO / "inference.py"), *map(str, args), "--quiet"],
                          capture_output=True, text=True, cwd=REPO, timeout=600, env=env)


def test_video_to_speech_end_to_end(checkpoints, tmp_path):
    outfile = tmp_path / "out" / "synced.mp4"
    result = run_cli("--checkpoint_path", checkpoints / "wav2lip.pth", "--face", FACE_VIDEO,
                     "--audio", SPEECH_VIDEO, "--outfile", outfile, "--box", *BOX)
    assert result.returncode == 0, result.stderr
    frames, fps, audio_seconds = decode(outfile)
    source, source_fps, _ = decode(FACE_VIDEO)

    samples = ffmpeg_samples(SPEECH_VIDEO)
    assert fps == source_fps == 25.0
    assert len(frames) == spec_frames(samples, 25)
    assert frames[0].shape == source[0].shape
    assert abs(audio_seconds - samples / 16000) <= 1 / fps

    y1, y2, x1, x2 = BOX
    # Codec loss only outside the box (an 8-pixel margin for H.264 blocks straddling its edge).
    outside = np.ones(frames[0].shape[:2], bool)
    outside[y1 - 8:y2 + 8, x1 - 8:x2 + 8] = False
    for out, src in zip(frames, source):
        diff = out.astype(np.float64) - src.astype(np.float64)
        assert psnr(diff[outside]) > 35.0, "pixels outside the face box changed beyond codec loss"
        assert np.abs(diff[y1:y2, x1:x2]).mean() > 4.0, "the face box was not replaced by the generator's output"
    assert not [p for p in outfile.parent.iterdir() if p.name != outfile.name]


def test_image_with_detection_and_longer_audio(checkpoints, tmp_path):
    """An image face, S3FD from --s3fd_path, the AAC track of a video: frames follow the audio."""
    outfile = tmp_path / "image.mp4"
    result = run_cli("--checkpoint_path", checkpoints / "wav2lip.pth", "--face", MEDIA / "obama-240p.jpg",
                     "--audio", MEDIA / "video_01.mp4", "--outfile", outfile, "--fps", 25,
                     "--s3fd_path", checkpoints / "s3fd.pth", "--wav2lip_batch_size", 64)
    assert result.returncode == 0, result.stderr
    frames, fps, audio_seconds = decode(outfile)
    assert frames[0].shape == (240, 427, 3)
    assert fps == 25.0
    samples = ffmpeg_samples(MEDIA / "video_01.mp4")
    assert len(frames) == spec_frames(samples, 25)
    assert abs(samples / 16000 - 3.04) < 0.04 and abs(audio_seconds - samples / 16000) <= 1 / fps


class NoFaceInSecondHalf:
    """A detector stub: a fixed face for the first frames, none afterwards."""
    name = "stub"

    def __init__(self, box, faces):
        self.box, self.faces, self.seen = box, faces, 0

    def detect(self, frames):
        out = []
        for _ in frames:
            out.append(self.box if self.seen < self.faces else None)
            self.seen += 1
        return out


def test_frames_without_face_pass_through(checkpoints, tmp_path):
    model = inference.load_model(str(checkpoints / "wav2lip.pth"))
    outfile = tmp_path / "gaps.mp4"
    detector = NoFaceInSecondHalf((110, 60, 250, 210), faces=20)
    stats = inference.lipsync_video(model, str(FACE_VIDEO), str(SPEECH_VIDEO), str(outfile), detector,
                                    progress=False)
    assert stats["input_frames_without_face"] == stats["frames"] - 20
    frames, _, _ = decode(outfile)
    source, _, _ = decode(FACE_VIDEO)
    assert len(frames) == stats["frames"]
    late = frames[40].astype(np.float64) - source[40].astype(np.float64)
    early = np.abs(frames[5].astype(np.int16) - source[5].astype(np.int16))[60:230, 110:250].mean()
    assert psnr(late) > 35.0 and early > 4.0

    with pytest.raises(inference.InferenceError, match="no face found in frame 20"):
        inference.lipsync_video(model, str(FACE_VIDEO), str(SPEECH_VIDEO), str(tmp_path / "err.mp4"),
                                NoFaceInSecondHalf((110, 60, 250, 210), faces=20), SyncOptions(on_no_face="error"),
                                progress=False)
    assert not (tmp_path / "err.mp4").exists()


def _silent_video(path):
    with videoio.VideoWriter(str(path), 25, 64, 64) as writer:
        for _ in range(5):
            writer.write(np.zeros((64, 64, 3), np.uint8))


def _short_wav(path):
    import soundfile

    soundfile.write(str(path), np.zeros(1600, np.float32), 16000)


def _bad_cases(tmp_path, checkpoints):
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\x00not a video" * 100)
    unknown = tmp_path / "face.xyz"
    unknown.write_bytes(b"\x01\x02" * 1000)
    broken_image = tmp_path / "broken.jpg"
    broken_image.write_bytes(b"\xff\xd8 truncated")
    silent = tmp_path / "silent.mp4"
    _silent_video(silent)
    short = tmp_path / "short.wav"
    _short_wav(short)
    good = dict(checkpoint=checkpoints / "wav2lip.pth", face=FACE_VIDEO, audio=SPEECH_VIDEO)
    return {
        "missing face file": (dict(good, face=tmp_path / "nope.mp4"), "not found"),
        "unreadable face file": (dict(good, face=garbage), "cannot read"),
        "unknown image format": (dict(good, face=unknown), "cannot read"),
        "corrupt image": (dict(good, face=broken_image), "cannot read image"),
        "audio file without frames as face": (dict(good, face=MEDIA / "jfk.wav"), "no video stream"),
        "no audio stream": (dict(good, audio=silent), "no audio stream"),
        "audio shorter than a frame": (dict(good, audio=short), "shorter than one"),
        "missing checkpoint": (dict(good, checkpoint=tmp_path / "none.pth"), "no checkpoint file"),
        "checkpoint of another network": (dict(good, checkpoint=checkpoints / "lipsync_expert.pth"),
                                          "SyncNet_color"),
    }


def test_bad_inputs_give_one_line_errors(checkpoints, tmp_path, capsys):
    for name, (case, message) in _bad_cases(tmp_path, checkpoints).items():
        outfile = tmp_path / "out" / "result.mp4"
        code = inference.main(["--checkpoint_path", str(case["checkpoint"]), "--face", str(case["face"]),
                               "--audio", str(case["audio"]), "--outfile", str(outfile),
                               "--box", *map(str, BOX), "--quiet"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code != 0, name
        assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], (name, err)
        assert not outfile.exists(), name
        assert not outfile.parent.exists() or not list(outfile.parent.iterdir()), name


def test_bad_s3fd_weights_give_one_line_errors(checkpoints, tmp_path, capsys):
    """S3FD is loaded at its first use (a cached re-run never loads it), still before any output."""
    for s3fd_path, message in ((tmp_path / "none.pth", "no checkpoint file"),
                               (checkpoints / "lipsync_expert.pth", "does not fit S3FD")):
        outfile = tmp_path / "out" / "result.mp4"
        code = inference.main(["--checkpoint_path", str(checkpoints / "wav2lip.pth"), "--face", str(FACE_VIDEO),
                               "--audio", str(SPEECH_VIDEO), "--outfile", str(outfile), "--s3fd_path",
                               str(s3fd_path), "--cache_dir", str(tmp_path / "cache"), "--quiet"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 1 and len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
        assert not outfile.exists()


def test_cli_exit_status_and_usage_errors(checkpoints, tmp_path):
    result = run_cli("--checkpoint_path", checkpoints / "lipsync_expert.pth", "--face", FACE_VIDEO,
                     "--audio", SPEECH_VIDEO, "--outfile", tmp_path / "x.mp4")
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0 and "SyncNet_color" in result.stderr
    assert not (tmp_path / "x.mp4").exists()
    result = run_cli("--checkpoint_path", checkpoints / "wav2lip.pth", "--face", FACE_VIDEO,
                     "--audio", SPEECH_VIDEO, "--hparams", "no_such_name=1")
    assert result.returncode == 2 and "unknown hparam" in result.stderr


def test_embedded_detector_runs_without_s3fd_weights(checkpoints, tmp_path, capsys, monkeypatch):
    """Whether or not s3fd.pth is installed: its conventional place is pointed elsewhere here."""
    import face_detection

    monkeypatch.setattr(face_detection, "DEFAULT_S3FD_PATH", str(tmp_path / "sfd" / "s3fd.pth"))
    outfile = tmp_path / "detected.mp4"
    code = inference.main(["--checkpoint_path", str(checkpoints / "wav2lip.pth"), "--face", str(MEDIA / "swiz3n.mpg"),
                           "--audio", str(SPEECH_VIDEO), "--outfile", str(outfile), "--face_det_batch_size", "8",
                           "--cache_dir", str(tmp_path / "cache"), "--quiet"])
    assert code == 0
    assert len(list((tmp_path / "cache").rglob("*.npz"))) == 1
    notice = [line for line in capsys.readouterr().err.splitlines() if "face detection:" in line]
    assert len(notice) == 1 and "embedded dlib HOG" in notice[0] and "s3fd.pth" in notice[0]
    frames, _, _ = decode(outfile)
    source, _, _ = decode(MEDIA / "swiz3n.mpg")
    assert len(frames) == spec_frames(ffmpeg_samples(SPEECH_VIDEO), 25)
    box = face_detection.load_detector(quiet=True).detect([source[0]])[0]
    x1, y1, x2, y2 = box
    changed = np.abs(frames[0].astype(np.int16) - source[0].astype(np.int16)).mean(axis=2) > 12
    assert changed[y1:y2 + 10, x1:x2].mean() > 0.3, "the detected face was not re-generated"
    # Smoothing moves the box by a few pixels: allow a margin, nothing changes beyond it.
    changed[max(0, y1 - 16):y2 + 26, max(0, x1 - 16):x2 + 16] = False
    assert changed.mean() < 0.005

    # With weights at the conventional place, that is what detects.
    (tmp_path / "sfd").mkdir()
    (tmp_path / "sfd" / "s3fd.pth").write_bytes((checkpoints / "s3fd.pth").read_bytes())
    assert face_detection.load_detector(quiet=True).name == "S3FD"


# --------------------------------------------------------------------------- options on real media
@pytest.fixture
def one_second_speech(tmp_path):
    """The first 16000 samples of jfk.wav as a 16 kHz wav: 81 mel columns, so 22 frames at 25 fps."""
    import soundfile

    path = tmp_path / "speech.wav"
    soundfile.write(str(path), soundfile.read(str(MEDIA / "jfk.wav"), frames=16000, dtype="int16")[0], 16000)
    return path


@pytest.fixture
def restore_hparams():
    from hparams import hparams

    saved = hparams.values()
    yield
    hparams.__dict__.update(saved)


def lipsync(checkpoints, face, speech, outfile, *options):
    code = inference.main(["--checkpoint_path", str(checkpoints / "wav2lip.pth"), "--face", str(face),
                           "--audio", str(speech), "--outfile", str(outfile), "--quiet", *map(str, options)])
    assert code == 0
    return decode(outfile)[0]


def test_rotation_metadata_then_rotate_then_crop(checkpoints, tmp_path, one_second_speech):
    """grid_bbaf2n_rot90.mp4 decodes turned a quarter counter-clockwise (its rotation tag);
    --rotate turns it back clockwise; --crop then cuts the upright frame: bbaf2n.mpg's pixels."""
    top, bottom, left, right = 40, 260, 80, 300
    y1, y2, x1, x2 = BOX[0] - top, BOX[1] - top, BOX[2] - left, BOX[3] - left
    frames = lipsync(checkpoints, MEDIA / "grid_bbaf2n_rot90.mp4", one_second_speech, tmp_path / "r.mp4",
                     "--rotate", "--crop", top, bottom, left, right, "--box", y1, y2, x1, x2)
    source, _, _ = decode(FACE_VIDEO)
    assert len(frames) == spec_frames(16000, 25) == 22
    assert frames[0].shape == (bottom - top, right - left, 3)
    outside = np.ones(frames[0].shape[:2], bool)
    outside[y1 - 8:y2 + 8, x1 - 8:x2 + 8] = False
    for out, src in zip(frames, source):
        expected = src[top:bottom, left:right].astype(np.float64)
        assert psnr(out.astype(np.float64)[outside] - expected[outside]) > 30.0
        assert np.abs(out[y1:y2, x1:x2] - expected[y1:y2, x1:x2]).mean() > 4.0


def test_static_video_and_hparams_overrides_reach_the_output(checkpoints, tmp_path, one_second_speech,
                                                             restore_hparams):
    """--static uses the first frame of a video whose people move (video_01.mp4, 29.97 fps) for
    every output frame; --hparams preemphasize=false changes the mel and so the generated mouth,
    nothing else."""
    face, box = MEDIA / "video_01.mp4", (100, 196, 250, 346)
    static = lipsync(checkpoints, face, one_second_speech, tmp_path / "s.mp4", "--static", "--box", *box)
    source, fps, _ = decode(face)
    assert len(static) == spec_frames(16000, fps) == 26
    y1, y2, x1, x2 = box
    outside = np.ones(source[0].shape[:2], bool)
    outside[y1 - 8:y2 + 8, x1 - 8:x2 + 8] = False
    first = source[0].astype(np.float64)[outside]
    for out in static:
        assert psnr(out.astype(np.float64)[outside] - first) > 35.0
    assert psnr(source[len(static) - 1].astype(np.float64)[outside] - first) < 30.0  # the video itself moves

    plain = lipsync(checkpoints, face, one_second_speech, tmp_path / "p.mp4", "--static", "--box", *box,
                    "--hparams", "preemphasize=false")
    mouth = slice((y1 + y2) // 2, y2), slice(x1, x2)
    moved = np.mean([np.abs(a[mouth].astype(np.int16) - b[mouth].astype(np.int16)).mean()
                     for a, b in zip(plain, static)])
    assert moved > 1.0, "preemphasize=false did not change the generated mouths"
    for a, b in zip(plain, static):
        assert psnr(a.astype(np.float64)[outside] - b.astype(np.float64)[outside]) > 40.0
