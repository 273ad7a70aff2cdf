"""Lip-sync a face video (or image) to any speech with a Wav2Lip checkpoint.

    python inference.py --checkpoint_path checkpoints/wav2lip_gan.pth --face video.mp4 --audio speech.wav

The numeric path (mel windows, face boxes, model input and paste) is the original's; the
pipeline streams: boxes are found in a first pass that keeps only the boxes (and caches them
per video), frames are decoded again, generated, pasted and encoded in bounded batches, so
memory does not grow with the video's length. Decoding, detection or generation, and encoding
overlap in threads joined by bounded queues. Frames without a face pass through unchanged
unless --on_no_face error is given. --fast trades exactness for speed (see lipsync_video).
"""
import argparse
import os
import queue
import signal
import sys
import threading
from contextlib import closing

import numpy as np
from tqdm import tqdm

import audio
import options as sync_options
import videoio
from hparams import add_hparams_argument, apply_overrides, hparams
# The numeric core, shared with live/, under its public inference.* names.
from lipsync import (MEL_STEP_SIZE, StageClock, best_device, face_boxes, face_boxes_with_gaps, face_crop,  # noqa: F401
                     fast_dtype, full_float32, generate, generate_batch, inference_model, lipsync_frames,
                     lipsync_stream, load_model, mel_chunk_starts, mel_chunks, model_input, paste, smooth_boxes,
                     usable)
from options import OptionsError, SyncOptions
# On the CPU the generator runs at most this many frames at a time: with BatchNorm folded the
# time per frame is the same from 8 to 128, and at 720p the peak memory is 1.15 GB against
# 1.6 GB and more at 128 (the frames of a batch wait, decoded, for their faces).
CPU_GENERATOR_BATCH = 16


def generator_batch_size(requested, device):
    """Frames the generator takes per call on `device`: `requested`, at most CPU_GENERATOR_BATCH on the CPU."""
    return min(requested, CPU_GENERATOR_BATCH) if device.type == "cpu" else requested


DECODE_AHEAD = 8
# x264 presets at CRF 18, encoding the benchmark's 10 s of 720p on 2 idle cores: "medium" 5.1 s,
# 3.4 MB, PSNR 40.9 dB; "veryfast" 2.4 s, 3.1 MB, 40.8 dB; "superfast" 1.4 s, 5.7 MB, 40.9 dB;
# "ultrafast" 0.7 s, 6.2 MB, 40.5 dB.
PRESET, FAST_PRESET = "superfast", "ultrafast"


class InferenceError(ValueError):
    """Bad input for a lip-sync run; the message is one line naming the fix."""


class _StageReport:
    """tqdm's update/close for a `progress(stage, done, total)` callable (the server's jobs)."""

    def __init__(self, report, stage, total):
        self.report, self.stage, self.total, self.done = report, stage, total, 0
        report(stage, 0, total)

    def update(self, n):
        self.done += n
        self.refresh()

    def refresh(self):
        self.report(self.stage, self.done, self.total)

    def close(self):
        pass


def progress_bar(progress, stage, total, desc):
    """A tqdm bar when `progress` is true, none when false, or reports to a callable."""
    if callable(progress):
        return _StageReport(progress, stage, total)
    return tqdm(total=total, desc=desc, unit="frame", disable=not progress)


# --------------------------------------------------------------------------- streaming
def timed(iterable, clock, stage):
    """`iterable`, with the time spent producing its items added to `stage`."""
    iterator = iter(iterable)
    while True:
        with clock(stage):
            item = next(iterator, StopIteration)
        if item is StopIteration:
            return
        yield item


_DONE = object()


