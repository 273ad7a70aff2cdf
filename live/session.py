"""Live sessions: speech in as it arrives, lip-synced frames of an avatar out, on one sample clock.

Output frame i carries the session's samples [round(i * 16000 / fps), round((i + 1) * 16000 / fps))
and pts = i / fps, so audio and video cannot drift. Each utterance starts at a frame boundary;
its frame j gets the offline core's mel window j (lipsync.mel_chunk_starts of the utterance's
mel, computed incrementally by StreamingMel), and the avatar's frame and box of output frame i
(ping-pong over the avatar's frames). Frames past the offline core's last one, which carry the
utterance's last ~120 ms of audio, reuse its last window. Between utterances the avatar idles:
its own frames, silence, no generator run.
"""
import math
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass

import numpy as np
import soxr

import audio
import lipsync
from hparams import hparams as hp
from inference import generator_batch_size

from .mel import StreamingMel, column_count

# Audio a frame needs beyond its own first sample: its 16-column mel window plus the STFT's half window.
LOOKAHEAD_SECONDS = ((lipsync.MEL_STEP_SIZE - 1) * hp.hop_size + hp.n_fft // 2) / hp.sample_rate
# An utterance shorter than one mel window is padded with silence to one window.
MIN_UTTERANCE = (lipsync.MEL_STEP_SIZE - 1) * hp.hop_size
SILENCE_LEVEL = 1e-3                      # |sample| at or below this is silence, for silence_gap


class LiveError(ValueError):
    """Bad input to a live session; the message is one line naming the fix."""


@dataclass(frozen=True)
class Frame:
    image: np.ndarray         # BGR uint8, the avatar's size
    audio: np.ndarray         # int16 samples at 16 kHz belonging to this frame
    pts: float                # index / fps
    index: int                # output frame number
    source_index: int         # the avatar frame used
    speaking: bool
    caught_up: bool = False   # a speech frame sent with the avatar's own face (the session was behind max_lag)


def pingpong(index, count):
    """Avatar frame of output frame `index`: 0..count-1, then count-2..1, repeating."""
    if count == 1:
        return 0
    q = index % (2 * count - 2)
    return q if q < count else 2 * count - 2 - q


_generators = weakref.WeakKeyDictionary()
_generators_lock = threading.Lock()


def generator_for(model, fast=False):
    """The inference copy of `model` (lipsync.inference_model, reduced precision when `fast`),
    made once per model and precision and shared by every session on it."""
    dtype = lipsync.fast_dtype(next(model.parameters()).device) if fast else None
    with _generators_lock:
        made = _generators.setdefault(model, {})
        if dtype not in made:
            generator = lipsync.inference_model(model, dtype)
            if generator is model:  # already an inference model: nothing to keep
                return model
            made[dtype] = generator
        return made[dtype]


def as_mono(samples, sample_rate):
    """float32 mono samples of a pushed chunk (int16 scaled by 1/32768; samples x channels mixed down)."""
    try:
        x = np.asarray(samples)
    except (TypeError, ValueError):
        raise LiveError("push() takes a numpy array of samples, got %s" % type(samples).__name__) from None
    if x.dtype.kind not in "iuf" or x.ndim not in (1, 2):
        raise LiveError("push() takes int16 or float32 samples as a 1-D array or 2-D samples x channels, got %s "
                        "of shape %s" % (x.dtype, x.shape))
    if not (isinstance(sample_rate, (int, float)) and math.isfinite(sample_rate) and sample_rate > 0):
        raise LiveError("sample_rate %r is not a rate; pass the samples' rate in Hz, e.g. 16000" % (sample_rate,))
    x = audio.to_float32(x)
    if x.ndim == 2:
        x = x.mean(axis=1, dtype=np.float32)  # as audio.load_wav mixes channels down
    if not np.isfinite(x).all():
        raise LiveError("the samples contain NaN or infinite values; pass finite audio (nothing was queued)")
    return x


class _Utterance:
    """The queued speech of one utterance: its samples and mel columns from what is still needed on.

    Pushed samples wait in `unheard` until a frame's window asks for columns: the mel is then
    computed on the reading thread, between generator calls, rather than on the pushing thread
    beside them (there, 0.4 ms of numpy every 20 ms chunk slowed the 2-core int8 generator by
    1.9 ms a frame, paired median of 8 runs)."""

    def __init__(self):
        self.mel = StreamingMel()
        self.columns, self.column_base = np.zeros((hp.num_mels, 0)), 0
        self.samples, self.sample_base = np.zeros(0, np.float32), 0
        self.length = 0             # samples pushed
        self.arrivals = deque()     # (samples pushed, monotonic time) after each push, from what frames still need
        self.unheard = []           # pushed samples not yet given to self.mel
        self.quiet = 0              # trailing silent samples, for the silence gap
        self.starts = None          # mel_chunk_starts, once ended
        self.first_index = None     # output index of its first frame, once it plays
        self.next = 0               # its next frame

    @property
    def ended(self):
        return self.starts is not None

    def add(self, x, now):
        self.samples = np.concatenate([self.samples, x])
        self.unheard.append(x)
        self.length += len(x)
        self.arrivals.append((self.length, now))

    def arrival(self, needed):
        """When sample count `needed` (or the utterance's last sample, if beyond) had arrived."""
        return next((t for length, t in self.arrivals if length >= needed), self.arrivals[-1][1])

    def hear(self):
        """Mel columns for every sample pushed so far (and the last ones, once ended)."""
        if self.unheard:
            x, self.unheard = np.concatenate(self.unheard), []
            self.columns = np.concatenate([self.columns, self.mel.push(x)], axis=1)
        if self.ended and not self.mel.ended:
            self.columns = np.concatenate([self.columns, self.mel.end()], axis=1)

    def end(self, fps):
        if self.length < MIN_UTTERANCE:
            self.add(np.zeros(MIN_UTTERANCE - self.length, np.float32), time.monotonic())
        self.starts = lipsync.mel_chunk_starts(column_count(self.length), fps)

    def window(self, j, fps):
        """Mel window of frame j, or None while its columns are not final."""
        self.hear()
        if self.ended:
            start = self.starts[min(j, len(self.starts) - 1)]
        else:
            start = lipsync.mel_chunk_start(j, fps)
            if start + lipsync.MEL_STEP_SIZE > self.mel.columns:
                return None
        offset = start - self.column_base
        return self.columns[:, offset:offset + lipsync.MEL_STEP_SIZE].copy()

    def audio(self, begin, end):
        """int16 samples [begin, end) of the utterance (zero past its end), or None while not arrived."""
        if end > self.length and not self.ended:
            return None
        x = self.samples[begin - self.sample_base:end - self.sample_base]
        x = np.pad(x, (0, end - begin - len(x)))
        return np.clip(np.rint(x * 32768.0), -32768, 32767).astype(np.int16)

    def advance(self, next_sample, fps):
        """Frame `next` was taken; forget what later frames do not need."""
        self.next += 1
        drop = next_sample - self.sample_base
        self.samples, self.sample_base = self.samples[drop:], next_sample
        while len(self.arrivals) > 1 and self.arrivals[0][0] < next_sample:
            self.arrivals.popleft()
        keep = max(self.column_base, min(lipsync.mel_chunk_start(self.next, fps),
                                         self.mel.columns - lipsync.MEL_STEP_SIZE))
        self.columns, self.column_base = self.columns[:, keep - self.column_base:], keep


class Session:
    """One live stream over `avatar` driven by pushed speech; several sessions may share `model`.

    `fast` runs the generator in reduced precision (as inference.py --fast); `silence_gap`
    (seconds) also ends an utterance after that much pushed silence (samples within
    `silence_level`), and silence pushed between utterances is skipped. `max_lag` (seconds;
    off by default, which keeps every speech frame the offline core's) bounds how far a session
    that falls behind real time (an overloaded or stolen CPU) lags its speech: a speech frame
    whose audio arrived more than `max_lag` before it is computed goes out with the avatar's
    own face (`caught_up`, its audio unchanged), at no generator cost. push, end_utterance and
    interrupt may be called from other threads than read; read from one thread at a time."""

    def __init__(self, model, avatar, fast=False, *, silence_gap=None, silence_level=SILENCE_LEVEL, batch_size=None,
                 max_lag=None):
        self.avatar, self.fast, self.fps = avatar, fast, avatar.fps
        self.generator = generator_for(model, fast)
        device = next(model.parameters()).device
        self.batch_size = generator_batch_size(batch_size or avatar.options.wav2lip_batch_size, device)
        # A generator that computes faces one by one gets one: a batch would hold back its first frames.
        self.batch_size = min(self.batch_size, getattr(self.generator, "faces_per_call", self.batch_size))
        self.silence_gap, self.silence_level = silence_gap, silence_level
        if max_lag is not None and not (isinstance(max_lag, (int, float)) and max_lag > 0):
            raise LiveError("max_lag %r is not a duration; pass seconds above 0, or None" % (max_lag,))
        self.max_lag = max_lag
        self.clock = lipsync.StageClock()
        self._cond = threading.Condition()
        self._reading = threading.Lock()
        self._utterances = deque()      # the first plays, the last may still be receiving speech
        self._ready = deque()           # frames computed, not yet read
        self._index = 0                 # next output frame
        self._epoch = 0                 # counts interrupts
        self._resampler = None          # (rate, soxr.ResampleStream) for speech at another rate

    # ----------------------------------------------------------------------- input
    def push(self, samples, sample_rate=16000):
        """Queue speech: int16 or float32 samples, 1-D or samples x channels, at `sample_rate` Hz."""
        x = as_mono(samples, sample_rate)
        with self._cond:
            self._add(self._resample(x, sample_rate))
            self._cond.notify_all()

    def push_file(self, path, end=True):
        """Queue the speech of an audio file (any format audio.load_wav reads), as one utterance when `end`."""
        try:
            wav = audio.load_wav(str(path), hp.sample_rate)
        except audio.AudioError as e:
            raise LiveError(str(e)) from None
        self.push(wav)
        if end:
            self.end_utterance()

    def end_utterance(self):
        """The speech pushed so far is one utterance: its last frames can be computed."""
        with self._cond:
            self._flush_resampler()
            if self._open() is not None:
                self._open().end(self.fps)
            self._cond.notify_all()

    def interrupt(self):
        """Drop all queued speech; the next frame read is idle."""
        with self._cond:
            self._utterances.clear()
            self._resampler = None
            self._epoch += 1
            self._ready = deque(self._idle(f.index) for f in self._ready)
            self._cond.notify_all()

    def _open(self):
        return self._utterances[-1] if self._utterances and not self._utterances[-1].ended else None

    def _resample(self, x, rate):
        if rate == hp.sample_rate:
            self._flush_resampler()
            return x
        if self._resampler is None or self._resampler[0] != rate:
            self._flush_resampler()
            self._resampler = rate, soxr.ResampleStream(rate, hp.sample_rate, 1, dtype="float32", quality="HQ")
        return self._resampler[1].resample_chunk(x)

    def _flush_resampler(self):
        if self._resampler is not None:
            rest = self._resampler[1].resample_chunk(np.zeros(0, np.float32), last=True)
            self._resampler = None
            self._add(rest)

    def _add(self, x):
        now = time.monotonic()
        if self.silence_gap is None:
            if len(x):
                (self._open() or self._new_utterance()).add(x, now)
            return
        gap = max(1, round(self.silence_gap * hp.sample_rate))
        while len(x):
            utterance = self._open()
            if utterance is None:  # silence between utterances is skipped
                loud = np.flatnonzero(np.abs(x) > self.silence_level)
                if not len(loud):
                    return
                x, utterance = x[loud[0]:], self._new_utterance()
            quiet = np.abs(x) <= self.silence_level
            positions = np.arange(len(x))
            last_loud = np.maximum.accumulate(np.where(quiet, -1 - utterance.quiet, positions))
            run = positions - last_loud
            reached = np.flatnonzero(run >= gap)
            if not len(reached):
                utterance.add(x, now)
                utterance.quiet = int(run[-1])
                return
            end = reached[0] + 1
            utterance.add(x[:end], now)
            utterance.end(self.fps)
            x = x[end:]

    def _new_utterance(self):
        self._utterances.append(_Utterance())
        return self._utterances[-1]

    # ----------------------------------------------------------------------- output
    def read(self, timeout=None):
        """The next output Frame, as soon as it can be computed: an idle frame when no speech is
        queued; within an utterance, waits for the audio its window needs (None after `timeout` s)."""
        with self._reading:
            with self._cond:
                deadline = None if timeout is None else time.monotonic() + timeout
                while True:
                    if self._ready:
                        return self._ready.popleft()
                    plan = self._plan()
                    if plan:
                        break
                    if plan is not None:
                        return self._idle(self._take_index())
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return None
                    self._cond.wait(remaining)
                epoch = self._epoch
            frames = self._render(plan)
            with self._cond:
                if epoch != self._epoch:  # interrupted while computing: these frames go out idle
                    frames = [self._idle(f.index) for f in frames]
                self._ready.extend(frames[1:])
            return frames[0]

    def _plan(self):
        """Speech frames ready to compute (at most a batch); [] for an idle frame; None to wait."""
        plan = []
        while len(plan) < self.batch_size:
            if not self._utterances:
                return plan
            utterance = self._utterances[0]
            if utterance.first_index is None:
                utterance.first_index = self._index
            if utterance.ended and self._frame_count(utterance) <= utterance.next:
                self._utterances.popleft()
                if plan:
                    return plan
                continue
            index = utterance.first_index + utterance.next
            origin = self._sample(utterance.first_index)
            window = utterance.window(utterance.next, self.fps)
            end = self._sample(index + 1) - origin      # this frame's samples end here in the utterance
            samples = utterance.audio(self._sample(index) - origin, end)
            if window is None or samples is None:
                return plan or None
            self._take_index()
            caught_up = self.max_lag is not None and time.monotonic() - utterance.arrival(end) > self.max_lag
            plan.append((index, pingpong(index, len(self.avatar)), window, samples, caught_up))
            utterance.advance(end, self.fps)
        return plan

    def _frame_count(self, utterance):
        """Frames of an ended utterance: the offline core's, or more to carry all its samples."""
        count = len(utterance.starts)
        origin = self._sample(utterance.first_index)
        while self._sample(utterance.first_index + count) - origin < utterance.length:
            count += 1
        return count

    def _render(self, plan):
        faces = [(self.avatar.frame(source), window, self.avatar.box(source))
                 for _, source, window, _, caught_up in plan if not caught_up]
        faces = iter(lipsync.on_compute_thread(self._generate, faces) if faces else [])
        return [Frame(self.avatar.frame(source) if caught_up else next(faces), samples, index / self.fps, index,
                      source, True, caught_up) for index, source, _, samples, caught_up in plan]

    def _generate(self, items):
        with lipsync.full_float32(enabled=not self.fast):
            return lipsync.generate_batch(self.generator, items, self.clock, self.avatar.options)

    def _idle(self, index):
        source = pingpong(index, len(self.avatar))
        silence = np.zeros(self._sample(index + 1) - self._sample(index), np.int16)
        return Frame(self.avatar.frame(source), silence, index / self.fps, index, source, False)

    def _take_index(self):
        self._index += 1
        return self._index - 1

    def _sample(self, index):
        """The session's sample clock: first sample of output frame `index`."""
        return round(index * hp.sample_rate / self.fps)
