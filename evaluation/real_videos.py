"""Scoring videos "in the wild": face tracks cropped as syncnet_python's run_pipeline.py did.

Steps (LSE spec, section 7): convert to 25 fps, detect the face in every frame, cut the
video into shots, chain detections into face tracks, crop a smoothed square around each
track, and score every crop like a benchmark video. Only tracks longer than `min_track`
frames with faces larger than `min_face_size` pixels are scored, as in the original.
"""
import os
import tempfile
from glob import escape, glob

import cv2
import numpy as np
from scipy.io import wavfile
from scipy.signal import medfilt

from .lse import FPS, SAMPLES_PER_FRAME
from .video import MediaError, probe, run_ffmpeg, score_video

MIN_TRACK = 100  # frames
NUM_FAILED_DET = 25  # frames a track may go without a detection
MIN_FACE_SIZE = 100  # pixels
IOU_THRESHOLD = 0.5
FACEDET_SCALE = 0.25  # S3FD's speed-up in the original; other detectors see full frames
CROP_SCALE = 0.4
SMOOTH_KERNEL = 13
PAD_VALUE = 110
CROP_SIZE = 224
# PySceneDetect ContentDetector defaults: mean HSV change that makes a cut, shortest shot.
SCENE_THRESHOLD = 30.0
MIN_SCENE_LEN = 15


class NoFaceTrackError(ValueError):
    """A video in which no face track is long and large enough to be scored."""


def iou(a, b):
    """Intersection over union of two (x1, y1, x2, y2) boxes."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def hsv_change(previous, current):
    """Mean absolute change of H, S and V between two frames, averaged over the channels."""
    a = cv2.cvtColor(previous, cv2.COLOR_BGR2HSV).astype(np.int32)
    b = cv2.cvtColor(current, cv2.COLOR_BGR2HSV).astype(np.int32)
    return float(np.abs(a - b).mean())


def shot_boundaries(changes, n_frames, threshold=SCENE_THRESHOLD, min_scene_len=MIN_SCENE_LEN):
    """[(start, end)] shots from the change between frame i-1 and frame i (changes[i-1])."""
    cuts, last_cut = [], -min_scene_len  # the first cut may come at any frame
    for i, change in enumerate(changes, start=1):
        if change >= threshold and i - last_cut >= min_scene_len:
            cuts.append(i)
            last_cut = i
    edges = [0] + cuts + [n_frames]
    return list(zip(edges[:-1], edges[1:]))


def track_faces(detections, start, end, min_track=MIN_TRACK, min_face_size=MIN_FACE_SIZE):
    """Face tracks in frames [start, end) as (frame numbers, (n, 4) boxes), gaps interpolated.

    Greedy, as the original: a detection joins the track if the track's last face is at most
    NUM_FAILED_DET frames back and overlaps it with IoU > 0.5; repeat until no track starts.
    """
    remaining = {f: list(detections[f]) for f in range(start, end)}
    tracks = []
    while True:
        track = []
        for frame in range(start, end):
            for box in remaining[frame]:
                if not track or (frame - track[-1][0] <= NUM_FAILED_DET and iou(box, track[-1][1]) > IOU_THRESHOLD):
                    track.append((frame, box))
                    remaining[frame].remove(box)
                    break
            if track and frame - track[-1][0] > NUM_FAILED_DET:
                break
        if not track:
            return tracks
        if len(track) <= min_track:
            continue
        frames = np.array([f for f, _ in track])
        boxes = np.array([b for _, b in track], dtype=np.float64)
        every = np.arange(frames[0], frames[-1] + 1)
        filled = np.stack([np.interp(every, frames, boxes[:, c]) for c in range(4)], axis=1)
        if max(np.mean(filled[:, 2] - filled[:, 0]), np.mean(filled[:, 3] - filled[:, 1])) > min_face_size:
            tracks.append((every, filled))


def crop_windows(boxes):
    """Per frame (half size s, centre x, centre y), each median-filtered over the track."""
    s = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) / 2
    cx = (boxes[:, 0] + boxes[:, 2]) / 2
    cy = (boxes[:, 1] + boxes[:, 3]) / 2
    return [medfilt(v, kernel_size=SMOOTH_KERNEL) for v in (s, cx, cy)]


def crop_face(frame, s, cx, cy):
    """The 224x224 crop of run_pipeline.py: a 2.8 s square reaching further below the centre."""
    pad = int(s * (1 + 2 * CROP_SCALE))
    padded = cv2.copyMakeBorder(frame, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=(PAD_VALUE,) * 3)
    my, mx = cy + pad, cx + pad
    face = padded[int(my - s):int(my + s * (1 + 2 * CROP_SCALE)), int(mx - s * (1 + CROP_SCALE)):int(mx + s * (1 + CROP_SCALE))]
    return cv2.resize(face, (CROP_SIZE, CROP_SIZE))


def _detect_all(frame_paths, detector, facedet_scale, batch_size=16):
    """Per frame a list of face boxes in full-resolution coordinates (our detector gives at most one)."""
    detections = []
    for i in range(0, len(frame_paths), batch_size):
        frames = [cv2.imread(p) for p in frame_paths[i:i + batch_size]]
        small = frames if facedet_scale == 1 else [cv2.resize(f, None, fx=facedet_scale, fy=facedet_scale)
                                                   for f in frames]
        for box in detector.detect(small):
            detections.append([] if box is None else [tuple(v / facedet_scale for v in box)])
    return detections


def _write_crop(frame_paths, frames, boxes, samples, path):
    """Write one track's crops as an XVID AVI at 25 fps with the audio of its time span."""
    video_only = path + ".video.avi"
    writer = cv2.VideoWriter(video_only, cv2.VideoWriter_fourcc(*"XVID"), FPS, (CROP_SIZE, CROP_SIZE))
    for frame, s, cx, cy in zip(frames, *crop_windows(boxes)):
        writer.write(crop_face(cv2.imread(frame_paths[frame]), s, cx, cy))
    writer.release()
    wav = path + ".wav"
    wavfile.write(wav, 16000, samples[frames[0] * SAMPLES_PER_FRAME:(frames[-1] + 1) * SAMPLES_PER_FRAME])
    run_ffmpeg(["-i", video_only, "-i", wav, "-c:v", "copy", "-c:a", "copy", path], path)


