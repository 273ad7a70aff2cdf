"""The fast paths against the straightforward ones: S3FD decoding and batching, the streaming
pipeline against the original-style one, --fast within its stated tolerance, the detection cache."""
import numpy as np
import pytest
import torch

import inference
import naive_reference
import videoio
from options import SyncOptions
from conftest import CONFORMANCE, MEDIA
from face_detection import s3fd
from face_detection.cache import DetectionCache
from face_detection.fast import FastDetector, keyframe_indices

GRID = MEDIA / "bbaf2n.mpg"                 # 360x288, 25 fps, 75 frames
OTHER_GRID = MEDIA / "lwbsza.mpg"           # another speaker, sitting elsewhere in the frame
SPEECH = MEDIA / "swiz3n.mpg"               # its audio track drives the face
BOX = (60, 220, 110, 250)                   # y1 y2 x1 x2 around the bbaf2n speaker's face
# --fast runs the generator in bfloat16 (where the CPU supports it). Measured on the four GRID
# clips with deterministic weights, against float32, mouth region (lower half of the face box):
# mean |diff| 0.31-0.34, 99th percentile 1, max 4 intensity levels. The stated tolerance:
FAST_MOUTH_MEAN, FAST_MOUTH_P99, FAST_MOUTH_MAX = 0.5, 2, 8
# On x86 CPUs without bfloat16 instructions --fast runs the int8 generator (lipsync.int8_generator).
# Measured the same way (four frames a clip, seeds 11 and 12): mean 1.4-1.8, p99 5-7, max 10-17.
INT8_MOUTH_MEAN, INT8_MOUTH_P99, INT8_MOUTH_MAX = 2.5, 10, 24


def grid_frames(path=GRID, count=None):
    return [f for i, f in zip(range(count or 10 ** 9), videoio.read_frames(str(path)))]


@pytest.fixture(scope="module")
def s3fd_path(tmp_path_factory, check):
    path = tmp_path_factory.mktemp("s3fd") / "s3fd.pth"
    torch.save(check.make_state_dict("s3fd", 11), path)
    return path


@pytest.fixture(scope="module")
def wav2lip(check):
    from models import Wav2Lip

    model = Wav2Lip()
    model.load_state_dict(check.make_state_dict("wav2lip", 11))
    return model.eval()


class Counting:
    """A detector wrapper that records how many frames it was asked to detect."""

    def __init__(self, detector):
        self.detector, self.name, self.frames = detector, detector.name, 0
        self.cache_key = getattr(detector, "cache_key", None)

    def detect(self, frames):
        self.frames += len(frames)
        return self.detector.detect(frames)


# --------------------------------------------------------------------------- S3FD
def test_s3fd_boxes_equal_the_original_style_loop_including_ties(s3fd_path, monkeypatch):
    """Deterministic weights saturate the face score at 1.0 in hundreds of cells: the winner is
    the original's sort's choice among them, which depends on the whole batch."""
    detector = s3fd.S3FDDetector(str(s3fd_path))
    frames = [f[::2, ::2].copy() for f in grid_frames(count=6)]           # 144x180 keeps the loop short
    with torch.inference_mode():
        maps = detector.net(s3fd.preprocess(frames, "cpu"))
    top_cells = [(torch.cat([torch.softmax(maps[2 * k], 1)[b, 1].flatten() for k in range(6)]) == 1.0).sum()
                 for b in range(len(frames))]
    assert min(top_cells) > 1, "the weights no longer produce ties; the test lost its point"

    for batch in (1, 3):
        faithful = [b for i in range(0, 6, batch) for b in detector.detect(frames[i:i + batch])]
        naive = naive_reference.face_detect(detector.net, frames, batch)
        # The faithful detector bounds far edges by the frame, as the padding step does anyway.
        assert faithful == [b and s3fd.clip_to_frame(b, 180, 144) for b in naive]
        assert faithful != naive, "no box ran past the frame; the bounding went untested"


def test_s3fd_trunk_in_frames_and_strips_gives_the_whole_batch_maps(s3fd_path, monkeypatch):
    detector = s3fd.S3FDDetector(str(s3fd_path))
    frames = [f[:286, :358].copy() for f in grid_frames(count=3)]         # rows not a multiple of 4
    with torch.inference_mode():
        x = s3fd.preprocess(frames, "cpu")
        whole = detector.net(x)
        frame_maps, frame_pool5 = detector.net.trunk(x[1:2])
        strip_maps, strip_pool5 = detector.net.trunk(x[1:2], 52)
    # Strips give the frame's result bit for bit (halo and pooling grid right) ...
    assert all(torch.equal(a, b) for a, b in zip(strip_maps + [strip_pool5], frame_maps + [frame_pool5]))
    # ... and a frame at a time gives the batch's, up to oneDNN's rounding at some thread counts.
    monkeypatch.setattr(s3fd, "CPU_PIXELS_PER_STRIP", 358 * 52)           # 6 strips, the last one short
    assert detector.frames_per_forward(frames) == 1 and detector.strip_rows(358) == 52
    for got, expected in zip(detector.maps(frames), whole):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- generator and pipeline
