"""Generating the benchmark videos (LRS2 / LRS3 / LRW test lists, ReSyncED pairs) in-process.

The model and the face detector are loaded once; every (video, audio) pair is written by
`inference.lipsync_video` to a name derived from the pair, so a rerun skips what is done.
Protocol details follow the original generators: a pair whose video is shorter than its
audio is skipped (LRS, ReSyncED random/dubbed) or stretched by repeating frames (ReSyncED
tts), and a video with a frame without a face is skipped.
"""
import os
import sys
import tempfile

import cv2
import numpy as np
from tqdm import tqdm

import audio
import inference
import videoio
from options import SyncOptions


def read_lrs_pairs(filelist, data_root):
    """[(video, audio)] paths of an LRS2 / LRS3 / LRW test list.

    Each line is "<audio id> <video id>" (audio first), ids relative to `data_root` without
    the .mp4 extension, e.g. "6330311066473698535/00011 6330311066473698535/00018".
    """
    pairs = []
    for audio_id, video_id in _list_lines(filelist):
        pairs.append((os.path.join(data_root, video_id) + ".mp4", os.path.join(data_root, audio_id) + ".mp4"))
    return pairs


def read_resynced_pairs(filelist, data_root):
    """[(video, audio)] paths of a ReSyncED list: "<video file> <audio file>" relative to data_root."""
    return [(os.path.join(data_root, v), os.path.join(data_root, a)) for v, a in _list_lines(filelist)]


def dubbed_pairs(data_root):
    """ReSyncED "dubbed" mode: every file of data_root with its own audio track."""
    names = sorted(n for n in os.listdir(data_root) if os.path.isfile(os.path.join(data_root, n)))
    return [(os.path.join(data_root, n), os.path.join(data_root, n)) for n in names]


