"""The mel spectrogram of an utterance computed as its samples arrive, column by column, equal to
`audio.melspectrogram` of the whole utterance.

Column t is the STFT frame centred on sample t * hop_size of the signal reflect-padded by
n_fft // 2 at both ends, after pre-emphasis. It is final once its n_fft samples have arrived;
the first columns wait for the reflection at the start (n_fft // 2 + 1 samples), the last
ones (about two) for the utterance's end, whose reflection they contain.
"""
import functools

import numpy as np
from threadpoolctl import ThreadpoolController

import audio
from hparams import hparams as hp


def column_count(length):
    """The mel columns of an utterance of `length` samples: one STFT frame centred on every hop."""
    return 1 + length // audio.hop_size()


class StreamingMel:
    """Mel columns of one utterance: `push(samples)` and `end()` return the columns that became final."""

    def __init__(self):
        self.length = 0               # samples pushed
        self.columns = 0              # final columns returned so far
        self._last = 0.0              # last raw sample, carried into the next chunk's pre-emphasis
        self._head = []               # pre-emphasised samples while the start's reflection is unknown
        self._padded = None           # the padded signal from padded position self._base on
        self._base = 0
        self.ended = False

    def push(self, samples):
        x = np.asarray(samples, dtype=np.float32)
        if self.ended:
            raise ValueError("the utterance has ended")
        if not len(x):
            return self._empty()
        # Pre-emphasis y[n] = x[n] - k x[n-1] across chunk boundaries: the previous sample leads the chunk.
        y = audio.preemphasis(np.concatenate([np.float32([self._last]), x]), hp.preemphasis, hp.preemphasize)[1:]
        self._last = x[-1]
        self.length += len(x)
        if self._padded is None:
            self._head.append(np.asarray(y, np.float64))
            if self.length <= hp.n_fft // 2:
                return self._empty()
            head = np.concatenate(self._head)
            self._head = []
            self._padded = np.concatenate([head[hp.n_fft // 2:0:-1], head])
        else:
            self._padded = np.concatenate([self._padded, y])
        return self._final_columns()

    def end(self):
        """The remaining columns, now that the utterance's last sample is known."""
        if self.ended:
            return self._empty()
        self.ended = True
        pad = hp.n_fft // 2
        if self._padded is None:  # too short for the incremental start: pad the whole as melspectrogram does
            if not self.length:
                return self._empty()
            self._padded = np.pad(np.concatenate(self._head), pad, mode="reflect")
        else:
            self._padded = np.concatenate([self._padded, self._padded[-pad - 1:-1][::-1]])
        return self._final_columns()

    def _final_columns(self):
        hop = audio.hop_size()
        available = self._base + len(self._padded)
        count = (available - hp.n_fft) // hop + 1 - self.columns
        if count <= 0:
            return self._empty()
        start = self.columns * hop - self._base
        stop = start + (count - 1) * hop + hp.n_fft
        with _blas().limit(limits=1, user_api="blas"):
            mel = audio.mel_from_magnitude(audio.stft_magnitude(self._padded[start:stop]))
        self.columns += count
        # Keep only what the next column needs.
        self._padded = self._padded[self.columns * hop - self._base:]
        self._base = self.columns * hop
        return mel

    @staticmethod
    def _empty():
        return np.zeros((hp.num_mels, 0))


@functools.lru_cache(maxsize=None)
def _blas():
    """numpy's BLAS, held to one thread for these few columns: its idle threads spin, and on
    2 cores they took the generator's (int8 generation per frame 39.5 -> 32.2 ms, measured)."""
    return ThreadpoolController()
