"""The numeric core of Wav2Lip inference, shared by `inference.py` (files) and `live/` (streams):
mel windows, face boxes, model input, generation and paste, each the original's numbers.

Nothing here reads files or parses arguments; `inference` re-exports these names.
"""
import copy
import functools
import threading
import time
import warnings
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import lru_cache

import cv2
import numpy as np
import torch

import audio
from hparams import hparams

MEL_STEP_SIZE = 16
SMOOTH_WINDOW = 5
# uint8 -> float32 exactly as the original's `/ 255.` in float64 followed by FloatTensor.
_UINT8_TO_UNIT = (np.arange(256) / 255.0).astype(np.float32)


# --------------------------------------------------------------------------- compute thread
# PyTorch's CPU threads are an OpenMP team per calling thread; libgomp keeps every team's
# workers, and once they outnumber the cores it stops spinning between parallel regions. On
# 2 cores a second thread's torch work made both threads' int8 generator run at 1.1-1.5 cores
# (38-53 against 21-25 ms per face, measured); all of it on one thread ran at 2.0. So the model
# is loaded, prepared and run on this one thread, whatever thread (a live session's reader,
# a server's pacer) asks.
_compute = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wav2lip-compute")
_on_compute = threading.local()


def on_compute_thread(fn, *args, **kwargs):
    """fn(*args, **kwargs) run on the process's one compute thread; its result or exception."""
    if getattr(_on_compute, "active", False):
        return fn(*args, **kwargs)
    return _compute.submit(_marked, fn, args, kwargs).result()


def _marked(fn, args, kwargs):
    _on_compute.active = True
    return fn(*args, **kwargs)


# --------------------------------------------------------------------------- model
def load_model(path, device="cpu"):
    """A Wav2Lip generator with the weights of `path` (official or our checkpoints), in eval
    mode; built on the compute thread. On the CPU, OpenCV then runs on its calling threads."""
    return on_compute_thread(_load_model, path, device)


def _load_model(path, device):
    from models import Wav2Lip
    from models.checkpoint import load_weights

    if torch.device(device).type == "cpu":
        # The generator's threads take every core. OpenCV's pool, woken for a face's resize,
        # then spins beside them: live at 480p, int8, 2 cores, generation took 32.6-37.1 ms a
        # frame and 117-652 frames a minute were late, against 30.1-30.4 ms and 3-27 with
        # OpenCV on the calling thread (measured, alternating runs).
        cv2.setNumThreads(1)
    model = Wav2Lip()
    load_weights(model, path, what="Wav2Lip")
    return model.to(device).eval()


def inference_model(model, dtype=None):
    """A copy of the generator for inference: BatchNorm folded into the convolutions, ReLUs in
    place, and channels-last on the CPU (faster there). The same numbers within float32 noise,
    unless `dtype` (--fast: fast_dtype) converts the weights, and so the computation, to less
    precision (converted once, not cast at every call as autocast does); torch.qint8 gives
    int8_generator's model. Made on the compute thread."""
    return on_compute_thread(_inference_model, model, dtype)