def default_facedet_scale(detector):
    return FACEDET_SCALE if detector.name == "S3FD" else 1.0


def score_real_video(path, syncnet, detector, min_track=MIN_TRACK, min_face_size=MIN_FACE_SIZE,
                     facedet_scale=None, batch_size=20):
    """Scores of every usable face track of a raw video: a list of dicts, one per track.

    Each dict is `score_video`'s result plus "track" (0, 1, ...), "first_frame" and
    "last_frame" (at 25 fps). Raises NoFaceTrackError when no track qualifies.
    `facedet_scale` defaults to 0.25 for S3FD (as the original) and 1 for other detectors.
    """
    facedet_scale = facedet_scale or default_facedet_scale(detector)
    if not probe(path)[1]:
        raise MediaError("%s has no audio track; LSE compares the lips with the speech" % path)
    with tempfile.TemporaryDirectory(prefix="lse_real_") as tmp:
        avi = os.path.join(tmp, "video.avi")
        run_ffmpeg(["-i", str(path), "-qscale:v", "2", "-async", "1", "-r", str(FPS), avi], path)
        run_ffmpeg(["-i", avi, "-qscale:v", "2", "-threads", "1", "-f", "image2", os.path.join(tmp, "%06d.jpg")], path)
        frame_paths = sorted(glob(os.path.join(escape(tmp), "*.jpg")))
        run_ffmpeg(["-i", avi, "-ac", "1", "-vn", "-acodec", "pcm_s16le", "-ar", "16000", os.path.join(tmp, "audio.wav")],
                   path)
        samples = wavfile.read(os.path.join(tmp, "audio.wav"))[1]

        detections = _detect_all(frame_paths, detector, facedet_scale)
        changes, previous = [], None
        for p in frame_paths:
            current = cv2.imread(p)
            if previous is not None:
                changes.append(hsv_change(previous, current))
            previous = current
        tracks = []
        for start, end in shot_boundaries(changes, len(frame_paths)):
            if end - start >= min_track:
                tracks += track_faces(detections, start, end, min_track, min_face_size)
        if not tracks:
            found = sum(bool(d) for d in detections)
            raise NoFaceTrackError("no face track in %s: faces found in %d of %d frames; a track needs more than "
                                   "%d frames (at 25 fps) of one face larger than %d pixels"
                                   % (path, found, len(frame_paths), min_track, min_face_size))
        results = []
        for index, (frames, boxes) in enumerate(tracks):
            crop = os.path.join(tmp, "track%05d.avi" % index)
            _write_crop(frame_paths, frames, boxes, samples, crop)
            result = score_video(crop, syncnet, batch_size=batch_size)
            results.append(dict(result, track=index, first_frame=int(frames[0]), last_frame=int(frames[-1])))
        return results
