"""LSE-D / LSE-C of one clip: SyncNet v2 windows, the 31-shift distance curve, offset and confidence.

Everything follows the LSE spec (sections 5 and 6) so that the numbers equal those of the
original Wav2Lip evaluation scripts; in particular distances stay float32 as they were there.
"""
import cv2
import numpy as np
import torch
import torch.nn.functional as F

from lipsync import full_float32
from .features import mfcc

FPS = 25
SAMPLES_PER_FRAME = 640  # 16000 Hz / 25 fps
MFCC_STEPS_PER_FRAME = 4
WINDOW_FRAMES = 5
AUDIO_WINDOW_STEPS = 20  # 0.2 s of MFCC steps
VSHIFT = 15  # shifts -15..+15 frames: a curve of 31 mean distances
BATCH_SIZE = 20
INPUT_SIZE = 224
MIN_FRAMES = WINDOW_FRAMES + 1  # the original never uses the last possible window
MIN_SAMPLES = MIN_FRAMES * SAMPLES_PER_FRAME


class ClipTooShortError(ValueError):
    """A clip with too few frames or samples for a single SyncNet window."""


def _device(syncnet):
    return next(syncnet.parameters()).device


def embed_video(frames_bgr, n_windows, syncnet, batch_size=BATCH_SIZE):
    """(n_windows, 1024) embeddings of 5-frame windows starting at frames 0..n_windows-1."""
    resized = np.stack([cv2.resize(f, (INPUT_SIZE, INPUT_SIZE)) for f in frames_bgr[:n_windows + WINDOW_FRAMES - 1]])
    clip = torch.from_numpy(resized).permute(3, 0, 1, 2)  # (3 B/G/R, T, 224, 224), raw 0..255
    device = _device(syncnet)
    out = []
    # No TF32 on CUDA: it moves the distances by ~1e-3, beyond the metric's reproducibility.
    with torch.no_grad(), full_float32():
        for start in range(0, n_windows, batch_size):
            starts = range(start, min(start + batch_size, n_windows))
            batch = torch.stack([clip[:, v:v + WINDOW_FRAMES] for v in starts]).to(device, torch.float32)
            out.append(syncnet.forward_lip(batch).cpu())
    return torch.cat(out)


def embed_audio(mfcc_rows, n_windows, syncnet, batch_size=BATCH_SIZE):
    """(n_windows, 1024) embeddings of the 20-step MFCC windows aligned with each video window."""
    coefficients = torch.from_numpy(np.ascontiguousarray(mfcc_rows.T)).float()  # (13, F)
    device = _device(syncnet)
    out = []
    with torch.no_grad(), full_float32():
        for start in range(0, n_windows, batch_size):
            steps = [MFCC_STEPS_PER_FRAME * v for v in range(start, min(start + batch_size, n_windows))]
            batch = torch.stack([coefficients[None, :, s:s + AUDIO_WINDOW_STEPS] for s in steps]).to(device)
            out.append(syncnet.forward_aud(batch).cpu())
    return torch.cat(out)


def distance_curve(video_emb, audio_emb, vshift=VSHIFT):
    """(N, 2*vshift+1) float32 distances of video window i to audio window i + k - vshift.

    Audio windows outside the clip are zero vectors, as in the original, so the ends of the
    curve measure the norm of the video embeddings.
    """
    n = len(video_emb)
    padded = F.pad(audio_emb.float(), (0, 0, vshift, vshift))
    return torch.stack([F.pairwise_distance(video_emb.float(), padded[k:k + n]) for k in range(2 * vshift + 1)], 1)


def sync_scores(video_emb, audio_emb, vshift=VSHIFT):
    """offset, min_dist, confidence and the mean-distance curve of matching embeddings."""
    curve = distance_curve(video_emb, audio_emb, vshift).mean(0)
    best = int(torch.argmin(curve))
    min_dist = curve[best]
    confidence = torch.median(curve) - min_dist  # odd length: the true median
    return {"offset": vshift - best, "min_dist": float(min_dist), "confidence": float(confidence),
            "curve": curve.tolist()}


def window_count(n_frames, n_samples):
    """Number of SyncNet windows N = min_length - 5; rejects clips without a single window."""
    min_length = min(n_frames, n_samples // SAMPLES_PER_FRAME)
    if min_length < MIN_FRAMES:
        raise ClipTooShortError(
            "clip too short for LSE: %d frames and %d audio samples (%.2f s); it needs at least %d frames "
            "and %d samples at 16 kHz (%.2f s)" % (n_frames, n_samples, n_samples / 16000.0, MIN_FRAMES,
                                                   MIN_SAMPLES, MIN_SAMPLES / 16000.0))
    return min_length - WINDOW_FRAMES


def score_arrays(frames_bgr, samples, syncnet, batch_size=BATCH_SIZE):
    """Sync scores of BGR uint8 frames (25 fps, any size) and int16 mono 16 kHz samples.

    Returns {"offset", "min_dist", "confidence", "curve", "n_windows"}; curve[k] is the mean
    distance at offset 15 - k. A positive offset means the audio runs ahead of the video.
    """
    samples = np.asarray(samples)
    if samples.ndim != 1 or not np.issubdtype(samples.dtype, np.integer):
        # Audio scaled to [-1, 1) would silently shift every MFCC coefficient 0 by 20.8.
        raise ValueError("samples must be 1-D mono int16 values, got %s of shape %s" % (samples.dtype, samples.shape))
    n = window_count(len(frames_bgr), len(samples))
    video_emb = embed_video(frames_bgr, n, syncnet, batch_size)
    audio_emb = embed_audio(mfcc(samples), n, syncnet, batch_size)
    return dict(sync_scores(video_emb, audio_emb), n_windows=n)
