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
import copy
import os
import queue
import sys
import threading
import time
from collections import defaultdict
from contextlib import contextmanager

import cv2
import numpy as np
import torch
from tqdm import tqdm

import audio
import videoio
from hparams import add_hparams_argument, apply_overrides, hparams, parse_bool

MEL_STEP_SIZE = 16
# On the CPU the generator runs at most this many frames at a time: with BatchNorm folded the
# time per frame is the same from 8 to 128, and at 720p the peak memory is 1.15 GB against
# 1.6 GB and more at 128 (the frames of a batch wait, decoded, for their faces).
CPU_GENERATOR_BATCH = 16
DECODE_AHEAD = 8
# x264 presets at CRF 18, encoding the benchmark's 10 s of 720p on 2 idle cores: "medium" 5.1 s,
# 3.4 MB, PSNR 40.9 dB; "veryfast" 2.4 s, 3.1 MB, 40.8 dB; "superfast" 1.4 s, 5.7 MB, 40.9 dB;
# "ultrafast" 0.7 s, 6.2 MB, 40.5 dB.
PRESET, FAST_PRESET = "superfast", "ultrafast"
# uint8 -> float32 exactly as the original's `/ 255.` in float64 followed by FloatTensor.
_UINT8_TO_UNIT = (np.arange(256) / 255.0).astype(np.float32)


class InferenceError(ValueError):
    """Bad input for a lip-sync run; the message is one line naming the fix."""


# --------------------------------------------------------------------------- numeric core
def load_model(path, device="cpu"):
    """A Wav2Lip generator with the weights of `path` (official or our checkpoints), in eval mode."""
    from models import Wav2Lip
    from models.checkpoint import load_weights

    model = Wav2Lip()
    load_weights(model, path, what="Wav2Lip")
    return model.to(device).eval()


def mel_chunk_starts(num_columns, fps):
    """Start column of the 16-column mel window of every output frame (the last one is T - 16)."""
    multiplier = 80.0 / fps
    starts, i = [], 0
    while True:
        start = int(i * multiplier)
        if start + MEL_STEP_SIZE > num_columns:
            starts.append(num_columns - MEL_STEP_SIZE)
            return starts
        starts.append(start)
        i += 1


def mel_chunks(mel, fps):
    """One (80, 16) mel window per output video frame."""
    return [mel[:, s:s + MEL_STEP_SIZE] for s in mel_chunk_starts(mel.shape[1], fps)]


def smooth_boxes(boxes, window=5):
    """The original's forward moving average over box rows, in place on an int array."""
    n = len(boxes)
    for i in range(n):
        span = boxes[n - window:] if i + window > n else boxes[i:i + window]
        boxes[i] = np.mean(span, axis=0)
    return boxes


def face_boxes(detections, frame_shape, pads=(0, 10, 0, 0), nosmooth=False):
    """Paste boxes (N, 4) as y1, y2, x1, x2 from detector boxes x1, y1, x2, y2: padded, clipped, smoothed."""
    top, bottom, left, right = pads
    height, width = frame_shape[:2]
    det = np.asarray(detections, dtype=np.int64).reshape(-1, 4)
    boxes = np.stack([np.maximum(0, det[:, 1] - top), np.minimum(height, det[:, 3] + bottom),
                      np.maximum(0, det[:, 0] - left), np.minimum(width, det[:, 2] + right)], axis=1)
    return boxes if nosmooth else smooth_boxes(boxes)


def face_boxes_with_gaps(detections, frame_shape, pads=(0, 10, 0, 0), nosmooth=False):
    """Like face_boxes for a list where None marks a frame without a face.

    Each run of consecutive detections is padded and smoothed on its own, so a video with a
    face in every frame gets exactly the original's boxes. Returns a list of tuples or None."""
    out = [None] * len(detections)
    start = 0
    while start < len(detections):
        if detections[start] is None:
            start += 1
            continue
        end = start
        while end < len(detections) and detections[end] is not None:
            end += 1
        run = face_boxes(detections[start:end], frame_shape, pads, nosmooth)
        out[start:end] = [tuple(int(v) for v in b) for b in run]
        start = end
    return out


