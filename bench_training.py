"""Throughput of the training data pipeline and of the trainers' steps on CPU, beside a naive
per-sample implementation that does what the original datasets do on every sample (glob the
video folder, decode the whole audio.wav, recompute its mel spectrogram, read the jpgs).

    python bench_training.py                         # on a synthetic corpus written to a temp folder
    python bench_training.py --data_root lrs2_preprocessed --filelist filelists/train.txt

Prints a markdown table: samples/s of each dataset, steps/s of each trainer (one process, data
loaded in the training process, so the data time is part of the step).
"""
import argparse
import glob
import os
import random
import tempfile
import time

import cv2
import numpy as np
import torch

import audio
from hparams import hparams as hp
from models import SyncNet_color
from training import expert, generator
from training.data import SyncNetDataset, Wav2LipDataset, read_filelist
from training.synthetic import make_corpus

T, MEL_STEP = 5, 16


# ---------------------------------------------------------------------- the naive baseline
def naive_window(folder, start, names):
    paths = [os.path.join(folder, "%d.jpg" % f) for f in range(start, start + T)]
    if not all(p in names for p in paths):
        return None
    return [cv2.resize(cv2.imread(p), (hp.img_size, hp.img_size)) for p in paths]


def naive_mel(folder):
    return audio.melspectrogram(audio.load_wav(os.path.join(folder, "audio.wav"))).T  # (T, 80), float64


def naive_crop(mel, frame):
    start = int(80.0 * (frame / float(hp.fps)))
    return mel[start:start + MEL_STEP] if frame >= 0 else mel[:0]


def frame_of(path):
    return int(os.path.basename(path)[:-4])


