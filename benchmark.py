"""How fast is lip-sync here: the faithful path, --fast, a cached re-run and, with --compare-naive,
a straightforward path that mirrors the original code (naive_reference.py).

    python benchmark.py                       # 10 s of 720p, medians of 3 runs
    python benchmark.py --compare-naive       # the same for the original-style path, and equality checks
    python benchmark.py --memory              # peak memory for 10 s and 60 s of 720p

Without --checkpoint_path / --s3fd_path the networks get the conformance kit's deterministic
weights (../shared/conformance): the outputs mean nothing, the arithmetic costs the same. The
default clip is the GRID clip bbaf2n (Cooke et al. 2006, CC BY 4.0) scaled to cover 1280x720 and
looped, driven by real speech. Every run is a separate process: its wall time includes start-up
and model loading, and its peak memory is the process's maximum resident set size; "in-process"
is the lip-sync call alone (no interpreter start, imports or model loading).
"""
import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.abspath(__file__))
SHARED = os.path.join(os.path.dirname(REPO), "shared")
MEDIA = os.path.join(SHARED, "media")
GRID_CLIP = os.path.join(MEDIA, "bbaf2n.mpg")
GRID_FACE_BOX = (60, 220, 110, 250)        # y1, y2, x1, x2 of the speaker's face in the 360x288 clip
STAGES = ("decode", "detect", "mel", "generate", "paste", "encode")


# --------------------------------------------------------------------------- machine
def cpu_ticks():
    """(steal, total) clock ticks of all CPUs since boot (Linux /proc/stat; zeros elsewhere).
    Steal is the time the hypervisor ran other guests on this VM's CPUs."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return 0, 0
    return ticks[7], sum(ticks)


def steal_between(before, after):
    """The fraction of CPU time stolen between two cpu_ticks() readings."""
    return (after[0] - before[0]) / max(1, after[1] - before[1])


# --------------------------------------------------------------------------- inputs
def cover_transform(src_size, size):
    """Scale and (x, y) offset that make a src_size (w, h) frame cover `size` (w, h), centred."""
    scale = max(size[0] / src_size[0], size[1] / src_size[1])
    offset = ((round(src_size[0] * scale) - size[0]) // 2, (round(src_size[1] * scale) - size[1]) // 2)
    return scale, offset


def make_clip(path, seconds, size=(1280, 720), source=GRID_CLIP, fps=25):
    """`source` scaled to cover `size`, looped to `seconds`, as H.264; returns the face box (y1, y2, x1, x2)."""
    import cv2

    import videoio

    frames = list(videoio.read_frames(source))
    scale, (ox, oy) = cover_transform((frames[0].shape[1], frames[0].shape[0]), size)
    scaled = [cv2.resize(f, (round(f.shape[1] * scale), round(f.shape[0] * scale)),
                         interpolation=cv2.INTER_CUBIC)[oy:oy + size[1], ox:ox + size[0]] for f in frames]
    with videoio.VideoWriter(path, fps, size[0], size[1], preset="veryfast") as writer:
        for i in range(round(seconds * fps)):
            writer.write(scaled[i % len(scaled)])
    y1, y2, x1, x2 = GRID_FACE_BOX
    return (max(0, round(y1 * scale) - oy), min(size[1], round(y2 * scale) - oy),
            max(0, round(x1 * scale) - ox), min(size[0], round(x2 * scale) - ox))


def make_speech(path, seconds, sources):
    """The first `seconds` of real speech from `sources` played one after another, as 16 kHz wav."""
    import soundfile

    import audio

    parts, total = [], 0
    while total < seconds * 16000:
        for name in sources:
            parts.append(audio.load_wav(os.path.join(MEDIA, name), 16000))
            total += len(parts[-1])
    soundfile.write(path, np.concatenate(parts)[:seconds * 16000], 16000, subtype="PCM_16")


def load_check():
    spec = importlib.util.spec_from_file_location("conformance_check", os.path.join(SHARED, "conformance", "check.py"))
    if spec is None:
        sys.exit("no --checkpoint_path/--s3fd_path given and no conformance kit at %s for deterministic weights"
                 % SHARED)
    check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check)
    return check


def deterministic_weights(folder):
    """Wav2Lip and S3FD weights from the conformance kit's weight rule (seed 11), saved once.

    Also "steady" S3FD weights: the same, but with the six heads' weights zeroed and their
    biases set so that every anchor of the coarsest level (conv7_2, stride 128) scores 0.88 with
    no offset and every other anchor 0.007, below the candidate threshold. The network costs
    the same, but the original's tie-break then picks the same anchor box in every frame (in
    the bottom right corner, clipped by the frame), a box the generator can use, as a real face
    would give; the rule weights give boxes that jump from frame to frame and are mostly
    unusable, which would make --fast re-detect everything and generate nothing. (Ties over
    every anchor of every level would make the tie-break, not the network, the cost.)"""
    import torch

    paths = [os.path.join(folder, name) for name in ("wav2lip_seed11.pth", "s3fd_seed11.pth", "s3fd_steady_l6_seed11.pth")]
    if not all(os.path.isfile(p) for p in paths):
        check = load_check()
        torch.save({"state_dict": check.make_state_dict("wav2lip", 11)}, paths[0])
        s3fd = check.make_state_dict("s3fd", 11)
        torch.save(s3fd, paths[1])
        for key, value in s3fd.items():
            if "_mbox_" in key:
                value.zero_()
                if key.endswith("_mbox_conf.bias"):  # the face logit; background logits stay 0
                    value[-1] = 2.0 if key.startswith("conv7_2") else -5.0
        torch.save(s3fd, paths[2])
    return paths


# --------------------------------------------------------------------------- one measured run (a child process)
class FrameDump:
    """Raw BGR frames appended to a file, to compare two paths' frames after the runs."""

    def __init__(self, path):
        self.file = open(path, "wb")

    def __call__(self, frame):
        self.file.write(np.ascontiguousarray(frame).tobytes())


