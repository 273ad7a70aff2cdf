"""Training samples drawn from a preprocessed corpus exactly as the original trainers draw them.

A corpus is <data_root>/<speaker>/<id>/ holding <frame>.jpg face crops (gaps where no face
was found) and audio.wav. The original globbed the folder and recomputed the whole mel
spectrogram on every sample; here each video's jpg numbering is listed once and its mel is
computed once and cached beside audio.wav, so a sample costs only its jpg decodes.
"""
import hashlib
import os
import random
import sys
import wave
from functools import lru_cache

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

import audio
from hparams import hparams as hp

SYNCNET_T = 5  # frames per window
MEL_STEP = 16  # mel columns per window (0.2 s)
MIN_FRAMES = 3 * SYNCNET_T + 1  # the original skips videos with 15 or fewer face frames
MAX_ATTEMPTS = 1000  # consecutive rejected draws before giving up instead of looping forever
# uint8 -> float32 exactly as the original's `/ 255.` in float64 followed by FloatTensor.
UINT8_TO_UNIT = (np.arange(256) / 255.0).astype(np.float32)


class DataError(ValueError):
    """Unusable training data; the message is one line naming the file and the fix."""


def read_filelist(data_root, filelists_dir, split):
    """Video folders listed in <filelists_dir>/<split>.txt ("<speaker>/<id>" and optional extra text)."""
    if not os.path.isdir(data_root):
        raise DataError("--data_root %s is not a folder; pass the preprocessed_root of preprocess.py" % data_root)
    path = os.path.join(filelists_dir, split + ".txt")
    if not os.path.isfile(path):
        raise DataError("no filelist %s; write one with `python -m training.filelists` or pass --filelists_dir"
                        % path)
    with open(path) as f:
        names = [line.split()[0] for line in f if line.strip()]
    if not names:
        raise DataError("filelist %s is empty; it needs one <speaker>/<id> line per video" % path)
    return [os.path.join(data_root, name) for name in names]


def frame_numbers(video_dir):
    """Sorted numbers of the <n>.jpg face crops in a video folder."""
    names = (entry.name[:-4] for entry in os.scandir(video_dir) if entry.name.endswith(".jpg"))
    return np.array(sorted(int(n) for n in names if n.isdigit()), dtype=np.int64)


def mel_cache_path(video_dir):
    # What the mel is computed with is part of the name, so that changing it never reuses a stale mel.
    key = hashlib.sha1(repr(sorted(audio.mel_settings().items())).encode()).hexdigest()[:10]
    return os.path.join(video_dir, "mel_%s.npy" % key)


def load_mel(video_dir):
    """(num_mels, T) float32 mel of <video_dir>/audio.wav, computed once and cached on disk."""
    return _load_mel(video_dir, mel_cache_path(video_dir))


@lru_cache(maxsize=256)
def _load_mel(video_dir, cache_path):
    wav_path = os.path.join(video_dir, "audio.wav")
    try:
        if os.path.getmtime(cache_path) >= os.path.getmtime(wav_path):
            return np.load(cache_path)
    except (OSError, ValueError):
        pass  # no cache yet (or a broken one): compute it
    mel = audio.melspectrogram(audio.load_wav(wav_path, hp.sample_rate)).astype(np.float32)
    temporary = "%s.tmp%d" % (cache_path, os.getpid())  # workers may race; os.replace is atomic
    try:
        with open(temporary, "wb") as f:
            np.save(f, mel)
        os.replace(temporary, cache_path)
    except OSError:
        pass  # read-only corpus: the in-memory lru_cache still spares most recomputations
    return mel


def mel_window(mel, frame):
    """The 16 mel columns that start at video frame `frame` (80 columns per second), or None."""
    start = int(audio.mel_columns_per_second() * (frame / float(hp.fps)))
    if frame < 0 or start + MEL_STEP > mel.shape[1]:
        return None
    return mel[:, start:start + MEL_STEP]