def in_background(iterable, depth):
    """Iterate `iterable` in a worker thread, at most `depth` items ahead (errors re-raised here).

    Decoding, generation and encoding overlap this way; numpy, torch, OpenCV and ffmpeg release
    the GIL while they work."""
    ready = queue.Queue(depth)
    stop = threading.Event()

    def put(item):
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def work():
        try:
            for item in iterable:
                if not put((item, None)):
                    break
            else:
                put((_DONE, None))
        except BaseException as error:  # handed to the consumer, which raises it
            put((_DONE, error))
        finally:
            if hasattr(iterable, "close"):
                iterable.close()

    worker = threading.Thread(target=work, daemon=True)
    try:
        worker.start()  # inside the try: a signal can land while the thread starts
        while True:
            item, error = ready.get()
            if error is not None:
                raise error
            if item is _DONE:
                return
            yield item
    finally:
        stop.set()
        if worker.ident is not None:  # it started
            worker.join()


# --------------------------------------------------------------------------- pipeline
def load_speech(path):
    """16 kHz samples of `path`, with the original's detour through a 16-bit wav for non-wav input."""
    try:
        wav = audio.load_wav(path, hparams.sample_rate, as_int16=not path.lower().endswith(".wav"))
    except audio.AudioError as e:
        raise InferenceError(str(e))
    if len(wav) < (MEL_STEP_SIZE - 1) * audio.hop_size():
        raise InferenceError("audio %s is %.3f s long, shorter than one video frame's mel window "
                             "(0.2 s); pass longer speech as --audio" % (path, len(wav) / hparams.sample_rate))
    return wav


class FaceSource:
    """The --face input as a re-readable stream of prepared frames (an image is a 1-frame video)."""

    def __init__(self, path, options=SyncOptions()):
        if not os.path.isfile(path):
            raise InferenceError("face file not found: %s; pass a video or an image as --face" % path)
        self.path = path
        self.image = videoio.read_image(path) if videoio.is_image(path) else None
        self.static = options.static or self.image is not None
        self.fps = options.fps if self.image is not None else videoio.video_fps(path)
        self.prepare = options.prepare
        self._still = None

    def frames(self):
        """Prepared frames of one pass over the input (just the first one when static)."""
        if self.static:
            yield self.still()
            return
        for frame in videoio.read_frames(self.path):
            yield self._prepared(frame)

    def still(self):
        """The one prepared frame of a static input, decoded once (not once per output frame)."""
        if self._still is None:
            raw = self.image if self.image is not None else videoio.first_frame(self.path)
            if raw is None:
                raise InferenceError("%s has no decodable video frames" % self.path)
            self._still = self._prepared(raw)
        return self._still

    def _prepared(self, frame):
        frame = videoio.prepare_frame(frame, **self.prepare)
        if frame.size == 0:
            raise InferenceError("--crop leaves an empty frame for %s" % self.path)
        return frame

    def cycle(self, count):
        """(source index, frame) for `count` output frames, reusing the input cyclically."""
        produced = 0
        while produced < count:
            index = -1
            for index, frame in enumerate(self.frames()):
                yield index, frame
                produced += 1
                if produced == count:
                    return
            if index < 0:
                raise InferenceError("%s has no decodable video frames" % self.path)