def _model_input(crops, mels, device, dtype):
    faces = _UINT8_TO_UNIT[np.stack(crops)]                       # (B, 96, 96, 3)
    masked = faces.copy()
    masked[:, hparams.img_size // 2:] = 0
    faces = np.concatenate([masked, faces], axis=3).transpose(0, 3, 1, 2)
    mel_batch = np.stack(mels).astype(np.float32)[:, None]        # (B, 1, 80, 16)
    return (torch.from_numpy(mel_batch).to(device, dtype),
            torch.from_numpy(np.ascontiguousarray(faces)).to(device, dtype))


def _usable(box):
    return box is not None and box[1] > box[0] and box[3] > box[2]


def _generate_batch(model, batch, device, dtype, clock):
    """Run the model on the frames of `batch` that have a usable box and paste the results."""
    with_face = [(frame, mel, box) for frame, mel, box in batch if _usable(box)]
    if with_face:
        with clock("generate"):
            crops = [cv2.resize(f[b[0]:b[1], b[2]:b[3]], (hparams.img_size, hparams.img_size))
                     for f, _, b in with_face]
            mel_t, face_t = _model_input(crops, [m for _, m, _ in with_face], device, dtype)
            with torch.inference_mode():
                pred = model(mel_t, face_t)
            # `* 255` then truncation to uint8, as the original does per frame.
            patches = (pred.float().cpu().numpy().transpose(0, 2, 3, 1) * 255.0).astype(np.uint8)
        with clock("paste"):
            for (frame, _, (y1, y2, x1, x2)), patch in zip(with_face, patches):
                frame[y1:y2, x1:x2] = cv2.resize(patch, (x2 - x1, y2 - y1))
    return [frame for frame, _, _ in batch]


def lipsync_stream(model, items, batch_size=128, clock=None, copy_frames=True):
    """Yield output frames for an iterable of (frame, mel window, box or None), in bounded batches.

    Frames are copied before pasting (unless `copy_frames` is False: frames nobody else holds);
    a None (or empty) box passes the frame through unchanged. The model computes in the dtype
    of its weights (reduced precision for --fast: see inference_model); `clock` times stages."""
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    clock = clock or StageClock()
    batch = []
    for frame, mel, box in items:
        batch.append((frame.copy() if copy_frames else np.ascontiguousarray(frame), mel, box))
        if len(batch) == batch_size:
            yield from _generate_batch(model, batch, device, dtype, clock)
            batch = []
    if batch:
        yield from _generate_batch(model, batch, device, dtype, clock)


def lipsync_frames(model, frames, mels, boxes, batch_size=128):
    """Output frames: frame i from frames[i % len(frames)], mels[i] and boxes[i % len(boxes)] (y1, y2, x1, x2)."""
    items = ((frames[i % len(frames)], mels[i], boxes[i % len(boxes)]) for i in range(len(mels)))
    return lipsync_stream(model, items, batch_size)


# --------------------------------------------------------------------------- speed
class StageClock:
    """Seconds spent per named stage: `with clock("detect"): ...`; threads add to their own stages."""

    def __init__(self):
        self.seconds = defaultdict(float)

    @contextmanager
    def __call__(self, stage):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] += time.perf_counter() - start


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
    worker.start()
    try:
        while True:
            item, error = ready.get()
            if error is not None:
                raise error
            if item is _DONE:
                return
            yield item
    finally:
        stop.set()
        worker.join()


def inference_model(model, dtype=None):
    """A copy of the generator for inference: BatchNorm folded into the convolutions, ReLUs in
    place, and channels-last on the CPU (faster there). The same numbers within float32 noise,
    unless `dtype` (--fast: fast_dtype) converts the weights, and so the computation, to less
    precision (converted once, not cast at every call as autocast does)."""
    if any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()):
        model = _folded(model)
    elif dtype is not None and next(model.parameters()).dtype != dtype:
        model = copy.deepcopy(model)
    return model if dtype is None else model.to(dtype)


def _folded(model):
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    fused = copy.deepcopy(model).eval()
    for module in fused.modules():
        block = getattr(module, "conv_block", None)
        if isinstance(block, torch.nn.Sequential) and len(block) == 2 and isinstance(block[1], torch.nn.BatchNorm2d):
            transpose = isinstance(block[0], torch.nn.ConvTranspose2d)
            module.conv_block = torch.nn.Sequential(fuse_conv_bn_eval(block[0], block[1], transpose))
        if isinstance(module, torch.nn.ReLU):
            module.inplace = True
    if next(fused.parameters()).device.type == "cpu":
        fused = fused.to(memory_format=torch.channels_last)
    return fused


