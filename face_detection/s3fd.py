"""S3FD, the face detector of the original Wav2Lip, with batched, vectorised decoding.

The network definition is face-alignment's (the field's own S3FD, the same layers and
state_dict keys as the official `s3fd-619a316812.pth`). Decoding follows the original:
face probability > 0.05 makes a candidate, boxes are decoded SSD-style, NMS at IoU 0.3,
and boxes scoring above 0.5 are kept. Wav2Lip uses only the best box per frame, which is
always the first one NMS keeps, i.e. the candidate the original's `argsort()[::-1]` puts
first, so `best_boxes` skips NMS altogether and needs no Python loop over candidates;
`postprocess` gives every face NMS keeps (for choosing among several people).
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
# On the CPU the trunk runs one frame at a time (as fast as any batch there, at 180p and 720p),
# and its full- and half-resolution stages (64 and 128 channels: 236 MB per map at 720p) in
# strips of rows of at most this many pixels. The strips overlap by STRIP_HALO rows, enough for
# their four 3x3 convolutions, so the result is the whole frame's, bit for bit.
CPU_PIXELS_PER_STRIP = 1280 * 180
STRIP_HALO = 8


class S3FD(_FaceAlignmentS3FD):
    """The bare S3FD network: forward(x (B,3,H,W) mean-subtracted) -> [cls1, reg1, ..., cls6, reg6].

    `trunk` (conv1 to conv5 and the heads of levels 1-3: nearly all the work and memory) and
    `tail` (fc6 onwards: levels 4-6) split the forward so that detection can run the trunk a
    frame at a time (in strips) and the tail on the whole batch, as the original did. On the CPU
    the trunk's results depend on the batch size only by float rounding (not at all with 2
    threads, ~2e-6 with 16); the tail's small maps by ~1e-4."""

    def _convs(self, names, h):
        for name in names:  # ReLU in place, as face-alignment does: 720p activations are 236 MB each
            h = F.relu(getattr(self, name)(h), inplace=True)
        return h

    def _early(self, x):
        h = self._convs(("conv1_1", "conv1_2"), x)
        h = self._convs(("conv2_1", "conv2_2"), F.max_pool2d(h, 2, 2))
        return F.max_pool2d(h, 2, 2)

    def early_in_strips(self, x, rows):
        """conv1 and conv2 (to the second pooling) on strips of `rows` input rows (a multiple of 4)."""
        height = x.shape[2]
        parts = []
        for top in range(0, height, rows):
            bottom = min(height, top + rows)
            start = max(0, top - STRIP_HALO)  # a multiple of 4, so the poolings keep the frame's grid
            h = self._early(x[:, :, start:min(height, bottom + STRIP_HALO)])
            first = (top - start) // 4
            parts.append(h[:, :, first:first + bottom // 4 - top // 4])
        return torch.cat(parts, 2)

    def trunk(self, x, strip_rows=None):
        """`strip_rows` (a multiple of 4) bounds memory: the same result in strips (see CPU_PIXELS_PER_STRIP)."""
        h = self._early(x) if strip_rows is None or strip_rows >= x.shape[2] else self.early_in_strips(x, strip_rows)
        f3 = self._convs(("conv3_1", "conv3_2", "conv3_3"), h)
        f4 = self._convs(("conv4_1", "conv4_2", "conv4_3"), F.max_pool2d(f3, 2, 2))
        f5 = self._convs(("conv5_1", "conv5_2", "conv5_3"), F.max_pool2d(f4, 2, 2))
        pool5 = F.max_pool2d(f5, 2, 2)
        f3, f4, f5 = self.conv3_3_norm(f3), self.conv4_3_norm(f4), self.conv5_3_norm(f5)
        c0, c1, c2, face = torch.chunk(self.conv3_3_norm_mbox_conf(f3), 4, 1)
        cls1 = torch.cat([torch.max(torch.max(c0, c1), c2), face], dim=1)  # max-out background
        maps = [cls1, self.conv3_3_norm_mbox_loc(f3),
                self.conv4_3_norm_mbox_conf(f4), self.conv4_3_norm_mbox_loc(f4),
                self.conv5_3_norm_mbox_conf(f5), self.conv5_3_norm_mbox_loc(f5)]
        return maps, pool5

    def tail(self, pool5):
        fc7 = self._convs(("fc6", "fc7"), pool5)
        f6 = self._convs(("conv6_1", "conv6_2"), fc7)
        f7 = self._convs(("conv7_1", "conv7_2"), f6)
        return [self.fc7_mbox_conf(fc7), self.fc7_mbox_loc(fc7),
                self.conv6_2_mbox_conf(f6), self.conv6_2_mbox_loc(f6),
                self.conv7_2_mbox_conf(f7), self.conv7_2_mbox_loc(f7)]

    def forward(self, x):
        maps, pool5 = self.trunk(x)
        return maps + self.tail(pool5)


def preprocess(frames_bgr, device):
    """uint8 BGR frames (B,H,W,3) -> the network input, exactly as the original builds it.

    The uint8 frames travel to the device as they are; BGR -> RGB and float there."""
    x = torch.from_numpy(np.ascontiguousarray(frames_bgr)).to(device)
    x = x.permute(0, 3, 1, 2).flip(1).float()
    return x - torch.tensor(PIXEL_MEAN, device=device).view(1, 3, 1, 1)


def _decode(reg, stride, ys, xs):
    """SSD decoding of offsets `reg` (N, 4) at cells (ys, xs) of stride `stride` (a number or one per
    row), in float32 like the original."""
    anchor = 4.0 * stride
    if torch.is_tensor(anchor):
        anchor = anchor[:, None]
    centre = torch.stack([stride / 2 + xs * stride, stride / 2 + ys * stride], -1).float()
    xy = centre + reg[..., :2] * 0.1 * anchor
    wh = anchor * torch.exp(reg[..., 2:] * 0.2)
    x1y1 = xy - wh / 2
    return torch.cat([x1y1, x1y1 + wh], -1)


def nms(dets, threshold=NMS_THRESHOLD, order=None):
    """Indices kept by greedy NMS with the original's pixel-inclusive areas, best first.

    `order` (indices, best first) replaces the sort by score: the original's sort of its whole
    batch candidate list, which decides between equal scores."""
    x1, y1, x2, y2, score = dets.T.astype(np.float64)
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(score)[::-1] if order is None else np.asarray(order)
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        iou = w * h / (areas[i] + areas[rest] - w * h)
        order = rest[iou <= threshold]
    return np.asarray(keep, dtype=np.int64)


def _flat_maps(maps):
    """Scores (B, N) and offsets (B, N, 4) of every anchor of every level, with each anchor's
    stride, row and column (N,), and the number of anchors per level."""
    batch = maps[0].shape[0]
    scores, regs, strides, ys, xs = [], [], [], [], []
    for level, stride in enumerate(STRIDES):
        h, w = maps[2 * level].shape[2:]
        scores.append(F.softmax(maps[2 * level], dim=1)[:, 1].reshape(batch, -1))
        regs.append(maps[2 * level + 1].permute(0, 2, 3, 1).reshape(batch, -1, 4))
        cells = torch.arange(h * w, device=scores[-1].device)
        strides.append(torch.full_like(cells, stride))
        ys.append(cells // w)
        xs.append(cells % w)
    level_sizes = [s.shape[1] for s in scores]
    return torch.cat(scores, 1), torch.cat(regs, 1), torch.cat(strides), torch.cat(ys), torch.cat(xs), level_sizes


def _emitted(scores, level_sizes):
    """Cells of the original's batch candidate list, in its order: level by level, for each image
    I of the batch the cells where I's score passes 0.05 (row-major). Every image of the batch
    gets this same list, each with its own scores (a cell passing in two images appears twice)."""
    emitted, start = [], 0
    for size in level_sizes:
        passing = torch.nonzero(scores[:, start:start + size] > CANDIDATE_THRESHOLD)  # (I, cell) row-major
        emitted.append(passing[:, 1] + start)
        start += size
    return torch.cat(emitted).cpu().numpy()


def _originals_order(score, emitted):
    """The cells `emitted`, sorted by one image's `score` (numpy) with the original's unstable
    `argsort()[::-1]`: the same list through the same sort, so equal scores fall as there."""
    return emitted[np.argsort(score[emitted])[::-1]]


def postprocess(maps):
    """All faces per image after NMS and the 0.5 threshold, as (K, 5) float32 arrays
    [x1, y1, x2, y2, score], in the original's order (the first is the face Wav2Lip uses).

    Candidates at or below 0.5 can only suppress boxes scoring even lower, which the final
    threshold drops anyway, so they leave NMS before it (in the original's sorted order)."""
    scores, regs, strides, ys, xs, level_sizes = _flat_maps([torch.as_tensor(m) for m in maps])
    emitted, host_scores = _emitted(scores, level_sizes), scores.cpu().numpy()
    out = []
    for b in range(scores.shape[0]):
        order = _originals_order(host_scores[b], emitted)
        order = order[host_scores[b, order] > KEEP_THRESHOLD]
        if not len(order):
            out.append(np.zeros((0, 5), np.float32))
            continue
        cells, first = np.unique(order, return_index=True)  # a cell emitted twice is one box
        ranked = cells[np.argsort(first)]
        index = torch.from_numpy(ranked).to(regs.device)
        boxes = _decode(regs[b, index], strides[index], ys[index], xs[index])
        dets = torch.cat([boxes, scores[b, index, None]], 1).cpu().numpy()
        out.append(dets[nms(dets, order=np.arange(len(dets)))])
    return out


def best_boxes(maps):
    """Per image the original's chosen face (int x1, y1, x2, y2 clipped at 0) or None.

    Vectorised over every anchor of every level: the chosen face is the top-scoring candidate,
    with ties broken as the original's sort breaks them."""
    batch = maps[0].shape[0]
    scores, regs, strides, ys, xs, level_sizes = _flat_maps(maps)
    top, cell = scores.max(1)
    ties = (scores == top[:, None]).sum(1)
    # One transfer from the device for the whole batch (a GPU waits at every transfer).
    top, cell, ties = (t.cpu().numpy() for t in (top, cell, ties))
    tied = np.flatnonzero((ties > 1) & (top > KEEP_THRESHOLD))
    if len(tied):  # the cell the original's sort puts first
        emitted = _emitted(scores, level_sizes)
        for b in tied:
            cell[b] = _originals_order(scores[b].cpu().numpy(), emitted)[0]
    cell = torch.from_numpy(cell).to(regs.device)
    boxes = _decode(regs[torch.arange(batch, device=regs.device), cell], strides[cell], ys[cell], xs[cell])
    # Clipped at 0 as the original; the rest only tames the overflow of untrained weights.
    boxes = np.clip(np.nan_to_num(boxes.cpu().numpy(), nan=0.0, posinf=2 ** 31 - 1, neginf=0.0), 0, 2 ** 31 - 1)
    return [None if top[b] <= KEEP_THRESHOLD else tuple(int(v) for v in boxes[b]) for b in range(batch)]


class S3FDDetector:
    """Batched S3FD face detection on BGR frames, as the original Wav2Lip runs it.

    A call's frames are one batch of the original (its `face_det_batch_size`): on the CPU the
    trunk runs a frame at a time in strips of rows, the tail and the decoding the whole batch."""

    name = "S3FD"

    def __init__(self, weights_path, device="cpu"):
        from models.checkpoint import require_file

        self.device = torch.device(device)
        self.weights_path = require_file(weights_path)
        self._cache_key = None
        self._net = None

    @property
    def net(self):
        """The network, loaded at first use: a re-run that finds its detections cached never loads it."""
        if self._net is None:
            from models.checkpoint import load_weights

            net = S3FD()
            load_weights(net, self.weights_path, what="S3FD")
            self._net = net.to(self.device).eval()
        return self._net

    @property
    def cache_key(self):
        """Names this detector and its weights (by content) for the detection cache."""
        if self._cache_key is None:
            from .cache import file_sha256

            # The device class shapes the boxes too: GPU convolutions round differently.
            self._cache_key = "S3FD:%s:%s" % (file_sha256(self.weights_path), self.device.type)
        return self._cache_key

    def frames_per_forward(self, frames_bgr):
        return 1 if self.device.type == "cpu" else len(frames_bgr)

    def strip_rows(self, width):
        """Rows per strip of the trunk's early stages for frames of `width` (None: whole frames)."""
        return max(4, CPU_PIXELS_PER_STRIP // width // 4 * 4) if self.device.type == "cpu" else None

    @torch.inference_mode()
    def maps(self, frames_bgr):
        """The network's 12 output maps for a batch of frames."""
        step, rows = self.frames_per_forward(frames_bgr), self.strip_rows(frames_bgr[0].shape[1])
        parts = [self.net.trunk(preprocess(frames_bgr[i:i + step], self.device), rows)
                 for i in range(0, len(frames_bgr), step)]
        maps = [torch.cat([p[0][k] for p in parts]) for k in range(6)]
        return maps + self.net.tail(torch.cat([p[1] for p in parts]))

    @torch.inference_mode()
    def detect(self, frames_bgr):
        if len(frames_bgr) == 0:
            return []
        height, width = frames_bgr[0].shape[:2]
        return [None if box is None else clip_to_frame(box, width, height)
                for box in best_boxes(self.maps(frames_bgr))]

    @torch.inference_mode()
    def detect_all(self, frames_bgr):
        """Per frame every face NMS keeps, [(x1, y1, x2, y2, score), ...] best first (the first is
        `detect`'s box), integer coordinates clipped at 0 and bounded by the frame."""
        if len(frames_bgr) == 0:
            return []
        height, width = frames_bgr[0].shape[:2]
        faces = []
        for dets in postprocess(self.maps(frames_bgr)):
            boxes = np.clip(np.nan_to_num(dets[:, :4], nan=0.0, posinf=2 ** 31 - 1, neginf=0.0), 0, 2 ** 31 - 1)
            faces.append([clip_to_frame(tuple(int(v) for v in box), width, height) + (float(score),)
                          for box, score in zip(boxes, dets[:, 4])])
        return faces


def clip_to_frame(box, width, height):
    """Bound a box's far edges by the frame, as the padding step does anyway: boxes that run
    far past the frame (untrained weights give coordinates beyond int64) stay representable,
    and the paste boxes are unchanged."""
    x1, y1, x2, y2 = box
    return min(x1, width), min(y1, height), min(x2, width), min(y2, height)