def detection_span(source, count, batch_size):
    """How many frames are detected for `count` output frames: whole batches (1 when static)."""
    return 1 if source.static else -(-count // batch_size) * batch_size


def detect_faces(source, detector, count, batch_size, progress=True, clock=None, check_first=None):
    """Every face of the first input frames ([(x1, y1, x2, y2, score), ...] per frame, best first),
    in whole batches of `batch_size` covering at least `count` frames (fewer only at the end of
    the video), so that a frame's faces never depend on `count` (S3FD's ties and --fast's
    keyframes depend on the batch); also the frame shape. `check_first(faces, shape)` sees the
    first frame's faces as soon as they are known."""
    from face_detection.select import all_faces_of

    detections, batch, shape = [], [], None
    clock = clock or StageClock()
    target = detection_span(source, count, batch_size)
    bar = progress_bar(progress, "detect", target, "face detection")

    def flush():
        first = not detections
        with clock("detect"):
            detections.extend(all_faces_of(detector, batch))
        bar.update(len(batch))
        batch.clear()
        if first and check_first is not None:
            check_first(detections[0], shape)

    # Closed here, not by the garbage collector, so that an error stops the decoder thread at once.
    with closing(in_background(timed(source.frames(), clock, "decode"), DECODE_AHEAD)) as frames:
        for frame in frames:
            if shape is None:
                shape = frame.shape
            elif frame.shape != shape:
                raise InferenceError("frame size changes inside %s; re-encode it at one size" % source.path)
            batch.append(frame)
            if len(batch) == batch_size:
                flush()
            if len(detections) + len(batch) == target:
                break
    if batch:
        flush()
    if len(detections) < target:  # the video ended before the last whole batch
        bar.total = len(detections)
        bar.refresh()
    bar.close()
    if shape is None:
        raise InferenceError("%s has no decodable video frames" % source.path)
    return detections, shape


def find_faces(source, detector, count, batch_size, progress, clock, cache=None, check_first=None):
    """The faces of the first `count` frames (see detect_faces) through the detection cache, when
    one is given and the detector names itself; a cached prefix equals a fresh detection."""
    detector_key = getattr(detector, "cache_key", None)
    if cache is None or detector_key is None or source.image is not None:
        detections, shape = detect_faces(source, detector, count, batch_size, progress, clock, check_first)
        return detections[:count], shape
    settings = {"detector": detector_key, "batch_size": batch_size, "static": source.static, **source.prepare}
    with clock("detect"):
        key = cache.key(source.path, settings)
        hit = cache.load(key, count)
    if hit is not None:
        if check_first is not None:
            check_first(hit[0][0], hit[1])
        return hit
    detections, shape = detect_faces(source, detector, count, batch_size, progress, clock, check_first)
    span = detection_span(source, count, batch_size)
    cache.save(key, detections, shape, complete=source.static or len(detections) < span)
    return detections[:count], shape


def lipsync_video(model, face_path, audio_path, outfile, detector=None, options=SyncOptions(), *, progress=True,
                  cache_dir=None):
    """Write the lip-synced video to `outfile` (atomically) and return a dict of run statistics.

    `options` (a SyncOptions) shapes the run; `options.fast` trades exactness for speed (see
    face_detection/fast.py; the generator in reduced precision, a faster encoder preset);
    `cache_dir` keeps detections per video for later runs. The statistics include "seconds" per
    stage (decode, detect, mel, generate, paste, encode), which overlap: decoding and generation
    run in threads beside the encoder. `progress`: tqdm bars (True), none (False), or a callable
    `progress(stage, done, total)` with stage "detect" or "lipsync" (an exception it raises
    stops the run, leaving no output)."""
    try:
        options.validate()
    except OptionsError as e:
        raise InferenceError(str(e))
    videoio.check_output(outfile)
    clock = StageClock()
    source = FaceSource(face_path, options)
    with clock("mel"):
        mel = audio.melspectrogram(load_speech(audio_path))
    if np.isnan(mel).any():
        raise InferenceError("the mel spectrogram of %s contains NaN; re-encode the audio as 16 kHz wav" % audio_path)
    windows = mel_chunks(mel, source.fps)
    count = len(windows)
    with full_float32(enabled=not options.fast):  # no TF32 on CUDA: the original's float32 numbers
        boxes, shape = input_boxes(source, detector, count, options, progress, clock, cache_dir)
        missing = sum(b is None for b in boxes)
        if missing and options.on_no_face == "error":
            raise InferenceError("no face found in frame %d of %s (%d frames without a face); check the video or "
                                 "pass --box, or drop --on_no_face error" % (boxes.index(None), face_path, missing))
        if missing == len(boxes):
            raise InferenceError("no face found in any frame of %s; pass --box top bottom left right" % face_path)
        _render(model, source, windows, boxes, shape, outfile, audio_path, options, progress, clock)
    height, width = shape[:2]
    frames_without_face = sum(boxes[i % len(boxes)] is None for i in range(count))
    return {"outfile": outfile, "frames": count, "fps": source.fps, "width": width, "height": height,
            "input_frames_without_face": missing, "output_frames_without_face": frames_without_face,
            "seconds": dict(clock.seconds)}


def input_boxes(source, detector, count, options=SyncOptions(), progress=True, clock=None, cache_dir=None):
    """Paste boxes (y1, y2, x1, x2, or None without a face) of the first `count` input frames, and
    the frame shape: detected (every face, through the cache in `cache_dir`), the face that
    options.face_select chooses, padded and smoothed; or the fixed --box (one box for every frame)."""
    clock = clock or StageClock()
    if options.detect:
        from face_detection.select import SelectionError, check_first, select_faces

        def check(faces, shape):
            try:
                check_first(options.face_select, faces, shape)
            except SelectionError as e:
                raise InferenceError("%s (%s)" % (e, source.path))

        faces, shape = _detections(source, detector, count, options, progress, clock, cache_dir, check)
        chosen = select_faces(options.face_select, faces, shape)
        return face_boxes_with_gaps(chosen, shape, options.pads, options.nosmooth), shape
    with closing(source.frames()) as frames:
        first = next(frames, None)
    if first is None:
        raise InferenceError("%s has no decodable video frames" % source.path)
    return [fixed_box(options.box, first.shape)], first.shape


def fixed_box(box, shape):
    """--box (y1, y2, x1, x2) clipped to a frame of `shape`, with a notice when it had to be;
    InferenceError when no pixel of it is inside the frame."""
    height, width = shape[:2]
    top, bottom, left, right = box
    clipped = (min(top, height), min(bottom, height), min(left, width), min(right, width))
    if not usable(clipped):
        raise InferenceError("--box %s is outside the %dx%d frame; give top bottom left right inside it"
                             % (" ".join(map(str, box)), width, height))
    if clipped != tuple(box):
        print("--box %s reaches outside the %dx%d frame: clipped to %s" % (" ".join(map(str, box)), width, height,
                                                                           " ".join(map(str, clipped))),
              file=sys.stderr)
    return clipped


def _detections(source, detector, count, options, progress, clock, cache_dir, check_first=None):
    if detector is None:
        raise InferenceError("no face detector given and no --box")
    from face_detection.cache import DetectionCache
    from face_detection.fast import FAST_BATCH, FAST_SHORT_SIDE, FastDetector
    from face_detection.s3fd import S3FDDetector

    batch_size = options.face_det_batch_size
    if options.fast:  # S3FD gets small copies of the frames; other detectors choose their own size
        detector = FastDetector(detector, FAST_SHORT_SIDE if isinstance(detector, S3FDDetector) else None)
        batch_size = max(batch_size, FAST_BATCH)
    cache = DetectionCache(cache_dir) if cache_dir and _writable_cache(cache_dir) else None
    return find_faces(source, detector, count, batch_size, progress, clock, cache, check_first)


_UNWRITABLE_CACHES = set()


def _writable_cache(folder):
    """Whether detections can be kept in `folder`; a notice, once per folder, when they cannot."""
    try:
        os.makedirs(folder, exist_ok=True)
        if os.access(folder, os.W_OK | os.X_OK):
            return True
        reason = "not writable"
    except OSError as e:
        reason = e.strerror or str(e)
    if folder not in _UNWRITABLE_CACHES:
        _UNWRITABLE_CACHES.add(folder)
        print("face detection: cannot keep detections in %s (%s); running without the cache (pass a writable "
              "--cache_dir or --no_cache)" % (folder, reason), file=sys.stderr)
    return False


def _render(model, source, windows, boxes, shape, outfile, audio_path, options, progress, clock):
    """Generate, paste and encode every output frame, streaming."""
    device = next(model.parameters()).device
    generator = inference_model(model, fast_dtype(device) if options.fast else None)
    batch_size = generator_batch_size(options.wav2lip_batch_size, device)
    count = len(windows)
    height, width = shape[:2]
    # Decoded frames wait a few at a time; generated ones a batch, so that the encoder has work
    # while the next batch is generated.
    frames = in_background(timed(source.cycle(count), clock, "decode"), DECODE_AHEAD)
    items = ((frame, windows[i], boxes[index % len(boxes)]) for i, (index, frame) in enumerate(frames))
    # A video's frames are decoded afresh for every use; a static input's one frame is reused.
    outputs = in_background(lipsync_stream(generator, items, batch_size, clock, copy_frames=source.static,
                                           options=options), batch_size)
    # Both threads are stopped and joined on leaving, the consumer's first: an error stops them at once.
    with closing(frames), closing(outputs), videoio.VideoWriter(
            outfile, source.fps, width, height, audio_path=audio_path, preset=FAST_PRESET if options.fast else PRESET,
            expected_frames=count) as writer:
        bar = progress_bar(progress, "lipsync", count, "lip-sync")
        for frame in outputs:
            with clock("encode"):
                writer.write(frame)
            bar.update(1)
        bar.close()
        with clock("encode"):
            writer.finish()


# --------------------------------------------------------------------------- command line
def build_parser():
    p = argparse.ArgumentParser(description="Lip-sync a face video or image to speech with Wav2Lip.")
    p.add_argument("--checkpoint_path", required=True, help="Wav2Lip checkpoint (wav2lip.pth or wav2lip_gan.pth)")
    p.add_argument("--face", required=True, help="video or image with the face to animate")
    p.add_argument("--audio", required=True, help="speech: any audio file, or a video whose audio track is used")
    p.add_argument("--outfile", default="results/result_voice.mp4", help="output mp4")
    sync_options.add_arguments(p)
    p.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")
    p.add_argument("--s3fd_path", default=None, help="S3FD weights (default face_detection/detection/sfd/s3fd.pth)")
    p.add_argument("--cache_dir", default=None,
                   help="where face detections are kept per video (default: the user's cache folder)")
    p.add_argument("--no_cache", action="store_true", help="neither read nor keep cached face detections")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_hparams_argument(p)
    return p


class Interrupted(BaseException):
    """SIGINT or SIGTERM: raised in the main thread, so that every `with` and `finally` cleans up."""

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum


def _interrupt(signum, frame):
    raise Interrupted(signum)


def main(argv=None):
    handled = (signal.SIGINT, signal.SIGTERM)
    if threading.current_thread() is not threading.main_thread():  # only the main thread gets signals
        return _run(argv)
    previous = [signal.signal(s, _interrupt) for s in handled]
    try:
        return _run(argv)
    except Interrupted as e:
        print("error: stopped by %s; no output written" % signal.Signals(e.signum).name, file=sys.stderr)
        return 128 + e.signum  # the shell's convention: 130 for Ctrl-C, 143 for SIGTERM
    finally:
        for s, handler in zip(handled, previous):
            signal.signal(s, handler)


def _run(argv):
    parser = build_parser()
    args = parser.parse_args(argv)
    apply_overrides(args, parser)
    from models.checkpoint import CheckpointError

    device = args.device or best_device()
    options = SyncOptions.from_args(args)
    try:
        options.validate()
        videoio.check_output(args.outfile)
        model = inference_model(load_model(args.checkpoint_path, device))  # not kept unfused: 145 MB
        detector, cache_dir = None, None
        if options.detect:  # imported only then: face-alignment takes a quarter second
            from face_detection import load_detector
            from face_detection.cache import default_folder

            detector = load_detector(args.s3fd_path, device)
            cache_dir = None if args.no_cache else args.cache_dir or default_folder()
        stats = lipsync_video(model, args.face, args.audio, args.outfile, detector, options,
                              progress=not args.quiet, cache_dir=cache_dir)
    except (InferenceError, OptionsError, videoio.VideoError, audio.AudioError, CheckpointError) as e:
        print("error: %s" % e, file=sys.stderr)
        return 1
    print("wrote %s: %d frames at %.3f fps, %dx%d" % (stats["outfile"], stats["frames"], stats["fps"],
                                                     stats["width"], stats["height"]))
    if stats["output_frames_without_face"]:
        print("%d of %d output frames had no face and were passed through unchanged"
              % (stats["output_frames_without_face"], stats["frames"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