@pytest.mark.parametrize("path", sorted(CONFORMANCE.glob("e2e_*.npz")), ids=lambda p: p.stem)
def test_inference_model_meets_e2e_golden(path, check):
    from models import Wav2Lip

    z = np.load(path)
    model = Wav2Lip()
    model.load_state_dict(check.make_state_dict("wav2lip", int(z["seed"])))
    fused = inference.inference_model(model.eval())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    windows = [z["mel"][:, s:s + 16] for s in z["mel_starts"]]
    frames = list(z["frames"])
    boxes = inference.face_boxes(z["detections"], frames[0].shape, tuple(z["pads"]), bool(z["nosmooth"]))
    for t, out in enumerate(inference.lipsync_frames(fused, frames, windows, boxes, batch_size=5)):
        y1, y2, x1, x2 = z["boxes"][t]
        diff = np.abs(out[y1:y2, x1:x2].astype(np.int16) - z["patch_%d" % t].astype(np.int16))
        assert diff.max() <= 3 and diff.mean() <= 0.05, (t, diff.max(), diff.mean())


def encoder_frames(monkeypatch):
    """A list that receives every frame the streaming pipeline hands to the encoder."""
    seen = []
    write = videoio.VideoWriter.write
    monkeypatch.setattr(videoio.VideoWriter, "write", lambda self, frame: (seen.append(frame.copy()),
                                                                             write(self, frame)))
    return seen


def test_streaming_pipeline_equals_the_original_style_one(wav2lip, monkeypatch, tmp_path):
    naive = []
    naive_reference.lipsync_video(wav2lip, str(GRID), str(SPEECH), str(tmp_path / "naive.mp4"), box=BOX,
                                  frame_sink=lambda f: naive.append(f.copy()))
    ours = encoder_frames(monkeypatch)
    stats = inference.lipsync_video(wav2lip, str(GRID), str(SPEECH), str(tmp_path / "ours.mp4"),
                                    options=SyncOptions(box=BOX), progress=False)
    assert len(ours) == len(naive) == stats["frames"]
    assert set(stats["seconds"]) >= {"decode", "mel", "generate", "paste", "encode"}
    y1, y2, x1, x2 = BOX
    for a, b in zip(ours, naive):
        diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
        assert diff[y1:y2, x1:x2].max() <= 3 and diff[y1:y2, x1:x2].mean() <= 0.05
        diff[y1:y2, x1:x2] = 0
        assert not diff.any()
    assert (tmp_path / "naive.mp4").stat().st_size > 0


@pytest.fixture(scope="module")
def float32_and_bfloat16(wav2lip):
    """The generator as inference runs it, and in bfloat16: named here, not taken from fast_dtype,
    which gives None (float32) on CPUs without native bfloat16."""
    generator = inference.inference_model(wav2lip)
    reduced = inference.inference_model(generator, torch.bfloat16)
    assert {p.dtype for p in reduced.parameters()} == {torch.bfloat16}
    return generator, reduced


@pytest.fixture(scope="module")
def int8(wav2lip):
    return inference.inference_model(wav2lip, torch.qint8)


