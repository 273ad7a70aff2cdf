"""Generate the LRS2 / LRS3 / LRW benchmark videos of a test list with a Wav2Lip checkpoint.

    python -m evaluation.gen_videos_from_filelist --filelist evaluation/test_filelists/lrs2.txt \\
        --data_root LRS2/main --results_dir results/lrs2_wav2lip --checkpoint_path checkpoints/wav2lip.pth

Outputs are named <audio>__<video>.mp4; a rerun skips the ones that exist. Exit status 1
only when no output exists at the end (nothing generated and nothing done before).
"""
import argparse
import os
import sys

if __name__ == "__main__" and not __package__:
    # Run as a file (python evaluation/gen_videos_from_filelist.py): import from the repository root.
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import inference
from evaluation.benchmark import format_generation_summary, generate_all, lrs_maker, read_lrs_pairs


def build_parser():
    p = argparse.ArgumentParser(description="Generate lip-synced videos for a benchmark test list.")
    p.add_argument("--filelist", required=True, help="test list: one '<audio id> <video id>' pair per line")
    p.add_argument("--data_root", required=True, help="folder the ids are relative to (LRS2: .../main)")
    p.add_argument("--results_dir", required=True, help="folder for the generated videos")
    p.add_argument("--checkpoint_path", required=True, help="Wav2Lip checkpoint (wav2lip.pth or wav2lip_gan.pth)")
    p.add_argument("--pads", nargs=4, type=int, default=[0, 0, 0, 0], metavar=("TOP", "BOTTOM", "LEFT", "RIGHT"),
                   help="padding of the detected face box (the benchmark used none)")
    p.add_argument("--box", nargs=4, type=int, default=[-1, -1, -1, -1], metavar=("TOP", "BOTTOM", "LEFT", "RIGHT"),
                   help="fixed face box for every frame instead of detection")
    p.add_argument("--face_det_batch_size", type=int, default=64)
    p.add_argument("--wav2lip_batch_size", type=int, default=128)
    p.add_argument("--s3fd_path", default=None, help="S3FD weights (default face_detection/detection/sfd/s3fd.pth)")
    p.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    from face_detection import load_detector

    device = args.device or inference.best_device()
    try:
        pairs = read_lrs_pairs(args.filelist, args.data_root)
        model = inference.inference_model(inference.load_model(args.checkpoint_path, device))  # prepared once, not per video
        detector = None if args.box[0] != -1 else load_detector(args.s3fd_path, device)
    except (ValueError, OSError) as e:
        print("error: %s" % e, file=sys.stderr)
        return 1
    make_video = lrs_maker(model, detector, args.pads, args.box, args.face_det_batch_size, args.wav2lip_batch_size)
    summary = generate_all(pairs, args.results_dir, make_video, args.data_root, progress=not args.quiet)
    print(format_generation_summary(summary, len(pairs)))
    return 0 if summary["generated"] + summary["done_before"] else 1


if __name__ == "__main__":
    sys.exit(main())
