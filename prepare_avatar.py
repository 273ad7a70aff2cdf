"""Prepare an avatar for live sessions from a face video or image.

    python prepare_avatar.py --face anna.mp4 --out avatars/anna --pads 0 20 0 0

Options are inference.py's, with the same names (--pads, --resize_factor, --crop, --box,
--rotate, --nosmooth, --fast, --s3fd_path, ...). Face boxes go through the detection cache.
"""
import argparse
import sys

import options as sync_options
from hparams import add_hparams_argument, apply_overrides
from options import SyncOptions


def build_parser():
    p = argparse.ArgumentParser(description="Prepare a Wav2Lip avatar (frames, face boxes, metadata) for live use.")
    p.add_argument("--face", required=True, help="video or image with the face to animate")
    p.add_argument("--out", required=True, help="avatar folder to write (replaced if it holds an avatar)")
    sync_options.add_arguments(p)
    p.add_argument("--device", default=None, help="cuda, mps or cpu for face detection (default: the best available)")
    p.add_argument("--s3fd_path", default=None, help="S3FD weights (default face_detection/detection/sfd/s3fd.pth)")
    p.add_argument("--cache_dir", default=None, help="where face detections are kept per video")
    p.add_argument("--no_cache", action="store_true", help="neither read nor keep cached face detections")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_hparams_argument(p)
    return p


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    apply_overrides(args, parser)
    import live
    from lipsync import best_device

    try:
        path = live.prepare_avatar(args.face, args.out, s3fd_path=args.s3fd_path, device=args.device or best_device(),
                                   cache_dir=args.cache_dir, no_cache=args.no_cache, progress=not args.quiet,
                                   **SyncOptions.from_args(args).to_dict())
        avatar = live.load_avatar(path)
    except live.AvatarError as e:
        print("error: %s" % e, file=sys.stderr)
        return 1
    width, height = avatar.size
    print("wrote avatar %s: %d frames of %dx%d at %.3f fps, %d without a face"
          % (path, len(avatar), width, height, avatar.fps, avatar.meta["frames_without_face"]))
    avatar.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