def _inference_model(model, dtype):
    if dtype == torch.qint8:
        return int8_generator(model)
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
    """Reduced precision for --fast: float16 on CUDA, bfloat16 on CPUs with bfloat16
    instructions, int8 (torch.qint8: int8_generator) on other x86 CPUs, else None (float32)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu" and native_cpu_bfloat16():
        return torch.bfloat16
    if device.type == "cpu" and "x86" in torch.backends.quantized.supported_engines:
        return torch.qint8
    return None


@functools.lru_cache(maxsize=None)
def native_cpu_bfloat16():
    """Whether the CPU computes bfloat16 in hardware (AVX512-BF16 or AMX on x86, BF16 on Arm).

    oneDNN also accepts plain AVX-512 CPUs, where it emulates bfloat16: measured on such a
    Xeon (2.8 GHz, one thread, batch 4), the generator took 280-300 CPU ms per face against
    107-113 ms in float32."""
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return False
    flags = cpu_flags()
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"}) if flags else True  # not Linux: trust oneDNN


@functools.lru_cache(maxsize=None)
def cpu_flags():
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            return frozenset(f.read().split())
    except OSError:
        return frozenset()


# Kept out of int8_generator's static quantization: the first two decoder stages (the audio
# embedding's 1x1 and 3x3 maps, 8% of the weights, 1% of the work) carried most of its error.
# Measured on GRID faces with the deterministic weights of seeds 11 and 12, mouth region against
# float32: everything static int8, mean 3.7 levels, p99 15, max 39-51; these two in float32, mean
# 1.6-2.1, p99 6-8, max 13-22; also keeping the audio encoder or the deepest face stages changed
# nothing. They run as matrix products with int8 weights and activations scaled per call
# (dynamic quantization): the same error (mean 1.71-1.80 against 1.72-1.81 in float32, seed 11),
# a quarter of float32's 29 MB of weights to read per face, 1.0 ms a face faster (measured).
INT8_DYNAMIC_STAGES = ("generator.face_decoder_blocks.0", "generator.face_decoder_blocks.1")
INT8_CALIBRATION_SIZE = 16


class SubPixelConvTranspose2d(torch.nn.Module):
    """A ConvTranspose2d(kernel 3, stride 2, padding 1, output_padding 1) as one 2x2 convolution
    of its input into the four output phases, interleaved: the same sums (a float32 copy agrees
    within 1e-6), without the zero-stuffed taps; 13% faster in int8 (x86, batch 1)."""

    TAPS = {(0, 0): 1, (1, 0): 2, (1, 1): 0}  # (output phase, input offset) -> kernel index

    def __init__(self, transposed):
        super().__init__()
        t = transposed
        assert (t.kernel_size, t.stride, t.padding, t.output_padding) == ((3, 3), (2, 2), (1, 1), (1, 1))
        weight = t.weight.new_zeros(2, 2, t.out_channels, t.in_channels, 2, 2)
        for (ry, dy), ky in self.TAPS.items():
            for (rx, dx), kx in self.TAPS.items():
                weight[ry, rx, :, :, dy, dx] = t.weight.detach()[:, :, ky, kx].t()
        self.conv = torch.nn.Conv2d(t.in_channels, 4 * t.out_channels, 2, padding=1)
        self.conv.weight = torch.nn.Parameter(weight.reshape(4 * t.out_channels, t.in_channels, 2, 2))
        self.conv.bias = torch.nn.Parameter(t.bias.detach().repeat(4))

    def forward(self, x):
        # Drop the first row and column: with narrow, which fx quantization keeps in int8 (a
        # slice went through float32 and back, ~2 ms a face).
        y = self.conv(x)
        y = torch.narrow(torch.narrow(y, 2, 1, y.shape[2] - 1), 3, 1, y.shape[3] - 1)
        y = y.permute(0, 2, 3, 1)  # (N, H, W, 4C): phase (ry, rx), then C
        n, h, w, c = y.shape[0], y.shape[1], y.shape[2], y.shape[3] // 4
        y = y.reshape(n, h, w, 2, 2, c).permute(0, 1, 3, 2, 4, 5).reshape(n, 2 * h, 2 * w, c)
        return y.permute(0, 3, 1, 2)  # NCHW, laid out channels-last


def _subpixel(model):
    """`model` with its stride-2 transposed convolutions as SubPixelConvTranspose2d, in place."""
    for module in model.modules():
        block = getattr(module, "conv_block", None)
        if isinstance(block, torch.nn.Sequential) and isinstance(block[0], torch.nn.ConvTranspose2d) \
                and block[0].stride == (2, 2):
            block[0] = SubPixelConvTranspose2d(block[0])
    return model


class ConvAsLinear(torch.nn.Module):
    """A stride-1 Conv2d as a matrix product over its unfolded input (the same sums), so that
    dynamic quantization, which takes Linear layers only, can take it."""

    def __init__(self, conv):
        super().__init__()
        assert conv.stride == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1
        self.kernel_size, self.padding = conv.kernel_size, conv.padding
        self.linear = torch.nn.Linear(conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1], conv.out_channels)
        self.linear.weight = torch.nn.Parameter(conv.weight.detach().flatten(1).clone())
        self.linear.bias = torch.nn.Parameter(conv.bias.detach().clone())

    def forward(self, x):
        n, h, w = x.shape[0], x.shape[2], x.shape[3]
        columns = torch.nn.functional.unfold(x, self.kernel_size, padding=self.padding).transpose(1, 2)
        h = h + 2 * self.padding[0] - self.kernel_size[0] + 1
        w = w + 2 * self.padding[1] - self.kernel_size[1] + 1
        return self.linear(columns).transpose(1, 2).reshape(n, -1, h, w)


class SpreadAsLinear(torch.nn.Module):
    """A ConvTranspose2d(stride 1, padding 0) on 1x1 maps as one matrix product into its
    kernel-sized output (the same sums), for dynamic quantization."""

    def __init__(self, transposed):
        super().__init__()
        t = transposed
        assert t.stride == (1, 1) and t.padding == (0, 0) and t.groups == 1
        self.shape = (t.out_channels,) + t.kernel_size
        taps = t.kernel_size[0] * t.kernel_size[1]
        self.linear = torch.nn.Linear(t.in_channels, t.out_channels * taps)
        weight = t.weight.detach().flatten(2).permute(1, 2, 0)  # (out, taps, in): output row o * taps + tap
        self.linear.weight = torch.nn.Parameter(weight.reshape(-1, t.in_channels).clone())
        self.linear.bias = torch.nn.Parameter(t.bias.detach().repeat_interleave(taps))

    def forward(self, x):
        return self.linear(x.flatten(1)).reshape((x.shape[0],) + self.shape)


def _as_linear(stage):
    """`stage` (an INT8_DYNAMIC_STAGES Sequential of conv blocks on 1x1 and 3x3 maps) with its
    convolutions as ConvAsLinear / SpreadAsLinear, in place."""
    for block in stage:
        layer = block.conv_block[0]
        transposed = isinstance(layer, torch.nn.ConvTranspose2d)
        block.conv_block[0] = SpreadAsLinear(layer) if transposed else ConvAsLinear(layer)
    return stage


class _FrameGenerator(torch.nn.Module):
    """The generator on frames only, so that torch.fx can trace it (no branch on the rank)."""

    def __init__(self, generator):
        super().__init__()
        self.generator = generator

    def forward(self, audio, face):
        return self.generator.forward_frames(audio, face)


def int8_generator(model):
    """The generator with int8 weights and activations (x86 CPUs; about 3x float32's speed
    there; INT8_DYNAMIC_STAGES with activations scaled per call), as a frozen TorchScript
    module. Activation ranges come from fixed synthetic inputs (calibration_input), so the
    result depends on the weights alone: faces calibrated this way measured as close to float32
    as calibrating on the video's own faces and speech."""
    if "x86" not in torch.backends.quantized.supported_engines:
        raise RuntimeError("int8 inference needs PyTorch's x86 quantized engine; run without --fast here")
    torch.backends.quantized.engine = "x86"
    # torch.ao's fx quantization and TorchScript are deprecated in favour of torchao and
    # torch.compile, which need a C++ compiler at run time; torch is pinned, so their notices
    # (and the tracer's about the calibrated scales it bakes in, constants by design) are noise.
    return on_compute_thread(_quiet_quantized, model)


