"""Audio loading (any audio file, or the audio track of any video) and Wav2Lip's mel spectrogram.

Decoding goes through PyAV (ffmpeg from PyPI), resampling through soxr at the quality
librosa.load uses by default, so the samples equal what the original's librosa.load gave.
The STFT and mel filter bank are computed here with numpy (the conformance kit checks them
against the original's librosa output), which also spares every run librosa's import.
"""
import os

import numpy as np
import soxr

from hparams import hparams as hp


class AudioError(ValueError):
    """Bad audio input; the message names the file and what to do."""


def to_float32(frame_array):
    """Samples as float32, integers scaled like libsndfile (int16 / 32768); any shape."""
    a = frame_array
    if a.dtype == np.int16:
        a = a.astype(np.float32) / 32768.0
    elif a.dtype == np.int32:
        a = (a.astype(np.float64) / 2147483648.0).astype(np.float32)
    elif a.dtype == np.uint8:
        a = (a.astype(np.float32) - 128.0) / 128.0
    else:
        a = a.astype(np.float32)
    return a


def _decode(path, as_int16=False):
    """Decode the first audio stream of `path` into float32 mono at its own rate.

    `as_int16` rounds every channel to 16-bit first, as ffmpeg does when writing a PCM wav."""
    import av

    if not os.path.isfile(path):
        raise AudioError("audio file not found: %s" % path)
    try:
        container = av.open(path)
    except av.FFmpegError as e:
        raise AudioError("cannot read audio from %s: %s" % (path, e))
    with container:
        if not container.streams.audio:
            raise AudioError("%s has no audio stream; pass a file with speech as --audio" % path)
        stream = container.streams.audio[0]
        sr = stream.codec_context.sample_rate or stream.rate
        chunks = []
        try:
            for frame in container.decode(stream):
                a = to_float32(frame.to_ndarray())
                if not frame.format.is_planar:  # packed: (1, n * channels)
                    a = a.reshape(-1, len(frame.layout.channels)).T
                if as_int16:
                    a = np.clip(np.rint(a * 32768.0), -32768, 32767).astype(np.float32) / 32768.0
                chunks.append(a.mean(axis=0, dtype=np.float32) if a.shape[0] > 1 else a[0])
        except av.FFmpegError as e:
            raise AudioError("audio of %s is corrupt: %s" % (path, e))
        # MP4 states the exact track length (edit list); drop the AAC padding decoded past it.
        exact = "mp4" in container.format.name and stream.duration and stream.time_base
        length = round(stream.duration * stream.time_base * sr) if exact else None
    wav = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    return wav[:length], int(sr)


def load_wav(path, sr=None, as_int16=False):
    """Mono float32 samples of `path` at `sr` Hz (default hparams.sample_rate), from audio files
    and the audio track of videos.

    `as_int16` reproduces the original inference, which first converted non-wav input to a
    16-bit wav with ffmpeg."""
    sr = hp.sample_rate if sr is None else sr
    wav, file_sr = _decode(path, as_int16)
    if file_sr != sr and len(wav):
        wav = soxr.resample(wav, file_sr, sr, quality="HQ").astype(np.float32)
    return wav


# Every function reads hparams when it is called (never at import), so --hparams overrides apply.
def hop_size():
    """Samples between STFT frames: hparams.hop_size, or frame_shift_ms when hop_size is none."""
    if hp.hop_size is not None:
        return int(hp.hop_size)  # set back from none, it reads as a float
    if hp.frame_shift_ms is None:
        raise AudioError("hparams hop_size and frame_shift_ms are both none; set one of them")
    return int(hp.frame_shift_ms / 1000 * hp.sample_rate)


def mel_columns_per_second():
    """Mel columns per second of audio: 80 with the defaults (16000 / 200)."""
    return hp.sample_rate / hop_size()


def mel_settings():
    """Everything the mel spectrogram of a file depends on, as it is computed (a cache key)."""
    emphasis = hp.preemphasis if hp.preemphasize else None
    normalization = ((hp.symmetric_mels, hp.max_abs_value, hp.allow_clipping_in_normalization)
                     if hp.signal_normalization else None)
    return dict(sample_rate=hp.sample_rate, num_mels=hp.num_mels, n_fft=hp.n_fft, hop_size=hop_size(),
                win_size=hp.win_size, fmin=hp.fmin, fmax=hp.fmax, preemphasis=emphasis,
                min_level_db=hp.min_level_db, ref_level_db=hp.ref_level_db, normalization=normalization)