def run_worker(job):
    """Run one job (a dict) in this process and return its figures."""
    import torch

    import inference
    import videoio
    from options import SyncOptions

    if job["path"] == "detect":
        return detect_sample(job)
    device = job.get("device", "cpu")
    dump = FrameDump(job["dump"]) if job.get("dump") else None
    model = inference.load_model(job["checkpoint"], device)
    if job["path"] != "naive":  # as inference.py's main does
        model = inference.inference_model(model)
    box = job.get("box") or (-1, -1, -1, -1)
    if job["path"] == "naive":
        import naive_reference
        from face_detection.s3fd import S3FD

        net = None
        if box[0] == -1:
            net = S3FD()
            net.load_state_dict(torch.load(job["s3fd"], weights_only=True))
            net.to(device).eval()
        start = time.perf_counter()
        seconds = naive_reference.lipsync_video(model, job["face"], job["audio"], job["outfile"], net, box=box,
                                                frame_sink=dump)
        return {"seconds": seconds, "run_s": time.perf_counter() - start}
    if dump is not None:  # see every frame the faithful path hands to the encoder
        write = videoio.VideoWriter.write
        videoio.VideoWriter.write = lambda self, frame: (dump(frame), write(self, frame))
    detector = None
    if box[0] == -1:  # imported only then, as inference.py's main does
        from face_detection import load_detector

        detector = load_detector(None if job.get("embedded") else job["s3fd"], device, quiet=True)
    start = time.perf_counter()
    options = SyncOptions(box=box, fast=job.get("fast", False))
    stats = inference.lipsync_video(model, job["face"], job["audio"], job["outfile"], detector, options,
                                    cache_dir=job.get("cache_dir"), progress=False)
    return {"seconds": stats["seconds"], "frames": stats["frames"], "run_s": time.perf_counter() - start}


