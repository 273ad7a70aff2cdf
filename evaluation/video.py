"""Scoring a video file, read exactly as the original evaluation read it: with the ffmpeg tool.

The original dumped frames to JPEG with ffmpeg (default MJPEG rate control, no quality flag)
and read them back with OpenCV; that lossy round trip shifts distances by ~1 %, so it is
kept. The ffmpeg binary is the one shipped by imageio-ffmpeg (no system ffmpeg needed).
"""
import os
import subprocess
import tempfile
from glob import escape, glob

import av
import cv2
import imageio_ffmpeg
from scipy.io import wavfile

from .lse import FPS, score_arrays


class MediaError(ValueError):
    """A video that cannot be scored as given (unreadable, no audio, wrong frame rate...)."""


def run_ffmpeg(args, path):
    """Run imageio-ffmpeg's ffmpeg with `args`; a failure becomes a one-line MediaError."""
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y"] + args
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        raise MediaError("ffmpeg failed on %s: %s" % (path, lines[-1] if lines else "exit code %d" % result.returncode))


def probe(path):
    """(frame rate, has_audio) of a video file, or a MediaError saying why it is not one."""
    if not os.path.isfile(path):
        raise MediaError("no such file: %s" % path)
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise MediaError("%s has no video stream" % path)
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            return (float(rate) if rate else None), bool(container.streams.audio)
    except av.FFmpegError as e:
        raise MediaError("cannot read %s as a video: %s" % (path, e))


def is_25_fps(rate):
    return rate is not None and abs(rate - FPS) < 0.01


def read_frames(path, fps=None):
    """BGR uint8 frames as the original read them: ffmpeg JPEG dump, sorted, cv2.imread.

    `fps` makes ffmpeg resample the frame rate while dumping (drops or repeats frames).
    """
    with tempfile.TemporaryDirectory(prefix="lse_frames_") as tmp:
        rate = ["-r", str(fps)] if fps else []
        run_ffmpeg(["-i", str(path), "-threads", "1"] + rate + ["-f", "image2", os.path.join(tmp, "%06d.jpg")], path)
        return [cv2.imread(name) for name in sorted(glob(os.path.join(escape(tmp), "*.jpg")))]


def read_audio(path):
    """int16 mono 16 kHz samples of the audio track, extracted by ffmpeg as the original did."""
    with tempfile.TemporaryDirectory(prefix="lse_audio_") as tmp:
        wav_path = os.path.join(tmp, "audio.wav")
        run_ffmpeg(["-i", str(path), "-async", "1", "-ac", "1", "-vn", "-acodec", "pcm_s16le", "-ar", "16000",
                    wav_path], path)
        return wavfile.read(wav_path)[1]


def score_video(path, syncnet, convert_fps=False, batch_size=20):
    """Sync scores of a video file with its own audio track (see `score_arrays`).

    The metric assumes 25 fps; another frame rate is an error unless `convert_fps`, which
    resamples the frames to 25 fps while dumping them (as the real-videos pipeline does).
    """
    rate, has_audio = probe(path)
    if not has_audio:
        raise MediaError("%s has no audio track; LSE compares the lips with the speech" % path)
    if not is_25_fps(rate) and not convert_fps:
        raise MediaError("%s runs at %s fps but LSE assumes 25 fps; re-encode it at 25 fps or pass "
                         "--convert_fps" % (path, "%.2f" % rate if rate else "an unknown"))
    frames = read_frames(path, fps=None if is_25_fps(rate) else FPS)
    samples = read_audio(path)
    result = score_arrays(frames, samples, syncnet, batch_size)
    return dict(result, n_frames=len(frames), n_samples=len(samples), fps=rate)
