"""MFCC features as SyncNet v2 was trained on them (python_speech_features 0.6 `mfcc` defaults).

Written from the recipe in the LSE spec, section 4: 25 ms rectangular frames every 10 ms,
26 mel filters, 13 cepstra with lifter 22 and coefficient 0 replaced by the log frame energy.
"""
import numpy as np
from scipy.fft import dct

SAMPLE_RATE = 16000
FRAME_LENGTH = 400  # 25 ms
FRAME_STEP = 160  # 10 ms: 4 MFCC steps per 25 fps video frame
NFFT = 512
N_FILTERS = 26
N_CEPSTRA = 13
LIFTER = 22
PREEMPHASIS = 0.97
EPS = np.finfo(np.float64).eps


def _frames(signal):
    """Zero-padded (F, 400) frames of `signal`, one every 160 samples."""
    n = len(signal)
    count = 1 if n <= FRAME_LENGTH else 1 + int(np.ceil((n - FRAME_LENGTH) / FRAME_STEP))
    padded = np.zeros((count - 1) * FRAME_STEP + FRAME_LENGTH)
    padded[:n] = signal
    index = np.arange(FRAME_LENGTH)[None, :] + FRAME_STEP * np.arange(count)[:, None]
    return padded[index]


def _mel_filterbank():
    """(26, 257) triangular filters between 0 and 8000 Hz, not area-normalised."""
    def hz_to_mel(hz):
        return 2595 * np.log10(1 + hz / 700.0)

    mels = np.linspace(hz_to_mel(0), hz_to_mel(SAMPLE_RATE / 2), N_FILTERS + 2)
    hz = 700 * (10 ** (mels / 2595.0) - 1)
    bins = np.floor((NFFT + 1) * hz / SAMPLE_RATE).astype(int)
    bank = np.zeros((N_FILTERS, NFFT // 2 + 1))
    for j in range(N_FILTERS):
        lo, mid, hi = bins[j], bins[j + 1], bins[j + 2]
        bank[j, lo:mid] = (np.arange(lo, mid) - lo) / (mid - lo)
        bank[j, mid:hi] = (hi - np.arange(mid, hi)) / (hi - mid)
    return bank


def mfcc(samples):
    """(F, 13) float64 MFCCs of 16 kHz mono samples, 100 rows per second.

    `samples` are used at their raw scale (int16 values, not [-1, 1)), as the metric does:
    coefficient 0 is the natural log of the frame energy, so the scale shifts it by a constant.
    """
    x = np.asarray(samples, dtype=np.float64)
    if x.ndim != 1 or len(x) == 0:
        raise ValueError("mfcc expects non-empty 1-D mono samples, got shape %s" % (x.shape,))
    emphasised = np.append(x[0], x[1:] - PREEMPHASIS * x[:-1])
    power = np.abs(np.fft.rfft(_frames(emphasised), NFFT)) ** 2 / NFFT
    energy = power.sum(axis=1)
    energy[energy == 0] = EPS
    filter_energies = power @ _mel_filterbank().T
    filter_energies[filter_energies == 0] = EPS
    cepstra = dct(np.log(filter_energies), type=2, axis=1, norm="ortho")[:, :N_CEPSTRA]
    cepstra *= 1 + (LIFTER / 2.0) * np.sin(np.pi * np.arange(N_CEPSTRA) / LIFTER)
    cepstra[:, 0] = np.log(energy)
    return cepstra