def preemphasis(wav, k=None, preemphasize=None):
    """y[n] = x[n] - k x[n-1] in float64: the same numbers as the original's scipy lfilter.

    `k` and `preemphasize` default to hparams.preemphasis and hparams.preemphasize."""
    k = hp.preemphasis if k is None else k
    preemphasize = hp.preemphasize if preemphasize is None else preemphasize
    if not preemphasize:
        return wav
    x = np.asarray(wav, dtype=np.float64)
    y = x.copy()
    y[1:] -= k * x[:-1]
    return y


def _stft_magnitude(y, block=4096):
    """|STFT| (1 + n_fft // 2, T) with a periodic Hann window and centred frames.

    The signal is padded by reflection, as librosa 0.7 (which the published models were
    trained with) did."""
    return stft_magnitude(np.pad(y, hp.n_fft // 2, mode="reflect"), block)


def stft_magnitude(padded, block=4096):
    """|STFT| of an already padded signal: one column per hop_size step of a full n_fft frame.

    Frames are transformed a block at a time to bound memory; the live engine calls this on
    the stretch of an utterance whose columns have become final."""
    n_fft, hop = hp.n_fft, hop_size()
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(hp.win_size) / hp.win_size)
    window = np.pad(window, ((n_fft - hp.win_size) // 2, (n_fft - hp.win_size + 1) // 2))
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop]
    return np.concatenate([np.abs(np.fft.rfft(frames[i:i + block] * window, axis=1)).T
                           for i in range(0, len(frames), block)], axis=1)


def _hz_to_mel(hz):
    """Slaney's mel scale: linear below 1 kHz (200/3 Hz per mel), logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    linear = hz / (200.0 / 3)
    log_part = 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) / (np.log(6.4) / 27.0)
    return np.where(hz >= 1000.0, log_part, linear)


def _mel_to_hz(mel):
    mel = np.asarray(mel, dtype=np.float64)
    return np.where(mel >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27.0) * (mel - 15.0)), (200.0 / 3) * mel)


_mel_basis_cache = {}


def _mel_basis():
    """Slaney-style, area-normalised triangular filters (num_mels, 1 + n_fft // 2), float32."""
    key = (hp.sample_rate, hp.n_fft, hp.num_mels, hp.fmin, hp.fmax)
    if key not in _mel_basis_cache:
        edges = _mel_to_hz(np.linspace(_hz_to_mel(hp.fmin), _hz_to_mel(hp.fmax), hp.num_mels + 2))
        bins = np.fft.rfftfreq(hp.n_fft, 1.0 / hp.sample_rate)
        rising = (bins[None, :] - edges[:-2, None]) / np.diff(edges)[:-1, None]
        falling = (edges[2:, None] - bins[None, :]) / np.diff(edges)[1:, None]
        weights = np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)
        weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
        _mel_basis_cache[key] = weights
    return _mel_basis_cache[key]


def _amp_to_db(x):
    min_level = np.exp(hp.min_level_db / 20 * np.log(10))
    return 20 * np.log10(np.maximum(min_level, x))


def _normalize(S):
    scale = (S - hp.min_level_db) / -hp.min_level_db
    if hp.symmetric_mels:
        out = (2 * hp.max_abs_value) * scale - hp.max_abs_value
        lo = -hp.max_abs_value
    else:
        out = hp.max_abs_value * scale
        lo = 0
    if hp.allow_clipping_in_normalization:
        out = np.clip(out, lo, hp.max_abs_value)
    return out


def mel_from_magnitude(magnitude):
    """Normalised mel columns (num_mels, T) from |STFT| columns."""
    S = _amp_to_db(np.dot(_mel_basis(), magnitude)) - hp.ref_level_db
    return _normalize(S) if hp.signal_normalization else S


def melspectrogram(wav):
    """(num_mels, T) mel spectrogram of 16 kHz samples, T = 1 + len(wav) // hop_size."""
    wav = np.asarray(wav)
    if wav.ndim != 1:
        raise AudioError("melspectrogram expects 1-D samples, got shape %s" % (wav.shape,))
    if len(wav) == 0:  # reflection padding needs a sample
        raise AudioError("no audio samples to compute a mel spectrogram of; pass speech that is not empty")
    return mel_from_magnitude(_stft_magnitude(preemphasis(wav)))