def audio_too_short(wav_path):
    """Whether a PCM audio.wav holds less than one mel window (0.2 s), an empty one say.

    False when the header cannot tell (not a PCM wav): such a file is judged when its mel is
    computed."""
    try:
        with wave.open(wav_path) as f:
            seconds = f.getnframes() / f.getframerate()
    except (wave.Error, EOFError, OSError, ZeroDivisionError):
        return False
    return seconds * audio.mel_columns_per_second() < MEL_STEP - 1


class Video:
    """One video folder: its face frame numbers (with gaps) and whether it still looks usable."""

    def __init__(self, folder, frames):
        self.folder = folder
        self.frames = frames
        self.present = np.zeros(frames[-1] + SYNCNET_T + 1, dtype=bool)
        self.present[frames] = True
        self.bad = False

    def window(self, start):
        """The jpg paths of frames start .. start+4, or None when one of them is missing."""
        if not self.present[start:start + SYNCNET_T].all():
            return None
        return [os.path.join(self.folder, "%d.jpg" % f) for f in range(start, start + SYNCNET_T)]

    def drop_frame(self, frame):
        self.present[frame] = False
        self.frames = self.frames[self.frames != frame]


def scan_videos(folders, split, progress=False):
    """Videos usable for training and a one-line account of the skipped ones."""
    short = "audio.wav shorter than one mel window"
    videos, skipped = [], {"missing folder": 0, "no audio.wav": 0, short: 0,
                           "fewer than %d face frames" % MIN_FRAMES: 0}
    for folder in tqdm(folders, desc="scanning %s videos" % split, disable=not progress, leave=False):
        if not os.path.isdir(folder):
            skipped["missing folder"] += 1
        elif not os.path.isfile(os.path.join(folder, "audio.wav")):
            skipped["no audio.wav"] += 1
        elif audio_too_short(os.path.join(folder, "audio.wav")):
            skipped[short] += 1
        else:
            frames = frame_numbers(folder)
            if len(frames) < MIN_FRAMES:
                skipped["fewer than %d face frames" % MIN_FRAMES] += 1
            else:
                videos.append(Video(folder, frames))
    reasons = ", ".join("%d %s" % (n, why) for why, n in skipped.items() if n)
    summary = "%s: %d of %d videos usable%s" % (split, len(videos), len(folders),
                                                " (skipped: %s)" % reasons if reasons else "")
    if not videos:
        raise DataError("no usable video in the %s list: %s; every video needs audio.wav and at least %d "
                        "face jpgs (run preprocess.py)" % (split, reasons, MIN_FRAMES))
    return videos, summary


class _Corpus(Dataset):
    """Draws samples by rejection, as the original: a rejected draw moves on to a random video.

    Index i starts at video i (so a sharded sampler spreads videos over ranks); the frames are
    drawn with Python's `random`, which the DataLoader seeds differently in every worker.
    """

    def __init__(self, folders, split="train", progress=False):
        self.videos, self.summary = scan_videos(folders, split, progress)
        self.length = len(self.videos)
        self.split = split

    def __len__(self):
        return self.length

    def __getitem__(self, index):
        video = self.videos[index % len(self.videos)]
        for _ in range(MAX_ATTEMPTS):
            if not video.bad:
                sample = self.draw(video)
                if sample is not None:
                    return sample
            usable = [v for v in self.videos if not v.bad]
            if not usable:
                raise DataError("every video of the %s list failed (see the warnings above)" % self.split)
            video = random.choice(usable)
        raise DataError("no valid %s sample in %d draws: videos need %d consecutive face frames whose audio "
                        "covers %d mel columns" % (self.split, MAX_ATTEMPTS, SYNCNET_T, MEL_STEP))

    def mel(self, video):
        try:
            return load_mel(video.folder)
        except (audio.AudioError, OSError) as e:
            self._skip(video, "unreadable audio.wav (%s)" % e)
            return None

    def read_window(self, video, start, decoded):
        """The resized BGR crops of frames start .. start+4, or None (an unreadable jpg is dropped)."""
        paths = video.window(start)
        if paths is None:
            return None
        images = []
        for frame, path in zip(range(start, start + SYNCNET_T), paths):
            if path not in decoded:
                image = cv2.imread(path, cv2.IMREAD_COLOR)
                if image is None or image.size == 0:
                    print("warning: skipping unreadable %s" % path, file=sys.stderr)
                    video.drop_frame(frame)
                    if len(video.frames) < MIN_FRAMES:
                        self._skip(video, "fewer than %d readable face frames" % MIN_FRAMES)
                    return None
                decoded[path] = cv2.resize(image, (hp.img_size, hp.img_size))
            images.append(decoded[path])
        return images

    def _skip(self, video, why):
        video.bad = True
        print("warning: skipping video %s: %s" % (video.folder, why), file=sys.stderr)


