"""A deliberately straightforward Wav2Lip inference that mirrors the original code step by step.

For `benchmark.py --compare-naive` and the equality tests only: it is the yardstick the fast
paths are measured against. Like the original it decodes every frame into memory first,
runs S3FD at full resolution one batch at a time with a Python loop over every candidate
anchor and NMS over all of them, feeds the generator batches of 128, writes a lossy DIVX
AVI and re-encodes that with the ffmpeg command line. Its mel spectrogram is computed
with scipy and librosa as the original's audio.py did; the other numeric steps it shares with
the streaming pipeline (mel windows, box padding and smoothing) are imported.
"""
import os
import subprocess
import tempfile

import cv2
import numpy as np
import torch
import torch.nn.functional as F

import inference
import videoio
from face_detection import s3fd
from hparams import hparams


# --------------------------------------------------------------------------- the original's mel
def original_melspectrogram(wav):
    """The original audio.melspectrogram: scipy pre-emphasis, librosa STFT (reflect padding, as
    librosa 0.7) and librosa's Slaney filter bank, then dB and normalisation."""
    import librosa
    from scipy import signal

    emphasised = signal.lfilter([1, -hparams.preemphasis], [1], wav)
    spectrum = np.abs(librosa.stft(y=emphasised, n_fft=hparams.n_fft, hop_length=hparams.hop_size,
                                   win_length=hparams.win_size, pad_mode="reflect"))
    basis = librosa.filters.mel(sr=hparams.sample_rate, n_fft=hparams.n_fft, n_mels=hparams.num_mels,
                                fmin=hparams.fmin, fmax=hparams.fmax)
    db = 20 * np.log10(np.maximum(10 ** (hparams.min_level_db / 20), np.dot(basis, spectrum))) - hparams.ref_level_db
    scaled = 2 * hparams.max_abs_value * (db - hparams.min_level_db) / -hparams.min_level_db - hparams.max_abs_value
    return np.clip(scaled, -hparams.max_abs_value, hparams.max_abs_value)