def _quiet_quantized(model):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _quantized(model)


def _quantized(model):
    from torch.ao.quantization import get_default_qconfig_mapping, per_channel_dynamic_qconfig, quantize_dynamic
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    frames = _FrameGenerator(_subpixel(_folded(model).float().cpu()))  # a folded copy
    qconfig = get_default_qconfig_mapping("x86").set_global(_int8_qconfig())
    for name in INT8_DYNAMIC_STAGES:
        _as_linear(frames.get_submodule(name))
        qconfig.set_module_name(name, None)
    mel, face = calibration_input(INT8_CALIBRATION_SIZE)
    prepared = prepare_fx(frames, qconfig, (mel[:1], face[:1]))
    with torch.inference_mode():
        prepared(mel, face)
    # The stages left out are its only Linear layers; in place: a copy kept 100 MB more resident.
    quantized = quantize_dynamic(convert_fx(prepared), {torch.nn.Linear: per_channel_dynamic_qconfig},
                                 inplace=True)
    with torch.no_grad():  # TorchScript runs the ~250 int8 ops at a third less time than fx's Python
        frozen = torch.jit.freeze(torch.jit.trace(quantized, (mel[:1], face[:1])).eval())
    # TorchScript's profiling executor specialises the graph on its first two calls (measured
    # 65 and 42 ms, then 25): made here, not on a live session's first frames.
    with torch.inference_mode():
        for _ in range(2):
            frozen(mel[:1], face[:1])
    return _OneAtATime(frozen)


