"""Streaming video input and output through PyAV (ffmpeg from PyPI, never the system's).

Frames are BGR uint8 arrays as OpenCV would decode them, with the container's rotation
applied (as OpenCV does). Output is written to a temporary file beside the target and moved
into place only when complete, so a failed run never leaves a half-written video.
"""
import os
import tempfile
from fractions import Fraction

import av
import cv2
import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


class VideoError(ValueError):
    """Bad video/image input or output; the message names the file and the fix."""


def is_image(path):
    return os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS


def read_image(path):
    if not os.path.isfile(path):
        raise VideoError("face file not found: %s" % path)
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        raise VideoError("cannot read image %s: corrupt or not an image" % path)
    return image


def _open(path):
    if not os.path.isfile(path):
        raise VideoError("file not found: %s" % path)
    try:
        container = av.open(path)
    except (av.FFmpegError, UnicodeDecodeError) as e:
        raise VideoError("cannot read %s: not an image (%s) nor a video ffmpeg can decode (%s)"
                         % (path, ", ".join(ext[1:] for ext in IMAGE_EXTENSIONS), e))
    if not container.streams.video:
        container.close()
        raise VideoError("%s has no video stream; pass a video or an image as --face" % path)
    return container


def video_fps(path):
    """Frames per second of the first video stream (as a float, like OpenCV's CAP_PROP_FPS)."""
    with _open(path) as container:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        if not rate:
            raise VideoError("%s does not state its frame rate" % path)
        return float(rate)


def _upright(frame):
    image = frame.to_ndarray(format="bgr24")
    turns = int(round((frame.rotation or 0) / 90)) % 4
    return np.ascontiguousarray(np.rot90(image, turns)) if turns else image


def read_frames(path):
    """Yield the frames of a video one at a time (BGR uint8, rotation metadata applied)."""
    with _open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        try:
            for frame in container.decode(stream):
                yield _upright(frame)
        except av.FFmpegError as e:
            raise VideoError("video %s is corrupt: %s" % (path, e))


def prepare_frame(frame, resize_factor=1, rotate=False, crop=(0, -1, 0, -1)):
    """The original's per-frame preparation: downscale, rotate 90 degrees clockwise, crop."""
    if resize_factor > 1:
        frame = cv2.resize(frame, (frame.shape[1] // resize_factor, frame.shape[0] // resize_factor))
    if rotate:
        frame = cv2.rotate(frame, cv2.ROTATE_90_CLOCKWISE)
    y1, y2, x1, x2 = crop
    y2 = frame.shape[0] if y2 == -1 else y2
    x2 = frame.shape[1] if x2 == -1 else x2
    return frame[y1:y2, x1:x2]


def _fps_fraction(fps):
    return Fraction(fps).limit_denominator(1001)


class VideoWriter:
    """H.264 mp4 writer that muxes the whole audio track of `audio_path` (re-encoded as AAC).

    Use as a context manager: the file appears at `path` only if the block finishes cleanly."""

    def __init__(self, path, fps, width, height, audio_path=None, crf=18, preset="medium"):
        self.path = path
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        fd, self.tmp_path = tempfile.mkstemp(prefix=".partial-", suffix=".mp4", dir=folder)
        os.close(fd)
        self.frames_written = 0
        self.finished = False
        self.container = av.open(self.tmp_path, "w", format="mp4")
        self.stream = self.container.add_stream("libx264", rate=_fps_fraction(fps))
        self.stream.width, self.stream.height = width, height
        # libx264 needs even sizes for 4:2:0; keep the exact size with 4:4:4 otherwise.
        self.stream.pix_fmt = "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"
        self.stream.options = {"crf": str(crf), "preset": preset}
        self.audio_path = audio_path
        if audio_path is not None:  # every stream must exist before the first packet is written
            with av.open(audio_path) as source:
                codec = source.streams.audio[0].codec_context
                self.audio_rate = codec.sample_rate
                self.audio_layout = "mono" if len(codec.layout.channels) == 1 else "stereo"
            self.audio_stream = self.container.add_stream("aac", rate=self.audio_rate)
            self.audio_stream.layout = self.audio_layout

    def write(self, frame_bgr):
        frame = av.VideoFrame.from_ndarray(frame_bgr, format="bgr24")
        frame.pts = self.frames_written
        self.frames_written += 1
        self.container.mux(self.stream.encode(frame))

    def _mux_audio(self):
        resampler = av.AudioResampler(format="fltp", layout=self.audio_layout, rate=self.audio_rate)
        with av.open(self.audio_path) as source:
            for frame in source.decode(source.streams.audio[0]):
                frame.pts = None
                for chunk in resampler.resample(frame):
                    self.container.mux(self.audio_stream.encode(chunk))
        for chunk in resampler.resample(None):
            self.container.mux(self.audio_stream.encode(chunk))
        self.container.mux(self.audio_stream.encode(None))

    def finish(self):
        """Flush the encoder and add the audio (done on leaving the block if not called before)."""
        if not self.finished:
            self.finished = True
            self.container.mux(self.stream.encode(None))
            if self.audio_path is not None:
                self._mux_audio()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None:
                self.finish()
            self.container.close()
            if exc_type is None:
                umask = os.umask(0)
                os.umask(umask)
                os.chmod(self.tmp_path, 0o666 & ~umask)  # mkstemp creates it private
                os.replace(self.tmp_path, self.path)
        finally:
            if os.path.exists(self.tmp_path):
                os.remove(self.tmp_path)
        return False
