"""Write train.txt, val.txt and test.txt for a preprocessed corpus, split by speaker folder.

    python -m training.filelists --preprocessed_root lrs2_preprocessed --out_dir filelists

Speakers (never single videos) are assigned to splits, so no speaker is seen in training and
evaluation both; the assignment is a deterministic function of the speaker names and --seed.
Videos without audio.wav or with too few face frames to ever give a sample are left out.
"""
import argparse
import os
import random
import sys

from training.data import MIN_FRAMES, frame_numbers


def usable_videos(root):
    """{speaker: ["speaker/id", ...]} of the complete videos, and the number left out."""
    by_speaker, left_out = {}, 0
    for speaker in sorted(os.listdir(root)):
        speaker_dir = os.path.join(root, speaker)
        if speaker.startswith(".") or not os.path.isdir(speaker_dir):
            continue
        for video in sorted(os.listdir(speaker_dir)):
            folder = os.path.join(speaker_dir, video)
            if video.startswith(".") or not os.path.isdir(folder):
                continue  # preprocess.py's unfinished ".<id>.partial" folders among them
            if os.path.isfile(os.path.join(folder, "audio.wav")) and len(frame_numbers(folder)) >= MIN_FRAMES:
                by_speaker.setdefault(speaker, []).append("%s/%s" % (speaker, video))
            else:
                left_out += 1
    return by_speaker, left_out


def split_speakers(speakers, val_fraction, test_fraction, seed):
    """{"train"|"val"|"test": [speaker, ...]}; val and test get at least one speaker each."""
    if len(speakers) < 3:
        raise ValueError("splitting by speaker needs at least 3 speaker folders, found %d" % len(speakers))
    order = sorted(speakers)
    random.Random(seed).shuffle(order)
    n_val = max(1, round(val_fraction * len(order)))
    n_test = max(1, round(test_fraction * len(order)))
    if n_val + n_test >= len(order):
        raise ValueError("val and test fractions leave no speaker for training (%d speakers)" % len(order))
    return {"val": order[:n_val], "test": order[n_val:n_val + n_test], "train": order[n_val + n_test:]}


def write_filelists(root, out_dir, val_fraction=0.05, test_fraction=0.05, seed=0):
    """Write the three lists; returns {split: number of videos} and the number of videos left out."""
    by_speaker, left_out = usable_videos(root)
    splits = split_speakers(list(by_speaker), val_fraction, test_fraction, seed)
    os.makedirs(out_dir, exist_ok=True)
    counts = {}
    for split, speakers in splits.items():
        lines = sorted(name for speaker in speakers for name in by_speaker[speaker])
        with open(os.path.join(out_dir, split + ".txt"), "w") as f:
            f.writelines(line + "\n" for line in lines)
        counts[split] = len(lines)
    return counts, left_out


def main(argv=None):
    parser = argparse.ArgumentParser(description="Write train/val/test filelists, split by speaker folder")
    parser.add_argument("--preprocessed_root", required=True, help="output folder of preprocess.py")
    parser.add_argument("--out_dir", default="filelists")
    parser.add_argument("--val_fraction", type=float, default=0.05)
    parser.add_argument("--test_fraction", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not os.path.isdir(args.preprocessed_root):
        sys.exit("error: --preprocessed_root %s is not a folder" % args.preprocessed_root)
    try:
        counts, left_out = write_filelists(args.preprocessed_root, args.out_dir, args.val_fraction,
                                           args.test_fraction, args.seed)
    except ValueError as e:
        sys.exit("error: %s" % e)
    print("wrote %s to %s (%d videos left out: no audio.wav or fewer than %d face frames)"
          % (", ".join("%s.txt: %d videos" % kv for kv in sorted(counts.items())), args.out_dir, left_out,
             MIN_FRAMES))


if __name__ == "__main__":
    main()
