"""Preprocess an LRS2-style corpus for training: the face crop of every frame and the audio.

    python preprocess.py --data_root lrs2/main --preprocessed_root lrs2_preprocessed
    python preprocess.py ... --ngpu 4                          # one face detector per GPU
    python preprocess.py ... --num_workers 4                   # without a GPU: 4 CPU processes
    python preprocess.py ... --shard_index 3 --num_shards 10   # this machine takes every 10th video

Input: <data_root>/<speaker>/<id>.mp4. Output: <preprocessed_root>/<speaker>/<id>/<frame>.jpg,
the detected face of every frame (no padding; frames without a face leave a gap in the
numbering), and audio.wav (16 kHz mono 16-bit PCM, extracted with the ffmpeg of imageio-ffmpeg).
Each video is written into a hidden .partial folder that is renamed when complete, so an
interrupted run is resumed by running it again: complete videos are skipped, unfinished ones
redone. A video that cannot be read is reported and skipped; a summary ends the run, with exit
status 1 when no video of the shard is complete. Training maps frames to mel columns at
hparams.fps (25): a video at another frame rate is converted on the way in, each output frame
being the input frame nearest to it in time (frames are dropped or repeated).
"""
import argparse
import glob
import multiprocessing
import os
import shutil
import subprocess
import sys

import cv2
import imageio_ffmpeg
import torch
from tqdm import tqdm

import face_detection
import videoio
from hparams import add_hparams_argument, apply_overrides, hparams
from models.checkpoint import CheckpointError


class PreprocessError(RuntimeError):
    """A video that cannot be preprocessed; the message says why in one line."""


def list_videos(data_root, shard_index=0, num_shards=1):
    """This shard's share of <data_root>/<speaker>/<id>.mp4, in a fixed order."""
    return sorted(glob.glob(os.path.join(glob.escape(data_root), "*", "*.mp4")))[shard_index::num_shards]


def output_folder(video, preprocessed_root):
    speaker = os.path.basename(os.path.dirname(video))
    return os.path.join(preprocessed_root, speaker, os.path.splitext(os.path.basename(video))[0])


def is_complete(folder):
    # Folders are renamed into place only when complete; one without audio.wav comes from elsewhere.
    return os.path.isfile(os.path.join(folder, "audio.wav"))


def extract_audio(video, wav_path):
    """The video's audio track as 16 kHz mono PCM, resampled with soxr like audio.load_wav."""
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-y", "-i", video, "-vn",
               "-af", "aresample=resampler=soxr", "-ac", "1", "-ar", str(hparams.sample_rate), "-c:a", "pcm_s16le",
               wav_path]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0 or not os.path.isfile(wav_path):
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        raise PreprocessError("no audio extracted: %s" % (lines[-1] if lines else "ffmpeg failed"))


def at_frame_rate(frames, fps_in, fps_out):
    """`frames` (at fps_in) resampled to fps_out: output frame k is the input frame nearest to k / fps_out."""
    k = 0
    for j, frame in enumerate(frames):
        while int(k * fps_in / fps_out + 0.5) == j:
            yield frame
            k += 1


def training_frames(video):
    """The frames of `video` at the frame rate training assumes (hparams.fps)."""
    fps = videoio.video_fps(video)
    frames = videoio.read_frames(video)
    return frames if abs(fps - hparams.fps) < 0.01 else at_frame_rate(frames, fps, hparams.fps)


def write_face_crops(video, folder, detector, batch_size):
    """<folder>/<frame>.jpg for every frame with a face; returns (frames, frames with a face)."""
    frames = faces = 0
    batch = []

    def flush():
        nonlocal frames, faces
        for image, box in zip(batch, detector.detect(batch)):
            if box is not None:
                x1, y1, x2, y2 = box
                crop = image[y1:y2, x1:x2]
                if crop.size:
                    cv2.imwrite(os.path.join(folder, "%d.jpg" % frames), crop)
                    faces += 1
            frames += 1
        batch.clear()

    for image in training_frames(video):
        batch.append(image)
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    if frames == 0:
        raise PreprocessError("no video frames could be decoded")
    return frames, faces


def process_video(video, preprocessed_root, detector, batch_size):
    """Preprocess one video into its output folder; returns (frames, frames with a face)."""
    folder = output_folder(video, preprocessed_root)
    partial = os.path.join(os.path.dirname(folder), ".%s.partial" % os.path.basename(folder))
    shutil.rmtree(partial, ignore_errors=True)  # left by an interrupted run
    os.makedirs(partial)
    try:
        extract_audio(video, os.path.join(partial, "audio.wav"))
        counts = write_face_crops(video, partial, detector, batch_size)
        shutil.rmtree(folder, ignore_errors=True)  # an incomplete folder written by another tool
        os.replace(partial, folder)
        return counts
    finally:
        shutil.rmtree(partial, ignore_errors=True)


# ------------------------------------------------------------------ one detector per worker process
_worker = {}