class NaiveSyncNetDataset(torch.utils.data.Dataset):
    def __init__(self, folders):
        self.folders = folders

    def __len__(self):
        return len(self.folders)

    def __getitem__(self, index):
        while True:
            folder = random.choice(self.folders)
            names = glob.glob(os.path.join(folder, "*.jpg"))
            chosen, other = random.sample(names, 2)
            label = random.choice([True, False])
            window = naive_window(folder, frame_of(chosen if label else other), set(names))
            if window is None:
                continue
            mel = naive_crop(naive_mel(folder), frame_of(chosen))
            if len(mel) != MEL_STEP:
                continue
            face = (np.concatenate(window, axis=2) / 255.0).transpose(2, 0, 1)[:, hp.img_size // 2:]
            return torch.FloatTensor(face), torch.FloatTensor(mel.T)[None], torch.FloatTensor([float(label)])


class NaiveWav2LipDataset(NaiveSyncNetDataset):
    def __getitem__(self, index):
        while True:
            folder = random.choice(self.folders)
            names = glob.glob(os.path.join(folder, "*.jpg"))
            start, reference = (frame_of(p) for p in random.sample(names, 2))
            window = naive_window(folder, start, set(names))
            reference_window = naive_window(folder, reference, set(names))
            if window is None or reference_window is None:
                continue
            mel = naive_mel(folder)
            frame_mels = [naive_crop(mel, start - 1 + k) for k in range(T)]
            if len(naive_crop(mel, start)) != MEL_STEP or any(len(m) != MEL_STEP for m in frame_mels):
                continue
            target = (np.asarray(window) / 255.0).transpose(3, 0, 1, 2)
            masked = target.copy()
            masked[:, :, hp.img_size // 2:] = 0.0
            x = np.concatenate([masked, (np.asarray(reference_window) / 255.0).transpose(3, 0, 1, 2)])
            return (torch.FloatTensor(x), torch.FloatTensor(np.asarray([m.T for m in frame_mels]))[:, None],
                    torch.FloatTensor(naive_crop(mel, start).T)[None], torch.FloatTensor(target))


# ---------------------------------------------------------------------- measurements
def samples_per_second(dataset, samples):
    started = time.perf_counter()
    for i in range(samples):
        dataset[i]
    return samples / (time.perf_counter() - started)


def batches(dataset, batch_size):
    i = 0
    while True:
        yield [torch.stack(parts) for parts in zip(*(dataset[i + k] for k in range(batch_size)))]
        i += batch_size


def steps_per_second(step, dataset, batch_size, steps):
    """Mean rate over `steps` steps (after one warm-up step), data loading included."""
    source = batches(dataset, batch_size)
    step(next(source))
    started = time.perf_counter()
    for _ in range(steps):
        step(next(source))
    return steps / (time.perf_counter() - started)


def expert_step(device):
    model = SyncNet_color().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=hp.syncnet_lr)
    return lambda batch: expert.train_step(model, optimizer, batch, device)


def generator_step(recipe, device, syncnet_wt):
    nets = generator.build_networks(recipe, device)
    disc_wt = hp.disc_wt if recipe.hq else 0.0
    return lambda batch: generator.train_step(nets, *(t.to(device) for t in batch), syncnet_wt, disc_wt)


def main(argv=None):
    parser = argparse.ArgumentParser(description="Samples/s of the training datasets and steps/s of the trainers")
    parser.add_argument("--data_root", help="preprocessed corpus (default: a synthetic one in a temp folder)")
    parser.add_argument("--filelist", help="list of <speaker>/<id> under --data_root (default: every video)")
    parser.add_argument("--samples", type=int, default=200, help="samples per dataset measurement")
    parser.add_argument("--expert_batch_size", type=int, default=16)
    parser.add_argument("--generator_batch_size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per trainer")
    parser.add_argument("--crop_size", type=int, default=128, help="side of the synthetic face crops")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    random.seed(0)
    torch.manual_seed(0)

    with tempfile.TemporaryDirectory() as scratch:
        if args.data_root is None:
            make_corpus(scratch, speakers=4, videos_per_speaker=4, seconds=4.0, size=args.crop_size)
            folders = sorted(glob.glob(os.path.join(scratch, "*", "*")))
            corpus = "synthetic: 16 videos of 4 s, %dx%d crops" % (args.crop_size, args.crop_size)
        elif args.filelist:
            folders = read_filelist(args.data_root, os.path.dirname(args.filelist) or ".",
                                    os.path.basename(args.filelist)[:-4])
            corpus = args.data_root
        else:
            folders = sorted(glob.glob(os.path.join(glob.escape(args.data_root), "*", "*")))
            corpus = args.data_root
        rows = []
        for name, naive, fast in (("SyncNet", NaiveSyncNetDataset, SyncNetDataset),
                                  ("Wav2Lip", NaiveWav2LipDataset, Wav2LipDataset)):
            naive_rate = samples_per_second(naive(folders), args.samples)
            dataset = fast(folders)
            samples_per_second(dataset, len(folders) * 4)  # first visits compute the cached mels
            rows.append(("%s dataset, samples/s" % name, naive_rate, samples_per_second(dataset, args.samples)))
        for name, make_step, naive, fast, batch_size in (
                ("color_syncnet_train step (batch %d), steps/s", lambda: expert_step(device),
                 NaiveSyncNetDataset, SyncNetDataset, args.expert_batch_size),
                ("wav2lip_train step (batch %d, sync loss on), steps/s",
                 lambda: generator_step(_recipe("wav2lip_train"), device, 0.01),
                 NaiveWav2LipDataset, Wav2LipDataset, args.generator_batch_size),
                ("hq_wav2lip_train step (batch %d, sync loss on), steps/s",
                 lambda: generator_step(_recipe("hq_wav2lip_train"), device, 0.03),
                 NaiveWav2LipDataset, Wav2LipDataset, args.generator_batch_size)):
            step = make_step()
            rows.append((name % batch_size, steps_per_second(step, naive(folders), batch_size, args.steps),
                         steps_per_second(step, fast(folders), batch_size, args.steps)))

    print("corpus: %s; device: %s, %d threads" % (corpus, device, torch.get_num_threads()))
    print("| measure | naive per-sample | this pipeline | speed-up |")
    print("|---|---|---|---|")
    for name, naive_rate, rate in rows:
        print("| %s | %.3g | %.3g | %.2fx |" % (name, naive_rate, rate, rate / naive_rate))


def _recipe(script):
    """The Recipe a trainer script uses (imported lazily: the scripts are entry points)."""
    import importlib

    return importlib.import_module(script).RECIPE


if __name__ == "__main__":
    main()