def detect_sample(job):
    """Per-frame detection cost on the first `sample` frames: original-style, ours, the bare network.

    Both detection paths see batches of `batch` frames. The original-style path is measured at
    batch 1, a lower bound of its cost: its batch path repeats every candidate once per frame of
    the batch, and its NMS over them grows faster than linearly."""
    import torch

    import naive_reference
    import videoio
    from face_detection.s3fd import S3FDDetector, clip_to_frame, preprocess

    frames = [f for _, f in zip(range(job["sample"]), videoio.read_frames(job["face"]))]
    device = torch.device(job.get("device", "cpu"))
    detector = S3FDDetector(job["s3fd"], device)
    out = {"frames": len(frames), "height": frames[0].shape[0], "width": frames[0].shape[1]}
    batch = job["batch"]
    with torch.inference_mode():
        if device.type == "cuda":  # warm up (cuDNN picks its algorithms) and time the GPU's work
            detector.detect(frames[:batch])
            torch.cuda.synchronize()
        start = time.perf_counter()
        for frame in frames:
            detector.net(preprocess([frame], device))
        if device.type == "cuda":
            torch.cuda.synchronize()
    out["forward_s"] = (time.perf_counter() - start) / len(frames)
    start = time.perf_counter()
    boxes = [b for i in range(0, len(frames), batch) for b in detector.detect(frames[i:i + batch])]
    out["faithful_s"] = (time.perf_counter() - start) / len(frames)
    out["faithful_boxes"] = boxes
    if job.get("naive"):
        start = time.perf_counter()
        naive = naive_reference.face_detect(detector.net, frames, batch)
        out["naive_s"] = (time.perf_counter() - start) / len(frames)
        height, width = frames[0].shape[:2]  # compared as the padding step sees them: within the frame
        out["naive_boxes"] = [b and clip_to_frame(b, width, height) for b in naive]
    return out


def measure(job, folder):
    """Run `job` in a child process: its figures, wall seconds and peak resident memory in MB."""
    job_path = os.path.join(folder, "job.json")
    result_path = os.path.join(folder, "result.json")
    with open(job_path, "w") as f:
        json.dump(dict(job, result=result_path), f)
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker", job_path], cwd=REPO)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    if status != 0:
        raise RuntimeError("benchmark job failed: %s" % json.dumps(job))
    with open(result_path) as f:
        result = json.load(f)
    return dict(result, wall_s=wall, peak_mb=usage.ru_maxrss / 1024)  # ru_maxrss is in KiB on Linux


def median_runs(job, folder, runs, before_each=None):
    """Median wall time, peak memory and per-stage seconds over `runs` runs of `job`."""
    results = []
    for _ in range(runs):
        if before_each is not None:
            before_each()
        results.append(measure(job, folder))
    wall = statistics.median(r["wall_s"] for r in results)
    seconds = {s: statistics.median(r["seconds"].get(s, 0.0) for r in results) for s in STAGES}
    return {"wall_s": wall, "walls": [r["wall_s"] for r in results], "peak_mb": max(r["peak_mb"] for r in results),
            "run_s": statistics.median(r["run_s"] for r in results), "seconds": seconds}


