"""Lip-sync scores (LSE-D, LSE-C and the AV offset) of videos, with SyncNet v2.

    python -m evaluation.score --syncnet_model syncnet_v2.model results/          # every video of a folder
    python -m evaluation.score --syncnet_model syncnet_v2.model a.mp4 list.txt --json
    python -m evaluation.score --syncnet_model syncnet_v2.model --real_videos raw.mp4

Exit status 0 when at least one video was scored, 1 when none could be, 2 on a usage error.
"""
import argparse
import os
import sys

if __name__ == "__main__" and not __package__:
    # Run as a file (python evaluation/score.py): import the package from the repository root.
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import torch

from evaluation import load_syncnet, score_video
from evaluation.batch import HEADER, collect_videos, format_row, format_summary, score_all, to_json
from evaluation.real_videos import MIN_FACE_SIZE, MIN_TRACK, score_real_video


def build_parser():
    p = argparse.ArgumentParser(description="LSE-D / LSE-C lip-sync scores (Wav2Lip paper, section 4).")
    p.add_argument("inputs", nargs="+", help="videos, folders of videos, or .txt lists of videos (one per line)")
    p.add_argument("--syncnet_model", required=True, help="SyncNet v2 weights (syncnet_v2.model)")
    p.add_argument("--real_videos", action="store_true",
                   help="raw videos: track and crop faces first (syncnet_python's run_pipeline); "
                        "default: face-centred benchmark videos scored whole, as calculate_scores_LRS.py")
    p.add_argument("--json", action="store_true", help="print one JSON report (with the distance curves) instead of a table")
    p.add_argument("--convert_fps", action="store_true", help="score videos that are not 25 fps after resampling them to 25 fps")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch_size", type=int, default=20, help="SyncNet windows per batch")
    p.add_argument("--s3fd_path", default=None, help="S3FD weights for --real_videos (default: face_detection's)")
    p.add_argument("--min_track", type=int, default=MIN_TRACK, help="--real_videos: shortest face track scored, frames")
    p.add_argument("--min_face_size", type=int, default=MIN_FACE_SIZE, help="--real_videos: smallest face scored, pixels")
    p.add_argument("--facedet_scale", type=float, default=None,
                   help="--real_videos: frame scale for detection (default 0.25 for S3FD as the original, else 1)")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        syncnet = load_syncnet(args.syncnet_model, args.device)
    except ValueError as e:
        print("error: %s" % e, file=sys.stderr)
        return 1
    if args.real_videos:
        import face_detection

        try:
            detector = face_detection.load_detector(args.s3fd_path, args.device)
        except (ValueError, OSError) as e:
            print("error: cannot load the face detector: %s" % e, file=sys.stderr)
            return 1

        def score_one(path):
            return score_real_video(path, syncnet, detector, args.min_track, args.min_face_size,
                                    args.facedet_scale, args.batch_size)
    else:
        def score_one(path):
            return [score_video(path, syncnet, args.convert_fps, args.batch_size)]

    def report_skip(path, reason):
        print("skipped %s: %s" % (path, reason), file=sys.stderr, flush=True)

    videos, skipped = collect_videos(args.inputs)
    for path, reason in skipped:
        report_skip(path, reason)
    if not args.json:
        print(HEADER, flush=True)
    rows, failed = score_all(videos, score_one, on_skip=report_skip,
                             on_row=None if args.json else lambda row: print(format_row(row), flush=True))
    skipped += failed
    if args.json:
        print(to_json(rows, skipped, "real_videos" if args.real_videos else "benchmark"))
    else:
        print(format_summary(rows, skipped))
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