@contextmanager
def full_float32(enabled=True):
    """Convolutions and matrix products in full float32 on CUDA (TF32 off) while inside.

    PyTorch lets cuDNN use TF32 (10-bit mantissas) by default, which exceeds the conformance
    tolerances; the original's GPUs had no TF32."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    if enabled:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def fast_dtype(device):
    """Reduced precision for --fast: bfloat16 on CPUs with native support, float16 on CUDA."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return torch.bfloat16
    return None


# --------------------------------------------------------------------------- pipeline
def best_device():
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def load_speech(path):
    """16 kHz samples of `path`, with the original's detour through a 16-bit wav for non-wav input."""
    try:
        wav = audio.load_wav(path, hparams.sample_rate, as_int16=not path.lower().endswith(".wav"))
    except audio.AudioError as e:
        raise InferenceError(str(e))
    if len(wav) < (MEL_STEP_SIZE - 1) * hparams.hop_size:
        raise InferenceError("audio %s is %.3f s long, shorter than one video frame's mel window "
                             "(0.2 s); pass longer speech as --audio" % (path, len(wav) / hparams.sample_rate))
    return wav


class FaceSource:
    """The --face input as a re-readable stream of prepared frames (an image is a 1-frame video)."""

    def __init__(self, path, static=False, fps=25.0, resize_factor=1, rotate=False, crop=(0, -1, 0, -1)):
        if not os.path.isfile(path):
            raise InferenceError("face file not found: %s; pass a video or an image as --face" % path)
        self.path = path
        self.image = videoio.read_image(path) if videoio.is_image(path) else None
        self.static = static or self.image is not None
        self.fps = fps if self.image is not None else videoio.video_fps(path)
        self.prepare = dict(resize_factor=resize_factor, rotate=rotate, crop=crop)

    def frames(self):
        """Prepared frames of one pass over the input (just the first one when static)."""
        raw = [self.image] if self.image is not None else videoio.read_frames(self.path)
        for frame in raw:
            frame = videoio.prepare_frame(frame, **self.prepare)
            if frame.size == 0:
                raise InferenceError("--crop leaves an empty frame for %s" % self.path)
            yield frame
            if self.static:
                return

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


def detect_faces(source, detector, count, batch_size, progress=True, clock=None):
    """Detector boxes (x1, y1, x2, y2) or None for the first `count` input frames; also the frame shape."""
    detections, batch, shape = [], [], None
    clock = clock or StageClock()
    bar = tqdm(total=1 if source.static else count, desc="face detection", unit="frame", disable=not progress)

    def flush():
        with clock("detect"):
            detections.extend(detector.detect(batch))
        bar.update(len(batch))
        batch.clear()

    for frame in in_background(timed(source.frames(), clock, "decode"), DECODE_AHEAD):
        if shape is None:
            shape = frame.shape
        elif frame.shape != shape:
            raise InferenceError("frame size changes inside %s; re-encode it at one size" % source.path)
        batch.append(frame)
        if len(batch) == batch_size:
            flush()
        if len(detections) + len(batch) == count:
            break
    if batch:
        flush()
    bar.close()
    if shape is None:
        raise InferenceError("%s has no decodable video frames" % source.path)
    return detections, shape


def find_faces(source, detector, count, batch_size, progress, clock, cache=None):
    """detect_faces through the detection cache, when one is given and the detector names itself."""
    detector_key = getattr(detector, "cache_key", None)
    if cache is None or detector_key is None or source.image is not None:
        return detect_faces(source, detector, count, batch_size, progress, clock)
    settings = {"detector": detector_key, "batch_size": batch_size, "static": source.static, **source.prepare}
    with clock("detect"):
        key = cache.key(source.path, settings)
        hit = cache.load(key, count)
    if hit is not None:
        return hit
    detections, shape = detect_faces(source, detector, count, batch_size, progress, clock)
    cache.save(key, detections, shape, complete=len(detections) < count)
    return detections, shape


