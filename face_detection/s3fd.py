"""S3FD, the face detector of the original Wav2Lip, with batched, vectorised decoding.

The network definition is face-alignment's (the field's own S3FD, the same layers and
state_dict keys as the official `s3fd-619a316812.pth`). Decoding follows the original:
face probability > 0.05 makes a candidate, boxes are decoded SSD-style, NMS at IoU 0.3,
and boxes scoring above 0.5 are kept. Wav2Lip uses only the best box per frame, which is
always the highest-scoring candidate (NMS never removes the top box), so `best_boxes` skips
NMS altogether and needs no Python loop over candidates.
"""
import numpy as np
import torch
import torch.nn.functional as F
from face_alignment.detection.sfd.net_s3fd import s3fd as _FaceAlignmentS3FD

# Means subtracted from the frames after the original flips them BGR -> RGB.
PIXEL_MEAN = (104.0, 117.0, 123.0)
CANDIDATE_THRESHOLD = 0.05
NMS_THRESHOLD = 0.3
KEEP_THRESHOLD = 0.5
STRIDES = (4, 8, 16, 32, 64, 128)


class S3FD(_FaceAlignmentS3FD):
    """The bare S3FD network: forward(x (B,3,H,W) mean-subtracted) -> [cls1, reg1, ..., cls6, reg6]."""


def preprocess(frames_bgr, device):
    """uint8 BGR frames (B,H,W,3) -> the network input, exactly as the original builds it."""
    x = torch.from_numpy(np.ascontiguousarray(np.asarray(frames_bgr)[..., ::-1])).to(device)
    x = x.permute(0, 3, 1, 2).float()
    return x - torch.tensor(PIXEL_MEAN, device=device).view(1, 3, 1, 1)


def _decode(reg, stride, ys, xs):
    """SSD decoding of offsets `reg` (..., 4) at cells (ys, xs) of a level, in float32 like the original."""
    anchor = 4.0 * stride
    centre = torch.stack([stride / 2 + xs * stride, stride / 2 + ys * stride], -1).float()
    xy = centre + reg[..., :2] * 0.1 * anchor
    wh = anchor * torch.exp(reg[..., 2:] * 0.2)
    x1y1 = xy - wh / 2
    return torch.cat([x1y1, x1y1 + wh], -1)


def candidates(maps):
    """Per image, all candidates [x1, y1, x2, y2, score] (float32 numpy, level by level, row-major)."""
    batch = maps[0].shape[0]
    per_image = [[] for _ in range(batch)]
    for level, stride in enumerate(STRIDES):
        score = F.softmax(maps[2 * level], dim=1)[:, 1]
        reg = maps[2 * level + 1].permute(0, 2, 3, 1)
        for b in range(batch):
            ys, xs = torch.nonzero(score[b] > CANDIDATE_THRESHOLD, as_tuple=True)
            boxes = _decode(reg[b, ys, xs], stride, ys, xs)
            per_image[b].append(torch.cat([boxes, score[b, ys, xs, None]], 1))
    return [torch.cat(c).cpu().numpy() for c in per_image]


def nms(dets, threshold=NMS_THRESHOLD):
    """Indices kept by greedy NMS with the original's pixel-inclusive areas, best first."""
    x1, y1, x2, y2, score = dets.T.astype(np.float64)
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(score)[::-1]
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        iou = w * h / (areas[i] + areas[rest] - w * h)
        order = rest[iou <= threshold]
    return np.asarray(keep, dtype=np.int64)


def postprocess(maps):
    """All faces per image after NMS and the 0.5 threshold, as (K, 5) arrays, best first.

    Candidates at or below 0.5 can only suppress boxes scoring even lower, which the final
    threshold drops anyway, so they are filtered before NMS without changing the result."""
    maps = [torch.as_tensor(m) for m in maps]
    out = []
    for dets in candidates(maps):
        dets = dets[dets[:, 4] > KEEP_THRESHOLD]
        out.append(dets[nms(dets)] if len(dets) else np.zeros((0, 5), np.float32))
    return out


def best_boxes(maps):
    """Per image the original's chosen face (int x1, y1, x2, y2 clipped at 0) or None.

    Vectorised over every anchor of every level: the chosen face is the top-scoring candidate."""
    batch = maps[0].shape[0]
    scores, boxes = [], []
    for level, stride in enumerate(STRIDES):
        score = F.softmax(maps[2 * level], dim=1)[:, 1].reshape(batch, -1)
        h, w = maps[2 * level].shape[2:]
        best = score.argmax(1)
        reg = maps[2 * level + 1].permute(0, 2, 3, 1).reshape(batch, -1, 4)
        ys, xs = best // w, best % w
        boxes.append(_decode(reg[torch.arange(batch), best], stride, ys, xs))
        scores.append(score[torch.arange(batch), best])
    scores = torch.stack(scores, 1)
    level = scores.argmax(1)
    top_score = scores[torch.arange(batch), level].cpu().numpy()
    top_box = torch.stack(boxes, 1)[torch.arange(batch), level].cpu().numpy()
    return [tuple(int(v) for v in np.maximum(box, 0)) if s > KEEP_THRESHOLD else None
            for box, s in zip(top_box, top_score)]


class S3FDDetector:
    """Batched S3FD face detection on BGR frames, as the original Wav2Lip runs it."""

    name = "S3FD"

    def __init__(self, weights_path, device="cpu"):
        from models.checkpoint import load_weights

        self.device = device
        self.net = S3FD()
        load_weights(self.net, weights_path, what="S3FD")
        self.net.to(device).eval()

    @torch.inference_mode()
    def detect(self, frames_bgr):
        if len(frames_bgr) == 0:
            return []
        return best_boxes(self.net(preprocess(frames_bgr, self.device)))