# --------------------------------------------------------------------------- comparisons and report
def compare_dumps(path_a, path_b, shape, box):
    """max and mean |a - b| over all frames inside `box`, and whether everything outside is equal."""
    size = int(np.prod(shape))
    a, b = np.memmap(path_a, np.uint8, "r"), np.memmap(path_b, np.uint8, "r")
    if a.size != b.size:
        return {"same_count": False}
    y1, y2, x1, x2 = box
    worst, total, outside_equal = 0, 0.0, True
    for i in range(a.size // size):
        fa = a[i * size:(i + 1) * size].reshape(shape).astype(np.int16)
        fb = b[i * size:(i + 1) * size].reshape(shape).astype(np.int16)
        diff = np.abs(fa - fb)
        worst = max(worst, int(diff[y1:y2, x1:x2].max()))
        total += float(diff[y1:y2, x1:x2].mean())
        diff[y1:y2, x1:x2] = 0
        outside_equal &= not diff.any()
    frames = a.size // size
    return {"same_count": True, "frames": frames, "max": worst, "mean": total / frames, "outside_equal": outside_equal}


def row(name, run, frames, seconds_of_audio, note=""):
    wall = run["wall_s"]
    stages = " ".join("%s %.1f" % (s, run["seconds"][s]) for s in STAGES if run["seconds"].get(s))
    return ("| %s | %.1f | %.1f | %.2f | %.1f | %s | %s | %s |"
            % (name, wall, frames / wall, wall / seconds_of_audio, run["run_s"],
               "%.0f" % run["peak_mb"] if run.get("peak_mb") else "-", stages, note))


def print_table(rows):
    print("| path | wall s | frames/s | real-time factor | in-process s | peak MB | stage seconds (overlapping) | note |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for line in rows:
        print(line)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint_path", help="Wav2Lip checkpoint (default: deterministic weights)")
    p.add_argument("--s3fd_path", help="S3FD weights (default: deterministic weights)")
    p.add_argument("--face", help="face video (default: the GRID clip at 1280x720, looped)")
    p.add_argument("--audio", help="speech (default: 10 s of jfk.wav)")
    p.add_argument("--box", nargs=4, type=int, help="face box y1 y2 x1 x2 for the faithful run (default: the GRID face)")
    p.add_argument("--seconds", type=int, default=10, help="length of the generated clip")
    p.add_argument("--runs", type=int, default=3, help="runs per path; medians are reported")
    p.add_argument("--detect_sample", type=int, default=4, help="frames on which detection cost is measured")
    p.add_argument("--embedded", action="store_true", help="also run --fast with the embedded detector")
    p.add_argument("--faithful-detection", dest="faithful_detection", action="store_true",
                   help="also run the faithful path with S3FD end to end (steady weights; hours on a small CPU)")
    p.add_argument("--compare-naive", dest="compare_naive", action="store_true",
                   help="also run the original-style path and compare outputs")
    p.add_argument("--memory", action="store_true", help="peak memory for 10 s and 60 s clips instead")
    p.add_argument("--device", default="cpu", help="cpu or cuda (every path runs there)")
    p.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "wav2lip-benchmark"))
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.worker:
        with open(args.worker) as f:
            job = json.load(f)
        result = run_worker(job)
        with open(job["result"], "w") as f:
            json.dump(result, f)
        return 0

    os.makedirs(args.workdir, exist_ok=True)
    work = args.workdir
    if args.checkpoint_path and args.s3fd_path:
        checkpoint, s3fd, steady_s3fd = args.checkpoint_path, args.s3fd_path, args.s3fd_path
    else:
        default_checkpoint, default_s3fd, steady_s3fd = deterministic_weights(work)
        checkpoint, s3fd = args.checkpoint_path or default_checkpoint, args.s3fd_path or default_s3fd
        steady_s3fd = args.s3fd_path or steady_s3fd
    if args.memory:
        return memory_report(work, checkpoint, s3fd, steady_s3fd, args)

    face, box = args.face, args.box
    if face is None:
        face = os.path.join(work, "grid_720p_%ds.mp4" % args.seconds)
        box = box or make_clip(face, args.seconds)
    speech, new_speech = args.audio, os.path.join(work, "speech_new_%ds.wav" % args.seconds)
    if speech is None:
        speech = os.path.join(work, "speech_%ds.wav" % args.seconds)
        make_speech(speech, args.seconds, ["jfk.wav"])
    make_speech(new_speech, args.seconds, ["fleurs-fr-001.ogg", "fleurs-de-009.ogg"])
    if box is None:
        sys.exit("--box is needed with --face")
    import inference
    import videoio

    fps = videoio.video_fps(face)
    frames = len(inference.mel_chunks(inference.audio.melspectrogram(inference.load_speech(speech)), fps))
    shape = next(videoio.read_frames(face)).shape
    audio_seconds = frames / fps
    common = dict(checkpoint=checkpoint, s3fd=s3fd, face=face, audio=speech, outfile=os.path.join(work, "out.mp4"),
                  device=args.device)
    print("device %s; clip %s (%dx%d, %d frames at %g fps), speech %s, %d runs per path, load average %.1f"
          % (args.device, face, shape[1], shape[0], frames, fps, speech, args.runs, os.getloadavg()[0]), flush=True)

    samples = [measure(dict(common, path="detect", sample=args.detect_sample, batch=1, naive=args.compare_naive),
                       work) for _ in range(args.runs)]
    per_frame = {k: statistics.median(s[k] for s in samples) for k in ("forward_s", "faithful_s", "naive_s")
                 if k in samples[0]}
    sample = samples[0]
    print("S3FD on %d frames of %dx%d, one at a time: bare network forward %.3f s/frame, faithful detection "
          "%.3f s/frame (%+.1f%%)" % (sample["frames"], sample["width"], sample["height"], per_frame["forward_s"],
                                      per_frame["faithful_s"],
                                      100 * (per_frame["faithful_s"] / per_frame["forward_s"] - 1)), flush=True)
    faithful = median_runs(dict(common, path="faithful", box=box), work, args.runs)
    cache_dir = os.path.join(work, "cache")

    fast = median_runs(dict(common, path="faithful", fast=True, cache_dir=cache_dir, s3fd=steady_s3fd), work,
                       args.runs, lambda: clear_cache(cache_dir))
    cached = median_runs(dict(common, path="faithful", fast=True, cache_dir=cache_dir, s3fd=steady_s3fd,
                              audio=new_speech), work, args.runs)
    faithful_full = faithful["wall_s"] + per_frame["faithful_s"] * frames
    rows = [row("faithful --box", faithful, frames, audio_seconds),
            extrapolated_row("faithful with detection", faithful, per_frame["faithful_s"], frames, audio_seconds),
            row("fast (first run)", fast, frames, audio_seconds, "S3FD, steady weights"),
            row("fast, cached re-run with new audio", cached, frames, audio_seconds, "S3FD, steady weights")]
    speedups = ["cached re-run vs first fast run: %.1fx faster" % (fast["wall_s"] / cached["wall_s"])]
    if args.faithful_detection:
        faithful_cache = os.path.join(work, "cache_faithful")
        detect_job = dict(common, path="faithful", s3fd=steady_s3fd, cache_dir=faithful_cache)
        detected = median_runs(detect_job, work, args.runs, lambda: clear_cache(faithful_cache))
        redone = median_runs(dict(detect_job, audio=new_speech), work, args.runs)
        rows[2:2] = [row("faithful with detection, measured", detected, frames, audio_seconds, "S3FD, steady weights"),
                     row("faithful, cached re-run with new audio", redone, frames, audio_seconds, "S3FD, steady weights")]
        speedups.append("faithful cached re-run vs first faithful run with detection: %.1fx faster"
                        % (detected["wall_s"] / redone["wall_s"]))
    if args.embedded:
        embedded = median_runs(dict(common, path="faithful", fast=True, embedded=True), work, args.runs)
        rows.append(row("fast (first run)", embedded, frames, audio_seconds, "embedded detector"))
    if args.compare_naive:
        naive_dump, faithful_dump = os.path.join(work, "naive.raw"), os.path.join(work, "faithful.raw")
        measure(dict(common, path="naive", box=box, dump=naive_dump), work)
        measure(dict(common, path="faithful", box=box, dump=faithful_dump), work)
        equality = compare_dumps(naive_dump, faithful_dump, shape, box)
        os.remove(naive_dump)
        os.remove(faithful_dump)
        naive = median_runs(dict(common, path="naive", box=box), work, args.runs)
        naive_full = naive["wall_s"] + per_frame["naive_s"] * frames
        same = [sum(a == b for a, b in zip(s["faithful_boxes"], s["naive_boxes"])) for s in samples]
        print("original-style S3FD %.2f s/frame; boxes identical to the faithful path's on %s of %d frames"
              % (per_frame["naive_s"], "/".join(map(str, same)), sample["frames"]))
        print("frames handed to the encoder, faithful vs naive (--box): %s" % json.dumps(equality))
        rows = [row("naive --box", naive, frames, audio_seconds),
                extrapolated_row("naive with detection", naive, per_frame["naive_s"], frames, audio_seconds)] + rows
        speedups = ["faithful --box vs naive --box: %.1fx faster" % (naive["wall_s"] / faithful["wall_s"]),
                    "faithful vs naive, with detection: %.1fx faster" % (naive_full / faithful_full),
                    "fast vs naive with detection: %.1fx faster" % (naive_full / fast["wall_s"])] + speedups
        print("naive --box wall per run: %s" % fmt(naive["walls"]))
    print()
    print_table(rows)
    print()
    for line in speedups:
        print(line)
    print("\nwall per run: faithful %s, fast %s, cached %s; load average now %.1f"
          % (fmt(faithful["walls"]), fmt(fast["walls"]), fmt(cached["walls"]), os.getloadavg()[0]))
    return 0


