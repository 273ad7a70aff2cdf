"""Streaming video input and output through PyAV (ffmpeg from PyPI, never the system's).

Frames are BGR uint8 arrays as OpenCV would decode them, with the container's rotation
applied (as OpenCV does). Output is written to a temporary file beside the target and moved
into place only when complete, so a failed run never leaves a half-written video.
"""
import os
import re
import secrets
import time
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


def first_frame(path):
    """The first frame of a video (as read_frames gives it), or None when it has none."""
    frames = read_frames(path)
    try:
        return next(frames, None)
    finally:
        frames.close()


def prepare_frame(frame, resize_factor=1, rotate=False, crop=(0, -1, 0, -1)):
    """The original's per-frame preparation: downscale, rotate 90 degrees clockwise, crop."""
    if resize_factor > 1:
        if min(frame.shape[:2]) < resize_factor:
            raise VideoError("--resize_factor %d leaves no pixels of a %dx%d frame; pass a smaller one"
                             % (resize_factor, frame.shape[1], frame.shape[0]))
        frame = cv2.resize(frame, (frame.shape[1] // resize_factor, frame.shape[0] // resize_factor))
    if rotate:
        frame = cv2.rotate(frame, cv2.ROTATE_90_CLOCKWISE)
    y1, y2, x1, x2 = crop
    y2 = frame.shape[0] if y2 == -1 else y2
    x2 = frame.shape[1] if x2 == -1 else x2
    return frame[y1:y2, x1:x2]


def _fps_fraction(fps):
    return Fraction(fps).limit_denominator(1001)


def check_output(path):
    """Raise VideoError unless a video can be written at `path`: checked before any long work."""
    if os.path.isdir(path):
        raise VideoError("--outfile %s is a folder; name a file in it, e.g. %s"
                         % (path, os.path.join(path, "result.mp4")))
    existing = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(existing):  # the folders still to create are made in the nearest existing one
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise VideoError("cannot write %s: %s is a file, not a folder; pass another --outfile" % (path, existing))
    if not os.access(existing, os.W_OK | os.X_OK):
        raise VideoError("cannot write %s: the folder %s is not writable; pass an --outfile in a writable folder"
                         % (path, existing))


# Partial files are named after the writing process, so that a later run can tell an abandoned one
# (its process is gone) from one that a concurrent run is still writing.
_PARTIAL = re.compile(r"^\.partial-(\d+)-[0-9a-f]+\.mp4$")
STALE_AFTER = 60.0  # seconds without a write before an abandoned partial file may be removed


def _running(pid):
    if os.name == "nt":  # os.kill there would signal the process, not probe it: keep every file
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_stale_partials(folder):
    """Remove the partial videos that killed runs left in `folder` (their process is gone)."""
    now = time.time()
    for name in os.listdir(folder):
        match = _PARTIAL.match(name)
        path = os.path.join(folder, name)
        try:
            # Another host's run sharing the folder has no process here, but it keeps writing.
            if match and not _running(int(match.group(1))) and now - os.path.getmtime(path) > STALE_AFTER:
                os.remove(path)
        except OSError:  # removed meanwhile, or not ours to remove
            pass


def _create_partial(folder):
    """A new empty partial file in `folder`, created with the default mode (0o666 less the umask)."""
    while True:
        path = os.path.join(folder, ".partial-%d-%s.mp4" % (os.getpid(), secrets.token_hex(4)))
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return path
        except FileExistsError:
            continue


class VideoWriter:
    """H.264 mp4 writer that muxes the whole audio track of `audio_path` (re-encoded as AAC).

    Use as a context manager: the file appears at `path` only if the block finishes cleanly and,
    when `expected_frames` is given, with that many frames; it is on disk before it is renamed."""

    def __init__(self, path, fps, width, height, audio_path=None, crf=18, preset="medium", expected_frames=None):
        self.path = path
        self.expected_frames = expected_frames
        folder = os.path.dirname(os.path.abspath(path))
        try:
            os.makedirs(folder, exist_ok=True)
            remove_stale_partials(folder)
            # Created by hand rather than by mkstemp (private, 0o600) so that the umask applies as
            # to any new file, without os.umask's process-wide flip (racy with other threads).
            self.tmp_path = _create_partial(folder)
        except OSError as e:
            raise VideoError("cannot write %s: %s; pass an --outfile in a writable folder" % (path, e.strerror or e))
        self.frames_written = 0
        self.finished = False
        self.container = None
        try:
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
        except BaseException:
            self._discard()
            raise

    def write(self, frame_bgr):
        frame = av.VideoFrame.from_ndarray(frame_bgr, format="bgr24")
        frame.pts = self.frames_written
        self.frames_written += 1
        try:
            self.container.mux(self.stream.encode(frame))
        except av.FFmpegError as e:  # a full disk, for one
            raise VideoError("writing %s failed: %s" % (self.path, e))

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
            try:
                self.container.mux(self.stream.encode(None))
                if self.audio_path is not None:
                    self._mux_audio()
            except av.FFmpegError as e:
                raise VideoError("encoding %s failed: %s" % (self.path, e))

    def _discard(self):
        """Close the container, ignoring its errors (an error is already on its way), and remove the file."""
        try:
            if self.container is not None:
                self.container.close()
        except Exception:
            pass
        finally:
            if os.path.exists(self.tmp_path):
                os.remove(self.tmp_path)

    def _publish(self):
        self.finish()
        try:
            self.container.close()
        except av.FFmpegError as e:
            raise VideoError("encoding %s failed: %s" % (self.path, e))
        if self.expected_frames is not None and self.frames_written != self.expected_frames:
            raise VideoError("wrote %d frames of %s, expected %d; nothing was written"
                             % (self.frames_written, self.path, self.expected_frames))
        fd = os.open(self.tmp_path, os.O_RDONLY)  # on disk before the rename, as checkpoints are
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(self.tmp_path, self.path)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None:
                self._publish()
        finally:
            self._discard()
        return False