def lipsync_video(model, face_path, audio_path, outfile, detector=None, *, static=False, fps=25.0,
                  pads=(0, 10, 0, 0), face_det_batch_size=16, wav2lip_batch_size=128, resize_factor=1,
                  crop=(0, -1, 0, -1), box=(-1, -1, -1, -1), rotate=False, nosmooth=False,
                  on_no_face="pass", progress=True, fast=False, cache_dir=None):
    """Write the lip-synced video to `outfile` (atomically) and return a dict of run statistics.

    `fast` trades exactness for speed (see face_detection/fast.py; the generator in reduced
    precision, a faster encoder preset); `cache_dir` keeps detections per video for later runs.
    The statistics include "seconds" per stage (decode, detect, mel, generate, paste, encode),
    which overlap: decoding and generation run in threads beside the encoder."""
    clock = StageClock()
    source = FaceSource(face_path, static, fps, resize_factor, rotate, crop)
    with clock("mel"):
        mel = audio.melspectrogram(load_speech(audio_path))
    if np.isnan(mel).any():
        raise InferenceError("the mel spectrogram of %s contains NaN; re-encode the audio as 16 kHz wav" % audio_path)
    windows = mel_chunks(mel, source.fps)
    count = len(windows)
    with full_float32(enabled=not fast):  # no TF32 on CUDA: the original's float32 numbers
        if box[0] == -1:
            detections, shape = _detections(source, detector, count, face_det_batch_size, progress, clock, fast,
                                            cache_dir)
            boxes = face_boxes_with_gaps(detections, shape, pads, nosmooth)
        else:
            first = next(source.frames(), None)
            if first is None:
                raise InferenceError("%s has no decodable video frames" % face_path)
            shape, boxes = first.shape, [tuple(box)]
        missing = sum(b is None for b in boxes)
        if missing and on_no_face == "error":
            raise InferenceError("no face found in frame %d of %s (%d frames without a face); check the video or "
                                 "pass --box, or drop --on_no_face error" % (boxes.index(None), face_path, missing))
        if missing == len(boxes):
            raise InferenceError("no face found in any frame of %s; pass --box top bottom left right" % face_path)
        _render(model, source, windows, boxes, shape, outfile, audio_path, wav2lip_batch_size, fast, progress, clock)
    height, width = shape[:2]
    frames_without_face = sum(boxes[i % len(boxes)] is None for i in range(count))
    return {"outfile": outfile, "frames": count, "fps": source.fps, "width": width, "height": height,
            "input_frames_without_face": missing, "output_frames_without_face": frames_without_face,
            "seconds": dict(clock.seconds)}


def _detections(source, detector, count, batch_size, progress, clock, fast, cache_dir):
    if detector is None:
        raise InferenceError("no face detector given and no --box")
    from face_detection.cache import DetectionCache
    from face_detection.fast import FAST_BATCH, FAST_SHORT_SIDE, FastDetector
    from face_detection.s3fd import S3FDDetector

    if fast:  # S3FD gets small copies of the frames; other detectors choose their own size
        detector = FastDetector(detector, FAST_SHORT_SIDE if isinstance(detector, S3FDDetector) else None)
        batch_size = max(batch_size, FAST_BATCH)
    cache = DetectionCache(cache_dir) if cache_dir else None
    return find_faces(source, detector, count, batch_size, progress, clock, cache)


def _render(model, source, windows, boxes, shape, outfile, audio_path, batch_size, fast, progress, clock):
    """Generate, paste and encode every output frame, streaming."""
    device = next(model.parameters()).device
    generator = inference_model(model, fast_dtype(device) if fast else None)
    if device.type == "cpu":
        batch_size = min(batch_size, CPU_GENERATOR_BATCH)
    count = len(windows)
    height, width = shape[:2]
    # Decoded frames wait a few at a time; generated ones a batch, so that the encoder has work
    # while the next batch is generated.
    frames = in_background(timed(source.cycle(count), clock, "decode"), DECODE_AHEAD)
    items = ((frame, windows[i], boxes[index % len(boxes)]) for i, (index, frame) in enumerate(frames))
    # A video's frames are decoded afresh for every use; an image's one frame is reused.
    outputs = in_background(lipsync_stream(generator, items, batch_size, clock, copy_frames=source.image is not None),
                            batch_size)
    with videoio.VideoWriter(outfile, source.fps, width, height, audio_path=audio_path,
                             preset=FAST_PRESET if fast else PRESET) as writer:
        bar = tqdm(total=count, desc="lip-sync", unit="frame", disable=not progress)
        for frame in outputs:
            with clock("encode"):
                writer.write(frame)
            bar.update(1)
        bar.close()
        written = writer.frames_written
        with clock("encode"):
            writer.finish()
    if written != count:
        raise InferenceError("wrote %d frames, expected %d" % (written, count))