def two_distinct_frames(video):
    """Two different random frame numbers of `video`, drawn as the original draws them."""
    first = int(random.choice(video.frames))
    second = int(random.choice(video.frames))
    while second == first:
        second = int(random.choice(video.frames))
    return first, second


class SyncNetDataset(_Corpus):
    """(face (15, H/2, W), mel (1, 80, 16), label (1,)) samples for the expert discriminator."""

    def draw(self, video):
        chosen, other = two_distinct_frames(video)
        # In sync: the window starts at the chosen frame; off sync: at another frame. The audio
        # always belongs to the chosen frame.
        label, start = (1.0, chosen) if random.choice([True, False]) else (0.0, other)
        images = self.read_window(video, start, {})
        if images is None:
            return None
        mel = self.mel(video)
        if mel is None:
            return None
        audio_window = mel_window(mel, chosen)
        if audio_window is None:
            return None
        lower_halves = np.concatenate([image[hp.img_size // 2:] for image in images], axis=2)
        face = UINT8_TO_UNIT[lower_halves].transpose(2, 0, 1)  # channel 3*t + c
        return (torch.from_numpy(np.ascontiguousarray(face)),
                torch.from_numpy(np.ascontiguousarray(audio_window))[None],
                torch.tensor([label]))


class Wav2LipDataset(_Corpus):
    """(input (6, 5, H, W), per-frame mels (5, 1, 80, 16), mel (1, 80, 16), target (3, 5, H, W)) samples."""

    def draw(self, video):
        start, reference = two_distinct_frames(video)
        decoded = {}  # the two windows may overlap
        window = self.read_window(video, start, decoded)
        if window is None:
            return None
        reference_window = self.read_window(video, reference, decoded)
        if reference_window is None:
            return None
        mel = self.mel(video)
        if mel is None:
            return None
        sync_window = mel_window(mel, start)
        # Frame start+k hears the window of frame start+k-1: the original counts frames from 1
        # and steps back 2 (start+1+k-2); a window before the first column rejects the draw.
        frame_windows = [mel_window(mel, start - 1 + k) for k in range(SYNCNET_T)]
        if sync_window is None or any(w is None for w in frame_windows):
            return None
        target = UINT8_TO_UNIT[np.stack(window)].transpose(3, 0, 1, 2)  # (3, T, H, W)
        masked = target.copy()
        masked[:, :, hp.img_size // 2:] = 0.0
        reference_faces = UINT8_TO_UNIT[np.stack(reference_window)].transpose(3, 0, 1, 2)
        return (torch.from_numpy(np.concatenate([masked, reference_faces], axis=0)),
                torch.from_numpy(np.stack(frame_windows))[:, None],
                torch.from_numpy(np.ascontiguousarray(sync_window))[None],
                torch.from_numpy(np.ascontiguousarray(target)))


def make_loader(dataset, batch_size, rank=0, world_size=1, num_workers=0, seed=0, pin_memory=False):
    """Loader of full batches, each rank drawing from its own share of the videos every epoch."""
    # An epoch visits every video once, but always yields at least one full batch per rank.
    dataset.length = max(len(dataset.videos), batch_size * world_size)
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      drop_last=True, pin_memory=pin_memory, persistent_workers=num_workers > 0)