class _OneAtATime(torch.nn.Module):
    """Runs `frames` on one face at a time: the int8 kernels took 16-23 ms per face alone and
    22-31 ms per face in batches of 2 to 8 (2-core Xeon, measured). A live session hands it one
    face per call (`faces_per_call`): a batch would hold back its first frames until the last is made."""

    faces_per_call = 1

    def __init__(self, frames):
        super().__init__()
        self.frames = frames

    def forward(self, audio, face):
        return torch.cat([self.frames(audio[i:i + 1], face[i:i + 1]) for i in range(len(face))])


def _int8_qconfig():
    """Activation ranges from the calibration's min and max; 8 bits where the CPU has VNNI
    (its int8 products cannot saturate), else 7 as PyTorch's x86 default."""
    from torch.ao.quantization import QConfig
    from torch.ao.quantization.observer import MinMaxObserver, PerChannelMinMaxObserver

    vnni = bool(cpu_flags() & {"avx512_vnni", "avx_vnni", "amx_int8"})
    return QConfig(activation=MinMaxObserver.with_args(dtype=torch.quint8, reduce_range=not vnni),
                   weight=PerChannelMinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_channel_symmetric))


def calibration_input(count, seed=0):
    """Model input for int8 calibration: faces of pink noise (the 1/f spectrum of natural
    images) and mel windows spread over the normalised range, from a fixed seed."""
    rng = np.random.default_rng(seed)
    size = hparams.img_size
    fy, fx = np.fft.fftfreq(size)[:, None], np.fft.rfftfreq(size)[None]
    amplitude = 1.0 / np.maximum(np.hypot(fy, fx), 1.0 / size)
    crops = []
    for _ in range(count):
        phases = np.exp(2j * np.pi * rng.random((3,) + amplitude.shape))
        image = np.fft.irfft2(amplitude * phases, (size, size)).transpose(1, 2, 0)
        image = (image - image.min()) / (image.max() - image.min())
        crops.append((image * 255).astype(np.uint8))
    limit = hparams.max_abs_value
    mels = rng.uniform(-limit, limit, (count, hparams.num_mels, MEL_STEP_SIZE)).astype(np.float32)
    return model_input(crops, list(mels), "cpu")


def best_device():
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


# --------------------------------------------------------------------------- mel windows
def mel_chunk_start(i, fps):
    """Start column of frame i's mel window, where the mel continues past the window."""
    return int(i * (audio.mel_columns_per_second() / fps))  # 80 / fps with the default hparams


def mel_chunk_starts(num_columns, fps):
    """Start column of the 16-column mel window of every output frame (the last one is T - 16)."""
    starts, i = [], 0
    while True:
        start = mel_chunk_start(i, fps)
        if start + MEL_STEP_SIZE > num_columns:
            starts.append(num_columns - MEL_STEP_SIZE)
            return starts
        starts.append(start)
        i += 1


def mel_chunks(mel, fps):
    """One (80, 16) mel window per output video frame."""
    return [mel[:, s:s + MEL_STEP_SIZE] for s in mel_chunk_starts(mel.shape[1], fps)]