def reduced_against_float32(clip, generator, reduced):
    """|difference| on the mouth region of four real GRID frames, and outside the box's max."""
    frames = grid_frames(MEDIA / ("%s.mpg" % clip), count=4)
    mel = inference.audio.melspectrogram(inference.load_speech(str(SPEECH)))
    y1, y2, x1, x2 = BOX
    items = [(f, m, BOX) for f, m in zip(frames, inference.mel_chunks(mel, 25.0)[:4])]
    exact = np.stack(list(inference.lipsync_stream(generator, items, 4))).astype(np.int16)
    fast = np.stack(list(inference.lipsync_stream(reduced, items, 4))).astype(np.int16)
    diff = np.abs(exact - fast)
    mouth = diff[:, (y1 + y2) // 2:y2, x1:x2].copy()
    diff[:, y1:y2, x1:x2] = 0
    assert mouth.any(), "the reduced-precision generator gave float32's output: it was not compared"
    return mouth, diff.max()


@pytest.mark.parametrize("clip", ["bbaf2n", "lwbsza", "swiz3n", "pwij3p"])
def test_fast_generator_within_stated_tolerance(clip, float32_and_bfloat16):
    """bfloat16 against float32 on the mouth region of real GRID faces."""
    diff, outside = reduced_against_float32(clip, *float32_and_bfloat16)
    assert diff.mean() <= FAST_MOUTH_MEAN and np.percentile(diff, 99) <= FAST_MOUTH_P99, \
        (diff.mean(), np.percentile(diff, 99))
    assert diff.max() <= FAST_MOUTH_MAX and outside == 0


@pytest.mark.parametrize("clip", ["bbaf2n", "lwbsza", "swiz3n", "pwij3p"])
def test_int8_generator_within_stated_tolerance(clip, float32_and_bfloat16, int8):
    """The int8 generator against float32 on the mouth region of real GRID faces."""
    diff, outside = reduced_against_float32(clip, float32_and_bfloat16[0], int8)
    assert diff.mean() <= INT8_MOUTH_MEAN and np.percentile(diff, 99) <= INT8_MOUTH_P99, \
        (diff.mean(), np.percentile(diff, 99))
    assert diff.max() <= INT8_MOUTH_MAX and outside == 0


def test_int8_generator_depends_on_the_weights_alone(wav2lip, int8):
    """Calibrated on fixed synthetic input: a second build gives the same faces, a batch gives
    each face as alone (so live frames equal the offline core's whatever the batching), and
    other weights give another model."""
    from models import Wav2Lip
    from lipsync import calibration_input

    mel, face = calibration_input(3, seed=7)
    again = inference.inference_model(wav2lip, torch.qint8)
    with torch.inference_mode():
        batch = int8(mel, face)
        assert torch.equal(batch, again(mel, face))
        assert torch.equal(batch[1:2], int8(mel[1:2], face[1:2]))
        assert (batch - wav2lip(mel, face)).abs().max() < 0.1
        other = Wav2Lip().eval()
        assert not torch.equal(batch, inference.inference_model(other, torch.qint8)(mel, face))


def test_subpixel_transposed_convolution_equals_the_transposed_one(wav2lip):
    """The int8 generator's rewrite of every stride-2 ConvTranspose2d, on the real layer shapes."""
    from lipsync import SubPixelConvTranspose2d

    layers = [m for m in wav2lip.modules() if isinstance(m, torch.nn.ConvTranspose2d) and m.stride == (2, 2)]
    assert len(layers) == 5
    generator = torch.Generator().manual_seed(0)
    for layer, size in zip(layers, (3, 6, 12, 24, 48)):
        x = torch.randn(2, layer.in_channels, size, size, generator=generator)
        with torch.inference_mode():
            expected, got = layer(x), SubPixelConvTranspose2d(layer)(x)
        assert got.shape == expected.shape == (2, layer.out_channels, 2 * size, 2 * size)
        assert (got - expected).abs().max() <= 1e-5 * expected.abs().max()


def test_int8_generator_stays_int8_through_its_subpixel_layers(int8):
    """Between its int8 inputs and output the int8 generator leaves int8 only to feed the two
    dynamically quantized stages (which take float32): a sub-pixel layer's crop of its
    convolution's output stays in int8 (a float32 round trip cost ~2 ms a face)."""
    kinds = [node.kind() for node in int8.frames.graph.nodes()]
    # dequantized: the audio embedding and the first skip concatenation (into the dynamic stages), the output
    assert kinds.count("aten::dequantize") == 3
    assert kinds.count("aten::quantize_per_tensor") == 4  # the two inputs, the two dynamic stages' outputs


def test_matrix_product_forms_equal_the_first_decoder_convolutions(wav2lip):
    """The int8 generator's dynamically quantized stages, before quantization, on their real shapes."""
    from lipsync import ConvAsLinear, SpreadAsLinear

    stage0, stage1 = wav2lip.face_decoder_blocks[0], wav2lip.face_decoder_blocks[1]
    cases = [(ConvAsLinear, stage0[0].conv_block[0], 1), (SpreadAsLinear, stage1[0].conv_block[0], 1),
             (ConvAsLinear, stage1[1].conv_block[0], 3)]
    generator = torch.Generator().manual_seed(0)
    for form, layer, size in cases:
        x = torch.randn(2, layer.in_channels, size, size, generator=generator)
        with torch.inference_mode():
            expected, got = layer(x), form(layer)(x)
        assert got.shape == expected.shape
        assert (got - expected).abs().max() <= 1e-5 * expected.abs().max()


def test_a_cpu_model_keeps_opencv_on_the_calling_thread(tmp_path, check):
    """OpenCV's pool, woken for each face's resize, would spin beside the generator's threads."""
    import cv2

    path = tmp_path / "wav2lip.pth"
    torch.save(check.make_state_dict("wav2lip", 11), path)
    cv2.setNumThreads(2)
    inference.load_model(str(path), "cpu")
    assert cv2.getNumThreads() == 1


def test_fast_precision_follows_the_hardware(monkeypatch):
    """--fast: float16 on CUDA, bfloat16 where the CPU computes it, else int8 on x86."""
    import lipsync

    assert lipsync.fast_dtype("cuda") == torch.float16
    monkeypatch.setattr(lipsync, "native_cpu_bfloat16", lambda: True)
    assert lipsync.fast_dtype("cpu") == torch.bfloat16
    monkeypatch.setattr(lipsync, "native_cpu_bfloat16", lambda: False)
    expected = torch.qint8 if "x86" in torch.backends.quantized.supported_engines else None
    assert lipsync.fast_dtype("cpu") == expected


def test_background_iteration_passes_errors_and_stops_early():
    def broken():
        yield 1
        raise ValueError("decoder failed")

    with pytest.raises(ValueError, match="decoder failed"):
        list(inference.in_background(broken(), 2))
    produced = []

    def endless():
        i = 0
        while True:
            produced.append(i)
            yield i
            i += 1

    for item in inference.in_background(endless(), 3):
        if item == 5:
            break
    assert len(produced) <= 5 + 1 + 3 + 1  # what was consumed, the queue, one in flight


def test_background_iteration_stops_its_worker_when_a_signal_lands_while_it_starts(monkeypatch):
    """Ctrl-C or SIGTERM (inference.Interrupted, raised in the main thread) can land while the
    worker thread is being started; the worker is stopped and joined all the same, so that
    nothing goes on iterating (and the caller can close the iterable: a worker still in it made
    the CLI end with "generator already executing")."""
    import threading

    def endless():
        while True:
            yield 0

    start = threading.Thread.start
    workers = []

    def start_then_interrupt(thread):
        start(thread)
        workers.append(thread)
        raise inference.Interrupted(15)

    monkeypatch.setattr(threading.Thread, "start", start_then_interrupt)
    with pytest.raises(inference.Interrupted):
        next(inference.in_background(endless(), 2))
    monkeypatch.undo()
    assert len(workers) == 1
    workers[0].join(5)
    assert not workers[0].is_alive()


# --------------------------------------------------------------------------- fast detection
def test_keyframes_cover_every_batch_end():
    assert keyframe_indices(16, 8) == [0, 8, 15]
    assert keyframe_indices(1, 8) == [0]


def test_fast_detection_follows_a_real_face_with_keyframes_only():
    from face_detection.embedded import EmbeddedDetector

    frames = grid_frames(count=24)
    full = EmbeddedDetector().detect(frames)
    counting = Counting(EmbeddedDetector())
    fast = FastDetector(counting, short_side=None, every=8).detect(frames)
    assert counting.frames == len(keyframe_indices(24, 8))
    for a, b in zip(fast, full):
        size = b[2] - b[0]
        assert max(abs(p - q) for p, q in zip(a, b)) <= 0.1 * size


@pytest.mark.parametrize("clip", ["bbaf2n", "lwbsza", "swiz3n", "pwij3p"])
def test_fast_detection_within_stated_tolerance_on_grid_clips(clip):
    """--fast's keyframes (batches of FAST_BATCH) against per-frame detection, as pasted: padded
    and smoothed. Measured: at most 8 px (5% of the face height), 0-0.5 px on average."""
    from face_detection.embedded import EmbeddedDetector
    from face_detection.fast import FAST_BATCH

    frames = grid_frames(MEDIA / ("%s.mpg" % clip))
    detector = EmbeddedDetector()
    full = [b for i in range(0, len(frames), 16) for b in detector.detect(frames[i:i + 16])]
    fast_detector = FastDetector(detector, short_side=None)
    fast = [b for i in range(0, len(frames), FAST_BATCH) for b in fast_detector.detect(frames[i:i + FAST_BATCH])]
    expected = inference.face_boxes(full, frames[0].shape)
    diff = np.abs(inference.face_boxes(fast, frames[0].shape) - expected)
    face_height = np.mean(expected[:, 1] - expected[:, 0])
    assert diff.max() <= 0.06 * face_height and diff.mean() <= 1.0, (diff.max(), diff.mean())


def test_fast_detection_detects_again_when_the_face_moves():
    from face_detection.embedded import EmbeddedDetector

    frames = grid_frames(count=16)
    frames[8:] = [np.roll(f, 40, axis=1) for f in frames[8:]]         # the head moves 40 px right
    full = EmbeddedDetector().detect(frames)
    counting = Counting(EmbeddedDetector())
    fast = FastDetector(counting, short_side=None, every=8).detect(frames)
    assert counting.frames >= len(keyframe_indices(16, 8)) + 7        # frames 1-7 detected again
    assert fast[:9] == full[:9]


def test_fast_s3fd_maps_small_copies_back_to_the_frame(s3fd_path):
    import cv2

    frames = grid_frames(count=2)
    detector = s3fd.S3FDDetector(str(s3fd_path))
    boxes = FastDetector(detector, short_side=144, every=8).detect(frames)
    small = detector.detect([cv2.resize(f, (180, 144), interpolation=cv2.INTER_AREA) for f in frames])
    assert boxes == [None if s is None else tuple(int(v / 0.5) for v in s) for s in small]


# --------------------------------------------------------------------------- detection cache
def test_cache_skips_detection_for_the_same_video_and_settings(tmp_path, s3fd_path):
    video = tmp_path / "face.mp4"
    video.write_bytes(GRID.read_bytes())
    cache = DetectionCache(str(tmp_path / "cache"))
    clock = inference.StageClock()

    def run(count, path=video, resize_factor=4):
        source = inference.FaceSource(str(path), SyncOptions(resize_factor=resize_factor))
        detector = Counting(s3fd.S3FDDetector(str(s3fd_path)))
        found = inference.find_faces(source, detector, count, 16, False, clock, cache)
        return found, detector.frames

    (first, shape), detected = run(20)
    assert detected == 32 and shape == (72, 90, 3)                # whole batches: a prefix is a fresh run's
    assert run(20)[1] == 0 and run(20)[0][0] == first
    assert run(12)[0][0] == first[:12] and run(12)[1] == 0        # a shorter audio reuses the prefix
    assert run(30)[1] == 0                                        # so does one within the batches detected
    assert run(40)[1] == 48                                       # a longer one detects again...
    assert run(40)[1] == 0
    assert run(200)[1] == 75 and run(200)[1] == 0                 # ...and the whole video is complete
    assert run(20, resize_factor=3)[1] == 32                      # other settings: another entry
    other = tmp_path / "other.mp4"
    other.write_bytes(OTHER_GRID.read_bytes())
    assert run(20, path=other)[1] == 32                           # other content: another entry


def test_cached_rerun_gives_the_same_video(tmp_path, s3fd_path, wav2lip, monkeypatch):
    detector = s3fd.S3FDDetector(str(s3fd_path))
    options = dict(options=SyncOptions(fast=True, resize_factor=2), cache_dir=str(tmp_path / "cache"), progress=False)
    seen = encoder_frames(monkeypatch)
    inference.lipsync_video(wav2lip, str(GRID), str(SPEECH), str(tmp_path / "a.mp4"), detector, **options)
    first = list(seen)
    seen.clear()
    detected = []
    detect = detector.detect_all
    monkeypatch.setattr(detector, "detect_all", lambda frames: (detected.append(len(frames)), detect(frames))[1])
    stats = inference.lipsync_video(wav2lip, str(GRID), str(SPEECH), str(tmp_path / "b.mp4"), detector, **options)
    assert detected == [] and len(seen) == len(first) == stats["frames"]
    assert all(np.array_equal(a, b) for a, b in zip(first, seen))
    assert len(list((tmp_path / "cache").iterdir())) == 1
    # A new process's detector never loads its network when the detections are cached.
    fresh = s3fd.S3FDDetector(str(s3fd_path))
    inference.lipsync_video(wav2lip, str(GRID), str(SPEECH), str(tmp_path / "c.mp4"), fresh, **options)
    assert fresh._net is None


def test_torch_work_runs_on_one_compute_thread():
    """Whatever thread asks, the model is made and run on one thread (one OpenMP team), nested
    calls run in place, and errors reach the caller."""
    import threading
    import lipsync

    seen = []

    def where():
        seen.append(threading.get_ident())
        return lipsync.on_compute_thread(threading.get_ident)  # nested: in place, no deadlock

    callers = [threading.Thread(target=lambda: seen.append(lipsync.on_compute_thread(where))) for _ in range(3)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join(30)
    assert len(seen) == 6 and len(set(seen)) == 1 and seen[0] != threading.get_ident()
    with pytest.raises(ZeroDivisionError):
        lipsync.on_compute_thread(lambda: 1 / 0)