# --------------------------------------------------------------------------- S3FD as the original runs it
def batch_detect(net, images_rgb):
    """The original's `batch_detect`: every candidate of the batch, (N, B, 5), one anchor at a time."""
    imgs = (images_rgb - np.array([104, 117, 123])).transpose(0, 3, 1, 2)
    imgs = torch.from_numpy(imgs).float().to(next(net.parameters()).device)
    batch = imgs.shape[0]
    with torch.no_grad():
        olist = net(imgs)
    for i in range(len(olist) // 2):
        olist[i * 2] = F.softmax(olist[i * 2], dim=1)
    olist = [o.cpu() for o in olist]
    bboxlist = []
    for i in range(len(olist) // 2):
        ocls, oreg = olist[i * 2], olist[i * 2 + 1]
        stride = 2 ** (i + 2)
        for image, hindex, windex in zip(*np.where(ocls[:, 1, :, :] > 0.05)):
            axc, ayc = stride / 2 + windex * stride, stride / 2 + hindex * stride
            score = ocls[:, 1, hindex, windex]
            loc = oreg[:, :, hindex, windex].contiguous().view(batch, 1, 4)
            priors = torch.Tensor([[axc / 1.0, ayc / 1.0, stride * 4 / 1.0, stride * 4 / 1.0]]).view(1, 1, 4)
            boxes = torch.cat((priors[:, :, :2] + loc[:, :, :2] * 0.1 * priors[:, :, 2:],
                               priors[:, :, 2:] * torch.exp(loc[:, :, 2:] * 0.2)), 2)
            boxes[:, :, :2] -= boxes[:, :, 2:] / 2
            boxes[:, :, 2:] += boxes[:, :, :2]
            bboxlist.append(torch.cat([boxes[:, 0], score.unsqueeze(1)], 1).numpy())
    bboxlist = np.array(bboxlist)
    return bboxlist if len(bboxlist) else np.zeros((1, batch, 5))


def detections_for_batch(net, images_bgr):
    """The original's `get_detections_for_batch`: per image the first box NMS keeps, or None."""
    bboxlists = batch_detect(net, images_bgr[..., ::-1].copy())
    results = []
    for i in range(bboxlists.shape[1]):
        dets = bboxlists[:, i, :]
        kept = [d for d in dets[s3fd.nms(dets)] if d[-1] > 0.5]
        if not kept:
            results.append(None)
            continue
        x1, y1, x2, y2 = map(int, np.clip(kept[0], 0, None)[:-1])
        results.append((x1, y1, x2, y2))
    return results


def face_detect(net, frames, batch_size=16):
    """Detector boxes for every frame, one batch of `batch_size` full-resolution frames at a time."""
    detections = []
    for i in range(0, len(frames), batch_size):
        detections.extend(detections_for_batch(net, np.array(frames[i:i + batch_size])))
    return detections


# --------------------------------------------------------------------------- the rest of the original pipeline
def read_all_frames(path, resize_factor=1, rotate=False, crop=(0, -1, 0, -1)):
    return [videoio.prepare_frame(f, resize_factor, rotate, crop) for f in videoio.read_frames(path)]


def datagen(frames, mels, boxes, batch_size):
    """The original's generator batches: (model inputs float64, mels, frames to paste into, boxes)."""
    img_batch, mel_batch, frame_batch, coords_batch = [], [], [], []
    for i, m in enumerate(mels):
        idx = i % len(frames)
        y1, y2, x1, x2 = boxes[idx]
        face = cv2.resize(frames[idx][y1:y2, x1:x2], (hparams.img_size, hparams.img_size))
        img_batch.append(face)
        mel_batch.append(m)
        frame_batch.append(frames[idx].copy())
        coords_batch.append((y1, y2, x1, x2))
        if len(img_batch) >= batch_size or i == len(mels) - 1:
            img_batch = np.asarray(img_batch)
            img_masked = img_batch.copy()
            img_masked[:, hparams.img_size // 2:] = 0
            img_batch = np.concatenate((img_masked, img_batch), axis=3) / 255.
            mel_batch = np.reshape(np.asarray(mel_batch), [len(mel_batch), mel_batch[0].shape[0],
                                                           mel_batch[0].shape[1], 1])
            yield img_batch, mel_batch, frame_batch, coords_batch
            img_batch, mel_batch, frame_batch, coords_batch = [], [], [], []


def lipsync_video(model, face_path, audio_path, outfile, net=None, box=(-1, -1, -1, -1),
                  face_det_batch_size=16, wav2lip_batch_size=128, pads=(0, 10, 0, 0), nosmooth=False,
                  frame_sink=None):
    """The original inference end to end; returns seconds per stage.

    `frame_sink(frame)`, when given, sees every frame handed to the lossy AVI writer."""
    clock = inference.StageClock()
    with clock("decode"):
        fps = videoio.video_fps(face_path)
        frames = read_all_frames(face_path)
    with clock("mel"):
        mel = original_melspectrogram(inference.load_speech(audio_path))
        mels = inference.mel_chunks(mel, fps)
        frames = frames[:len(mels)]
    if box[0] == -1:
        with clock("detect"):
            detections = face_detect(net, frames, face_det_batch_size)
        if any(d is None for d in detections):
            raise inference.InferenceError("Face not detected! Ensure the video contains a face in all the frames.")
        boxes = [tuple(b) for b in inference.face_boxes(detections, frames[0].shape, pads, nosmooth)]
    else:
        boxes = [tuple(box)] * len(frames)
    height, width = frames[0].shape[:2]
    device = next(model.parameters()).device
    with tempfile.TemporaryDirectory() as temp:
        avi = os.path.join(temp, "result.avi")
        writer = cv2.VideoWriter(avi, cv2.VideoWriter_fourcc(*"DIVX"), fps, (width, height))
        batches = datagen(frames, mels, boxes, wav2lip_batch_size)
        while True:
            with clock("generate"):
                batch = next(batches, None)
                if batch is None:
                    break
                img_batch, mel_batch, frame_batch, coords_batch = batch
                img_batch = torch.FloatTensor(np.transpose(img_batch, (0, 3, 1, 2))).to(device)
                mel_batch = torch.FloatTensor(np.transpose(mel_batch, (0, 3, 1, 2))).to(device)
                with torch.no_grad():
                    pred = model(mel_batch, img_batch)
                pred = pred.cpu().numpy().transpose(0, 2, 3, 1) * 255.
            for p, f, (y1, y2, x1, x2) in zip(pred, frame_batch, coords_batch):
                with clock("paste"):
                    f[y1:y2, x1:x2] = cv2.resize(p.astype(np.uint8), (x2 - x1, y2 - y1))
                if frame_sink is not None:
                    frame_sink(f)
                with clock("encode"):
                    writer.write(f)
        with clock("encode"):
            writer.release()
            import imageio_ffmpeg  # only here: the detection cost is measured where it is not installed

            command = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-i", audio_path,
                       "-i", avi, "-strict", "-2", "-q:v", "1", outfile]
            subprocess.run(command, check=True)
    return dict(clock.seconds)