# --------------------------------------------------------------------------- face boxes
def smooth_boxes(boxes, window=SMOOTH_WINDOW):
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

    Each run of consecutive detections is padded and smoothed on its own, a run shorter than the
    window over all its boxes: the original's slice boxes[n - 5:] counts from the end when
    n < 5 and would collapse such a run to its last box or two (the original met that only in
    videos under 5 frames). A video with a face in every frame gets exactly the original's
    boxes. Returns a list of tuples or None."""
    whole = all(d is not None for d in detections)
    out = [None] * len(detections)
    start = 0
    while start < len(detections):
        if detections[start] is None:
            start += 1
            continue
        end = start
        while end < len(detections) and detections[end] is not None:
            end += 1
        run = face_boxes(detections[start:end], frame_shape, pads, nosmooth=True)
        if not nosmooth:
            smooth_boxes(run, SMOOTH_WINDOW if whole else min(SMOOTH_WINDOW, len(run)))
        out[start:end] = [tuple(int(v) for v in b) for b in run]
        start = end
    return out


def usable(box):
    """Whether `box` (y1, y2, x1, x2 or None) covers at least one pixel."""
    return box is not None and box[1] > box[0] and box[3] > box[2]


# --------------------------------------------------------------------------- generation and paste
def face_crop(frame, box):
    """The model's 96x96 input face: the box's pixels resized as the original does."""
    y1, y2, x1, x2 = box
    return cv2.resize(frame[y1:y2, x1:x2], (hparams.img_size, hparams.img_size))


def model_input(crops, mels, device, dtype=torch.float32):
    """(mel batch (B, 1, 80, 16), face batch (B, 6, 96, 96)): lower half masked, then the face."""
    faces = _UINT8_TO_UNIT[np.stack(crops)]                       # (B, 96, 96, 3)
    masked = faces.copy()
    masked[:, hparams.img_size // 2:] = 0
    faces = np.concatenate([masked, faces], axis=3).transpose(0, 3, 1, 2)
    mel_batch = np.stack(mels).astype(np.float32)[:, None]        # (B, 1, 80, 16)
    return (torch.from_numpy(mel_batch).to(device, dtype),
            torch.from_numpy(np.ascontiguousarray(faces)).to(device, dtype))


def generate(model, crops, mels):
    """uint8 (B, 96, 96, 3) faces the model makes for `crops` and their mel windows."""
    param = next(model.parameters(), None)  # the int8 generator has none: CPU, float32 input
    device, dtype = (param.device, param.dtype) if param is not None else ("cpu", torch.float32)
    mel_t, face_t = model_input(crops, mels, device, dtype)
    with torch.inference_mode():
        pred = model(mel_t, face_t)
    # `* 255` then truncation to uint8, as the original does per frame.
    return (pred.float().cpu().numpy().transpose(0, 2, 3, 1) * 255.0).astype(np.uint8)


def paste(frame, patch, box, options=None):
    """Resize the generated `patch` into `box` of `frame`, in place: the original's hard paste
    when `options` (a SyncOptions) is None or has blend "rect", else see blend_face."""
    y1, y2, x1, x2 = box
    face = cv2.resize(patch, (x2 - x1, y2 - y1))
    if options is None or options.blend == "rect":
        frame[y1:y2, x1:x2] = face
    else:
        region = frame[y1:y2, x1:x2]
        region[:] = blend_face(region, face, options)
    return frame


def generate_batch(model, batch, clock=None, options=None):
    """Run the model on the (frame, mel, box) items of `batch` that have a usable box and paste
    the results into their frames (blended as `options` says), in place; return the frames."""
    clock = clock or StageClock()
    with_face = [(frame, mel, box) for frame, mel, box in batch if usable(box)]
    if with_face:
        with clock("generate"):
            patches = generate(model, [face_crop(f, b) for f, _, b in with_face], [m for _, m, _ in with_face])
        with clock("paste"):
            for (frame, _, box), patch in zip(with_face, patches):
                paste(frame, patch, box, options)
    return [frame for frame, _, _ in batch]


def lipsync_stream(model, items, batch_size=128, clock=None, copy_frames=True, options=None):
    """Yield output frames for an iterable of (frame, mel window, box or None), in bounded batches.

    Frames are copied before pasting (unless `copy_frames` is False: frames nobody else holds);
    a None (or empty) box passes the frame through unchanged. The model computes in the dtype
    of its weights (reduced precision for --fast: see inference_model); `clock` times stages;
    `options` (a SyncOptions) chooses the blend (None: the original's paste)."""
    clock = clock or StageClock()
    batch = []
    for frame, mel, box in items:
        batch.append((frame.copy() if copy_frames else np.ascontiguousarray(frame), mel, box))
        if len(batch) == batch_size:
            yield from generate_batch(model, batch, clock, options)
            batch = []
    if batch:
        yield from generate_batch(model, batch, clock, options)


def lipsync_frames(model, frames, mels, boxes, batch_size=128, options=None):
    """Output frames: frame i from frames[i % len(frames)], mels[i] and boxes[i % len(boxes)] (y1, y2, x1, x2)."""
    items = ((frames[i % len(frames)], mels[i], boxes[i % len(boxes)]) for i in range(len(mels)))
    return lipsync_stream(model, items, batch_size, options=options)


# --------------------------------------------------------------------------- blending
# The model redraws the lower half of its 96x96 face (its input has that half masked), so only
# that region is taken from it; the upper face keeps the input's sharper pixels.
def blend_face(region, face, options):
    """The box's pixels: the input `region` with the generated `face` (both uint8, box-sized)
    blended in through lower_face_mask, after colour matching (options.color_match) and, for
    blend "seamless", Poisson blending. Where the mask is 0 the input stays exactly as it was."""
    height, width = region.shape[:2]
    mask = lower_face_mask(height, width, options.mask_shape, options.mask_edge)
    if options.color_match:
        face = match_colors(face, region, mask)
    if options.blend == "seamless":
        face = poisson_blend(face, region, mask)
    weight = mask[..., None]
    return np.rint(region * (1.0 - weight) + face * weight).astype(np.uint8)


@lru_cache(maxsize=8)  # a still face or an avatar reuses its box; 8 masks of a large face: 10 MB
def lower_face_mask(height, width, shape="ellipse", edge=0.1):
    """Weights (height, width) float32 of the generated face in a box: 1 inside the lower half's
    ellipse (or box), shrunk by the edge width (`edge` x the box width) and blurred over it, so
    the soft edge stays inside the lower half and every row above the middle is 0."""
    top = height // 2
    margin = min(int(round(edge * width)), (height - top) // 4, width // 4)  # the core keeps its 1s
    mask = np.zeros((height, width), np.float32)
    if shape == "box":
        mask[top + margin:height - margin, margin:width - margin] = 1.0
    else:
        centre = (width // 2, top + (height - top) // 2)
        axes = (max(0, width // 2 - margin), max(0, (height - top) // 2 - margin))
        cv2.ellipse(mask, centre, axes, 0, 0, 360, 1.0, -1)
    if margin:  # a Gaussian cut at `margin` pixels: the weights fall to 0 within the margin
        mask = cv2.GaussianBlur(mask, (2 * margin + 1, 2 * margin + 1), margin / 2, borderType=cv2.BORDER_CONSTANT)
    mask.setflags(write=False)
    return mask


def match_colors(face, region, mask):
    """`face` shifted and scaled, per channel of CIE Lab, to the mean and spread that the input
    `region` has where `mask` is above 0 (so the redrawn mouth takes the input face's colour)."""
    inside = mask > 0
    if inside.sum() < 2:
        return face
    lab_face = cv2.cvtColor(face.astype(np.float32) / 255.0, cv2.COLOR_BGR2LAB)
    lab_input = cv2.cvtColor(region.astype(np.float32) / 255.0, cv2.COLOR_BGR2LAB)
    mean_face, std_face = lab_face[inside].mean(0), lab_face[inside].std(0)
    mean_input, std_input = lab_input[inside].mean(0), lab_input[inside].std(0)
    scale = np.clip(std_input / np.maximum(std_face, 1e-3), 0.5, 2.0)   # a flat patch is not stretched
    matched = (lab_face - mean_face) * scale + mean_input
    bgr = cv2.cvtColor(matched.astype(np.float32), cv2.COLOR_LAB2BGR)
    return np.clip(np.rint(bgr * 255.0), 0, 255).astype(np.uint8)


POISSON_PAD = 2  # OpenCV's seamlessClone ignores the mask's outer pixel row and column


def poisson_blend(face, region, mask):
    """`face` blended into `region` in the gradient domain where `mask` > 0 (OpenCV's
    seamlessClone, normal cloning): the face's gradients, the input's colours at the edge."""
    inside = np.where(mask > 0, 255, 0).astype(np.uint8)
    if inside.sum() == 0 or min(mask.shape) < 3:
        return face
    pad = POISSON_PAD
    src = cv2.copyMakeBorder(face, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    dst = cv2.copyMakeBorder(region, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    inside = cv2.copyMakeBorder(inside, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
    x, y, w, h = cv2.boundingRect(inside)
    blended = cv2.seamlessClone(src, dst, inside, (x + w // 2, y + h // 2), cv2.NORMAL_CLONE)
    return blended[pad:-pad, pad:-pad]


# --------------------------------------------------------------------------- timing
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
