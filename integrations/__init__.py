"""Avatar plugins for voice-agent frameworks, over the live engine (`live.Session`):

    integrations.pipecat.Wav2LipVideoService     a Pipecat frame processor (video service)
    integrations.livekit.Wav2LipVideoGenerator   the video generator of LiveKit's AvatarRunner
    integrations/livekit_worker.py               joins a LiveKit room as an agent's avatar

Each of those imports its framework (`pip install -r requirements-agents.txt`); this package
imports neither, only what both adapters share.
"""
import asyncio
import math
import os
from collections import deque

import numpy as np

import live
from hparams import hparams
from lipsync import best_device, load_model

SAMPLE_RATE = hparams.sample_rate     # of the audio a session gives with every frame (16 kHz)
# Speech given and played are compared within this (s): resampled speech can come out a few samples short.
PLAYOUT_SLACK = 1e-3
# While it speaks, a session is read this far (s) ahead of the frame being shown: the generator
# computes a batch at a time (16 frames on a CPU: 0.43 s at 27 ms a frame), and the frames
# already read play while the next batch is computed. Idle frames are read one at a time, so
# speech pushed during idle starts at the next frame.
READ_AHEAD = 0.5
READ_TIMEOUT = 0.5           # seconds; a read never blocks a reader for longer


def open_session(checkpoint_path, avatar, fast=False, device=None, **session_options):
    """(live.Session, live.Avatar) for a Wav2Lip checkpoint and an avatar (a prepared avatar's
    folder, see live.prepare_avatar, or a loaded live.Avatar); `session_options` are
    live.Session's (silence_gap, silence_level, batch_size, max_lag)."""
    if isinstance(avatar, (str, os.PathLike)):
        avatar = live.load_avatar(avatar)
    model = load_model(checkpoint_path, device or best_device())
    return live.Session(model, avatar, fast=fast, **session_options), avatar


def frame_queue(fps):
    """The queue read_ahead fills: (frame, ticket) pairs, READ_AHEAD seconds of them at most."""
    return asyncio.Queue(maxsize=max(1, math.ceil(READ_AHEAD * fps)))


async def read_ahead(session, playout, queue):
    """Read `session`'s frames, each with its Playout ticket, into `queue` (frame_queue); the
    consumer calls queue.task_done() as it takes each."""
    while True:
        ticket = playout.ticket()
        frame = await asyncio.to_thread(session.read, READ_TIMEOUT)
        if frame is None:
            continue
        await queue.put((frame, ticket))
        if not frame.speaking:
            await queue.join()


def shown(frame, avatar, fresh):
    """The image to show for `frame`: a speaking frame read before an interruption shows the
    avatar's own frame instead, as the idle frame of that index does."""
    return frame.image if fresh or not frame.speaking else avatar.frame(frame.source_index)


def pcm16(data, num_channels):
    """int16 samples (samples, channels) of interleaved 16-bit PCM bytes."""
    return np.frombuffer(data, dtype=np.int16).reshape(-1, num_channels)


class Playout:
    """Speech given to a session against speech that has come out of it, so that markers pushed
    after an utterance (its end; the end of the stream) leave only once its last frame is out.

    The session pads each utterance to whole frames, so an utterance's end is counted at the
    next frame boundary. Frames are read with a ticket taken just before the read: a frame read
    before an interruption is stale (its audio must not play: check `fresh` just before playing
    it), and an idle frame means all the speech given before its read is out, which releases
    the markers placed by then and puts the count right again (short utterances are padded more).
    """

    def __init__(self, fps):
        self.fps = fps
        self.epoch = 0            # interruptions so far
        self.given = 0.0          # seconds of speech given since the last interruption
        self.ended = 0.0          # of which in ended utterances, whole frames each
        self.played = 0.0         # seconds of speech out since the last interruption
        self.placed = 0           # markers placed so far
        self.marks = deque()      # (seconds given before it, serial, marker)

    def give(self, num_samples, sample_rate):
        self.given += num_samples / sample_rate

    def place(self, marker):
        """`marker` goes out after the speech given so far, which ends an utterance."""
        frames = max(0, math.ceil((self.given - self.ended - PLAYOUT_SLACK) * self.fps))
        self.given = self.ended = self.ended + frames / self.fps
        self.marks.append((self.given, self.placed, marker))
        self.placed += 1

    def ticket(self):
        return self.epoch, self.placed, self.given

    def interrupt(self):
        """Forget all speech given and return the markers waiting for it."""
        dropped = [marker for _, _, marker in self.marks]
        self.epoch += 1
        self.given = self.ended = self.played = 0.0
        self.marks.clear()
        return dropped

    def fresh(self, ticket):
        """Whether no interruption came since `ticket` was taken: the frame read with it may speak."""
        return ticket[0] == self.epoch

    def out(self, frame, ticket):
        """The markers released by `frame` of a session, read with `ticket`."""
        if not self.fresh(ticket):
            return []
        _, placed, given = ticket
        self.played = self.played + len(frame.audio) / SAMPLE_RATE if frame.speaking else given
        released = []
        while self.marks:
            given, serial, marker = self.marks[0]
            if not (given <= self.played + PLAYOUT_SLACK or (not frame.speaking and serial < placed)):
                break
            released.append(self.marks.popleft()[2])
        return released