# --------------------------------------------------------------------------- command line
def build_parser():
    p = argparse.ArgumentParser(description="Lip-sync a face video or image to speech with Wav2Lip.")
    p.add_argument("--checkpoint_path", required=True, help="Wav2Lip checkpoint (wav2lip.pth or wav2lip_gan.pth)")
    p.add_argument("--face", required=True, help="video or image with the face to animate")
    p.add_argument("--audio", required=True, help="speech: any audio file, or a video whose audio track is used")
    p.add_argument("--outfile", default="results/result_voice.mp4", help="output mp4")
    # The original declared --static with type=bool: accept `--static`, `--static True`, `--static 0`.
    p.add_argument("--static", type=parse_bool, nargs="?", const=True, default=False,
                   help="use only the first frame of the video")
    p.add_argument("--fps", type=float, default=25.0, help="output fps for an image --face")
    p.add_argument("--pads", nargs=4, type=int, default=[0, 10, 0, 0], metavar=("TOP", "BOTTOM", "LEFT", "RIGHT"),
                   help="padding of the detected face box (include the chin: bottom at least 10)")
    p.add_argument("--face_det_batch_size", type=int, default=16)
    p.add_argument("--wav2lip_batch_size", type=int, default=128)
    p.add_argument("--resize_factor", type=int, default=1, help="divide the frame size by this first")
    p.add_argument("--crop", nargs=4, type=int, default=[0, -1, 0, -1], metavar=("TOP", "BOTTOM", "LEFT", "RIGHT"),
                   help="crop the frames (after resize and rotate); -1 means to the edge")
    p.add_argument("--box", nargs=4, type=int, default=[-1, -1, -1, -1], metavar=("TOP", "BOTTOM", "LEFT", "RIGHT"),
                   help="fixed face box for every frame instead of detection")
    p.add_argument("--rotate", action="store_true", help="rotate frames 90 degrees clockwise")
    p.add_argument("--nosmooth", action="store_true", help="do not smooth face boxes over 5 frames")
    p.add_argument("--on_no_face", choices=("pass", "error"), default="pass",
                   help="frames without a face: pass them through unchanged, or stop with an error")
    p.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")
    p.add_argument("--s3fd_path", default=None, help="S3FD weights (default face_detection/detection/sfd/s3fd.pth)")
    p.add_argument("--fast", action="store_true",
                   help="faster, not exact: detection on small keyframes, reduced-precision generator")
    p.add_argument("--cache_dir", default=None,
                   help="where face detections are kept per video (default: the user's cache folder)")
    p.add_argument("--no_cache", action="store_true", help="neither read nor keep cached face detections")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_hparams_argument(p)
    return p


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    apply_overrides(args, parser)
    from models.checkpoint import CheckpointError

    device = args.device or best_device()
    try:
        model = inference_model(load_model(args.checkpoint_path, device))  # not kept unfused: 145 MB
        detector, cache_dir = None, None
        if args.box[0] == -1:  # imported only then: face-alignment takes a quarter second
            from face_detection import load_detector
            from face_detection.cache import default_folder

            detector = load_detector(args.s3fd_path, device)
            cache_dir = None if args.no_cache else args.cache_dir or default_folder()
        stats = lipsync_video(model, args.face, args.audio, args.outfile, detector, static=args.static,
                              fps=args.fps, pads=args.pads, face_det_batch_size=args.face_det_batch_size,
                              wav2lip_batch_size=args.wav2lip_batch_size, resize_factor=args.resize_factor,
                              crop=args.crop, box=args.box, rotate=args.rotate, nosmooth=args.nosmooth,
                              on_no_face=args.on_no_face, progress=not args.quiet, fast=args.fast,
                              cache_dir=cache_dir)
    except (InferenceError, videoio.VideoError, audio.AudioError, CheckpointError) as e:
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