def _start_worker(devices, s3fd_path, batch_size, preprocessed_root, threads, overrides):
    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)
    hparams.parse(overrides)  # spawned workers import hparams afresh
    _worker.update(device=devices.get(), s3fd_path=s3fd_path, batch_size=batch_size,
                   preprocessed_root=preprocessed_root, detector=None)


def _run_job(video):
    """(video, error message or None, frames, faces); never raises for a bad video."""
    try:
        if _worker["detector"] is None:  # loaded on first use: a fully resumed run needs none
            _worker["detector"] = face_detection.load_detector(_worker["s3fd_path"], _worker["device"], quiet=True)
        frames, faces = process_video(video, _worker["preprocessed_root"], _worker["detector"],
                                      _worker["batch_size"])
        return video, None, frames, faces
    except Exception as e:  # any failure of one video is reported, never fatal to the run
        message = str(e).splitlines()[0] if str(e).strip() else type(e).__name__
        return video, message, 0, 0


def main(argv=None):
    parser = argparse.ArgumentParser(description="Face crops and audio of an LRS2-style corpus for training")
    parser.add_argument("--data_root", required=True, help="folder of <speaker>/<id>.mp4 videos (LRS2: .../main)")
    parser.add_argument("--preprocessed_root", required=True, help="output folder")
    parser.add_argument("--batch_size", type=int, default=32, help="frames per face-detection batch")
    parser.add_argument("--ngpu", type=int, default=1, help="GPUs to detect faces on in parallel")
    parser.add_argument("--num_workers", type=int, default=1, help="processes to use when there is no GPU")
    parser.add_argument("--shard_index", type=int, default=0, help="which share of the videos this run takes")
    parser.add_argument("--num_shards", type=int, default=1, help="number of runs sharing the corpus")
    parser.add_argument("--s3fd_path", default=None,
                        help="S3FD weights (default: face_detection/detection/sfd/s3fd.pth, else the embedded "
                             "detector)")
    add_hparams_argument(parser)
    args = parser.parse_args(argv)
    apply_overrides(args, parser)
    if not os.path.isdir(args.data_root):
        parser.error("--data_root %s is not a folder" % args.data_root)
    if not 0 <= args.shard_index < args.num_shards:
        parser.error("--shard_index must be in 0 .. --num_shards - 1")
    if args.batch_size < 1:
        parser.error("--batch_size must be at least 1")

    videos = list_videos(args.data_root, args.shard_index, args.num_shards)
    if not videos:
        sys.exit("error: no <speaker>/<id>.mp4 video under %s (shard %d of %d)"
                 % (args.data_root, args.shard_index, args.num_shards))
    jobs = [v for v in videos if not is_complete(output_folder(v, args.preprocessed_root))]
    if torch.cuda.is_available() and args.ngpu > 0:
        devices = ["cuda:%d" % i for i in range(min(args.ngpu, torch.cuda.device_count()))]
    else:
        devices = ["cpu"] * max(1, args.num_workers)
    print("%d videos (shard %d of %d): %d already complete, %d to process on %d worker(s) (%s)"
          % (len(videos), args.shard_index, args.num_shards, len(videos) - len(jobs), len(jobs), len(devices),
             devices[0]))

    detector = load_detector_once(args.s3fd_path, devices[0]) if jobs else None
    threads = max(1, (os.cpu_count() or 1) // len(devices)) if devices[0] == "cpu" else 1
    context = multiprocessing.get_context("spawn")  # CUDA cannot be used in forked workers
    queue = context.Queue()
    for device in devices:
        queue.put(device)
    worker_args = (queue, args.s3fd_path, args.batch_size, args.preprocessed_root, threads, args.hparams)
    if len(devices) == 1 or len(jobs) <= 1:
        _start_worker(*worker_args)
        _worker["detector"] = detector
        results = map(_run_job, jobs)
        pool = None
    else:
        del detector  # each worker loads its own
        pool = context.Pool(len(devices), initializer=_start_worker, initargs=worker_args)
        results = pool.imap_unordered(_run_job, jobs)
    failures, frames, faces = [], 0, 0
    for video, error, video_frames, video_faces in tqdm(results, total=len(jobs), desc="videos",
                                                        dynamic_ncols=True):
        if error is None:
            frames, faces = frames + video_frames, faces + video_faces
        else:
            failures.append((video, error))
            tqdm.write("skipped %s: %s" % (video, error))
    if pool is not None:
        pool.close()
        pool.join()

    print("done: %d processed (%d frames, %d with a face), %d already complete, %d failed"
          % (len(jobs) - len(failures), frames, faces, len(videos) - len(jobs), len(failures)))
    for video, error in sorted(failures):
        print("  failed %s: %s" % (video, error))
    if len(failures) == len(videos):
        sys.exit("error: none of the %d videos could be preprocessed (see the failures above)" % len(videos))
    return failures


def load_detector_once(s3fd_path, device):
    """The face detector, its weights read now: a bad --s3fd_path fails once, before any video."""
    try:
        detector = face_detection.load_detector(s3fd_path, device)
        getattr(detector, "net", None)  # S3FD reads its weights at first use
    except CheckpointError as e:
        sys.exit("error: %s" % e)
    return detector


if __name__ == "__main__":
    main()
