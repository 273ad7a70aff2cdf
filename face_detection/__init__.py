"""Face detection: S3FD (the original's detector) when its weights are present, otherwise the
embedded detector that ships inside a PyPI package.

Every detector has `.name` and `.detect(frames_bgr) -> [(x1, y1, x2, y2) or None, ...]`: per
frame the best face, integer pixel coordinates clipped at 0.
"""
import os
import sys

from .s3fd import S3FD, S3FDDetector

DEFAULT_S3FD_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "detection", "sfd", "s3fd.pth")
S3FD_HELP = ("download s3fd-619a316812.pth (the S3FD weights of face-alignment / the original Wav2Lip) "
             "to face_detection/detection/sfd/s3fd.pth or pass its path with --s3fd_path")


def load_detector(s3fd_path=None, device="cpu", quiet=False):
    """S3FD from `s3fd_path` (or the conventional location); the embedded detector when absent."""
    if s3fd_path is not None:
        return S3FDDetector(s3fd_path, device)
    if os.path.isfile(DEFAULT_S3FD_PATH):
        return S3FDDetector(DEFAULT_S3FD_PATH, device)
    from .embedded import EmbeddedDetector

    detector = EmbeddedDetector(device=device)
    if not quiet:
        print("face detection: S3FD weights not found, using the embedded %s detector (boxes differ "
              "from the paper's; for S3FD %s)" % (detector.name, S3FD_HELP), file=sys.stderr)
    return detector


__all__ = ["S3FD", "S3FDDetector", "load_detector", "DEFAULT_S3FD_PATH"]
