"""LSE-D / LSE-C lip-sync evaluation (Wav2Lip paper, section 4) with SyncNet v2.

    import evaluation
    net = evaluation.load_syncnet("syncnet_v2.model")            # or a state dict
    scores = evaluation.score_video("result.mp4", net)          # offset, min_dist, confidence, curve
    tracks = evaluation.score_real_video("raw.mp4", net, face_detection.load_detector())

LSE-D of a set is the mean of its videos' min_dist, LSE-C the mean of their confidence.
Scripts: evaluation/score.py, gen_videos_from_filelist.py, real_videos_inference.py.
"""
from .features import mfcc
from .lse import ClipTooShortError, score_arrays
from .real_videos import NoFaceTrackError, score_real_video
from .syncnet import SyncNetV2, SyncNetWeightsError, load_syncnet
from .video import MediaError, score_video

__all__ = ["SyncNetV2", "load_syncnet", "mfcc", "score_arrays", "score_video", "score_real_video",
           "SyncNetWeightsError", "ClipTooShortError", "MediaError", "NoFaceTrackError"]