def clear_cache(folder):
    for name in os.listdir(folder) if os.path.isdir(folder) else []:
        os.remove(os.path.join(folder, name))


def extrapolated_row(name, box_run, detect_per_frame, frames, seconds_of_audio):
    wall = box_run["wall_s"] + detect_per_frame * frames
    return ("| %s | %.0f | %.2f | %.1f | %.0f | - | detect %.0f (extrapolated) | the --box run + %d frames x %.2f s |"
            % (name, wall, frames / wall, wall / seconds_of_audio, box_run["run_s"] + detect_per_frame * frames,
               detect_per_frame * frames, frames, detect_per_frame))


def fmt(values):
    return "/".join("%.1f" % v for v in values)


def memory_report(work, checkpoint, s3fd, steady_s3fd, args):
    """Peak memory on 10 s and 60 s of 720p: faithful with --box, --fast with S3FD (steady
    weights); and the faithful path with S3FD end to end on 2 s of 720p (its detection pass
    keeps only boxes, so its peak does not grow with the length; 60 s would take an hour)."""
    def clip_job(seconds):
        face = os.path.join(work, "grid_720p_%ds.mp4" % seconds)
        speech = os.path.join(work, "speech_%ds.wav" % seconds)
        box = make_clip(face, seconds)
        make_speech(speech, seconds, ["jfk.wav"] if seconds <= 10 else ["fleurs-de-009.ogg", "fleurs-fr-001.ogg"])
        return dict(checkpoint=checkpoint, s3fd=s3fd, face=face, audio=speech, outfile=os.path.join(work, "out.mp4"),
                    device=args.device, path="faithful"), box

    rows = []
    for seconds in (10, 60):
        job, box = clip_job(seconds)
        faithful = measure(dict(job, box=box), work)
        fast = measure(dict(job, fast=True, s3fd=steady_s3fd), work)
        rows.append((faithful, fast))
        print("%d s of 720p: faithful --box %.0f MB (%.0f s), fast %.0f MB (%.0f s)"
              % (seconds, faithful["peak_mb"], faithful["wall_s"], fast["peak_mb"], fast["wall_s"]), flush=True)
    detected = measure(dict(clip_job(2)[0], s3fd=steady_s3fd), work)
    print("2 s of 720p: faithful with S3FD detection %.0f MB (%.0f s)" % (detected["peak_mb"], detected["wall_s"]))
    (f10, q10), (f60, q60) = rows
    print("60 s minus 10 s: faithful %+.0f MB, fast %+.0f MB"
          % (f60["peak_mb"] - f10["peak_mb"], q60["peak_mb"] - q10["peak_mb"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