def _list_lines(filelist):
    if not os.path.isfile(filelist):
        raise ValueError("filelist not found: %s" % filelist)
    rows = []
    with open(filelist) as f:
        for number, line in enumerate(f, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2:
                raise ValueError("%s line %d: expected two names, got %r" % (filelist, number, line.strip()))
            rows.append(tuple(fields))
    return rows


def output_name(video, audio_path, data_root):
    """"<audio>__<video>.mp4" from the paths relative to data_root, folders joined by "_"."""
    def flat(path):
        return os.path.splitext(os.path.relpath(path, data_root))[0].replace(os.sep, "_")
    return "%s__%s.mp4" % (flat(audio_path), flat(video))


def benchmark_frame_count(audio_path, fps):
    """Frames the original generators made for this audio: one per full 16-column mel window."""
    mel = audio.melspectrogram(inference.load_speech(audio_path))
    return len(inference.mel_chunk_starts(mel.shape[1], fps)) - 1  # they had no extra final window


def count_frames(video):
    return sum(1 for _ in videoio.read_frames(video))


def stretch_indices(n_frames, length):
    """Indices that stretch n_frames to `length` by repeating frames evenly (ReSyncED tts)."""
    return np.arange(length) * n_frames // length


def face_res_factor(face_size, height, width, face_res=180, min_frame_res=480):
    """The ReSyncED generator's downscale factor: bring the face near `face_res` pixels.

    Grow the factor from 2 while the frame stays at least `min_frame_res` and the scaled face
    gets closer to `face_res` than the unscaled one was; keep the last factor that did.
    """
    best = abs(face_size - face_res)
    factor = 2
    while factor < 15:
        if min(height // factor, width // factor) < min_frame_res or abs(face_size // factor - face_res) >= best:
            break
        factor += 1
    return factor - 1


def prepare_real_video(video, count, detector, path, stretch=False, face_res=180, min_frame_res=480,
                       max_frame_res=720):
    """Write `video` as the ReSyncED generator saw it: downscaled, and stretched to `count` frames.

    Frames whose shorter side exceeds max_frame_res are scaled down to it; then the face of
    the first frame sets an integer downscale (face_res_factor). Returns the fps.
    """
    fps = videoio.video_fps(video)
    frames = []
    for frame in videoio.read_frames(video):
        h, w = frame.shape[:2]
        if min(h, w) > max_frame_res:
            scale = min(h, w) / float(max_frame_res)
            frame = cv2.resize(frame, (int(w / scale), int(h / scale)))
        frames.append(frame)
    if not frames:
        raise ValueError("%s has no decodable video frames" % video)
    if len(frames) < count and not stretch:
        raise ValueError("video %s has %d frames but the audio needs %d; the protocol skips it"
                         % (video, len(frames), count))
    box = detector.detect(frames[:1])[0]
    if box is None:
        raise ValueError("no face in the first frame of %s" % video)
    h, w = frames[0].shape[:2]
    factor = face_res_factor(max(box[2] - box[0], box[3] - box[1]), h, w, face_res, min_frame_res)
    length = count + 1  # the inference core also renders the final, partial mel window
    chosen = stretch_indices(len(frames), length) if len(frames) < length else range(length)
    out_h, out_w = h // factor, w // factor
    with videoio.VideoWriter(path, fps, out_w, out_h, crf=10) as writer:
        for i in chosen:
            writer.write(frames[i] if factor == 1 else cv2.resize(frames[i], (out_w, out_h)))
    return fps


def _log_above_progress_bar(line):
    tqdm.write(line, file=sys.stderr)


def generate_all(pairs, results_dir, make_video, data_root, progress=True, log=_log_above_progress_bar):
    """Run `make_video(video, audio, outfile)` for every pair whose output does not exist yet.

    A pair that fails (any ValueError: missing file, no face, too short...) is reported in
    one line and skipped. Returns {"generated", "done_before", "failed": [(pair, reason)]}.
    """
    os.makedirs(results_dir, exist_ok=True)
    summary = {"generated": 0, "done_before": 0, "failed": []}
    for video, audio_path in tqdm(pairs, desc="generating", unit="video", disable=not progress):
        outfile = os.path.join(results_dir, output_name(video, audio_path, data_root))
        if os.path.exists(outfile):
            summary["done_before"] += 1
            continue
        try:
            make_video(video, audio_path, outfile)
        except ValueError as e:  # the inference core's input errors are ValueError subclasses
            summary["failed"].append(((video, audio_path), str(e)))
            log("failed %s + %s: %s" % (video, audio_path, e))
            continue
        summary["generated"] += 1
    return summary


def format_generation_summary(summary, n_pairs):
    return "%d generated, %d already done, %d failed (of %d pairs)" % (
        summary["generated"], summary["done_before"], len(summary["failed"]), n_pairs)


def lrs_maker(model, detector, pads=(0, 0, 0, 0), box=(-1, -1, -1, -1), face_det_batch_size=64,
              wav2lip_batch_size=128, fps=25.0):
    """make_video for the LRS protocol: 25 fps face-centred clips, one output frame per mel window."""
    def make_video(video, audio_path, outfile):
        for path, what in ((video, "video"), (audio_path, "audio")):
            if not os.path.isfile(path):
                raise ValueError("%s file not found: %s" % (what, path))
        needed = benchmark_frame_count(audio_path, fps)
        available = count_frames(video)
        if available < needed:
            raise ValueError("video %s has %d frames but the audio needs %d; the protocol skips it"
                             % (video, available, needed))
        options = SyncOptions(pads=pads, box=box, face_det_batch_size=face_det_batch_size,
                              wav2lip_batch_size=wav2lip_batch_size, on_no_face="error")
        inference.lipsync_video(model, video, audio_path, outfile, detector, options, progress=False)
    return make_video


def resynced_maker(model, detector, stretch=False, pads=(0, 10, 0, 0), face_det_batch_size=16,
                   wav2lip_batch_size=128, face_res=180, min_frame_res=480, max_frame_res=720):
    """make_video for ReSyncED real videos (any fps; `stretch` for the tts mode)."""
    def make_video(video, audio_path, outfile):
        for path, what in ((video, "video"), (audio_path, "audio")):
            if not os.path.isfile(path):
                raise ValueError("%s file not found: %s" % (what, path))
        count = benchmark_frame_count(audio_path, videoio.video_fps(video))
        with tempfile.TemporaryDirectory(prefix="resynced_") as tmp:
            prepared = os.path.join(tmp, "face.mp4")
            prepare_real_video(video, count, detector, prepared, stretch, face_res, min_frame_res, max_frame_res)
            options = SyncOptions(pads=pads, face_det_batch_size=face_det_batch_size,
                                  wav2lip_batch_size=wav2lip_batch_size, on_no_face="error")
            inference.lipsync_video(model, prepared, audio_path, outfile, detector, options, progress=False)
    return make_video
