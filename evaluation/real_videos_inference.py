"""Generate lip-synced ReSyncED-style real videos (any frame rate and resolution).

    python -m evaluation.real_videos_inference --mode dubbed --data_root ReSyncED/dubbed \\
        --results_dir results/resynced_dubbed --checkpoint_path checkpoints/wav2lip_gan.pth
    python -m evaluation.real_videos_inference --mode tts --filelist evaluation/test_filelists/ReSyncED/tts_pairs.txt ...

Modes: dubbed (every file of data_root with its own audio), random and tts (a list of
'<video file> <audio file>' lines relative to data_root; tts stretches videos shorter than
their audio). Score the results with `python -m evaluation.score --real_videos`.
"""
import argparse
import os
import sys

if __name__ == "__main__" and not __package__:
    # Run as a file (python evaluation/real_videos_inference.py): import from the repository root.
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import inference
from evaluation.benchmark import (dubbed_pairs, format_generation_summary, generate_all, read_resynced_pairs,
                                  resynced_maker)


def build_parser():
    p = argparse.ArgumentParser(description="Generate lip-synced videos for ReSyncED-style real-video pairs.")
    p.add_argument("--mode", required=True, choices=("random", "dubbed", "tts"))
    p.add_argument("--filelist", default=None, help="pairs list for random / tts: '<video> <audio>' per line")
    p.add_argument("--data_root", required=True, help="folder of the videos and audio files")
    p.add_argument("--results_dir", required=True, help="folder for the generated videos")
    p.add_argument("--checkpoint_path", required=True, help="Wav2Lip checkpoint (wav2lip.pth or wav2lip_gan.pth)")
    p.add_argument("--pads", nargs=4, type=int, default=[0, 10, 0, 0], metavar=("TOP", "BOTTOM", "LEFT", "RIGHT"))
    p.add_argument("--face_det_batch_size", type=int, default=16)
    p.add_argument("--wav2lip_batch_size", type=int, default=128)
    p.add_argument("--face_res", type=int, default=180, help="approximate face size to generate at, pixels")
    p.add_argument("--min_frame_res", type=int, default=480, help="never downscale the shorter side below this")
    p.add_argument("--max_frame_res", type=int, default=720, help="downscale the shorter side to at most this")
    p.add_argument("--s3fd_path", default=None, help="S3FD weights (default face_detection/detection/sfd/s3fd.pth)")
    p.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.mode != "dubbed" and args.filelist is None:
        parser.error("--mode %s needs --filelist" % args.mode)
    from face_detection import load_detector

    device = args.device or inference.best_device()
    try:
        pairs = dubbed_pairs(args.data_root) if args.mode == "dubbed" else read_resynced_pairs(args.filelist, args.data_root)
        model = inference.inference_model(inference.load_model(args.checkpoint_path, device))  # prepared once, not per video
        detector = load_detector(args.s3fd_path, device)
    except (ValueError, OSError) as e:
        print("error: %s" % e, file=sys.stderr)
        return 1
    make_video = resynced_maker(model, detector, args.mode == "tts", args.pads, args.face_det_batch_size,
                                args.wav2lip_batch_size, args.face_res, args.min_frame_res, args.max_frame_res)
    summary = generate_all(pairs, args.results_dir, make_video, args.data_root, progress=not args.quiet)
    print(format_generation_summary(summary, len(pairs)))
    return 0 if summary["generated"] + summary["done_before"] else 1


if __name__ == "__main__":
    sys.exit(main())
