"""Avatar plugins for voice-agent frameworks, over the live engine (`live.Session`):

    integrations.pipecat.Wav2LipVideoService     a Pipecat frame processor (video service)
    integrations.livekit.Wav2LipVideoGenerator   the video generator of LiveKit's AvatarRunner
    integrations/livekit_worker.py               joins a LiveKit room as an agent's avatar

Each of those imports its framework (`pip install -r requirements-agents.txt`); this package
imports neither, only what both adapters share.
"""
import os
from collections import deque

import numpy as np

import live
from lipsync import best_device, load_model

SAMPLE_RATE = 16000          # of the audio a session gives with every frame
# Speech given and played are compared within this (s): resampled speech can come out a few samples short.
PLAYOUT_SLACK = 1e-3


def open_session(checkpoint_path, avatar, fast=False, device=None, **session_options):
    """(live.Session, live.Avatar) for a Wav2Lip checkpoint and an avatar (a prepared avatar's
    folder, see live.prepare_avatar, or a loaded live.Avatar); `session_options` are
    live.Session's (silence_gap, silence_level, batch_size)."""
    if isinstance(avatar, (str, os.PathLike)):
        avatar = live.load_avatar(avatar)
    model = load_model(checkpoint_path, device or best_device())
    return live.Session(model, avatar, fast=fast, **session_options), avatar


def pcm16(data, num_channels):
    """int16 samples (samples, channels) of interleaved 16-bit PCM bytes."""
    return np.frombuffer(data, dtype=np.int16).reshape(-1, num_channels)


class Playout:
    """Speech given to a session against speech that has come out of it, so that markers pushed
    after an utterance (its end; the end of the stream) leave only once its last frame is out.

    Frames are read with a ticket taken just before the read: a frame read before an
    interruption is stale (its audio must not play), and an idle frame releases only the
    markers placed before its read began.
    """

    def __init__(self):
        self.epoch = 0            # interruptions so far
        self.given = 0.0          # seconds of speech given since the last interruption
        self.played = 0.0         # seconds of speech out since then
        self.placed = 0           # markers placed so far
        self.marks = deque()      # (seconds given before it, serial, marker)

    def give(self, num_samples, sample_rate):
        self.given += num_samples / sample_rate

    def place(self, marker):
        self.marks.append((self.given, self.placed, marker))
        self.placed += 1

    def ticket(self):
        return self.epoch, self.placed

    def interrupt(self):
        """Forget all speech given and return the markers waiting for it."""
        dropped = [marker for _, _, marker in self.marks]
        self.epoch += 1
        self.given = self.played = 0.0
        self.marks.clear()
        return dropped

    def out(self, frame, ticket):
        """(fresh, released markers) for `frame` of a session read with `ticket`."""
        epoch, placed = ticket
        if epoch != self.epoch:
            return False, []
        if frame.speaking:
            self.played += len(frame.audio) / SAMPLE_RATE
        released = []
        while self.marks:
            given, serial, marker = self.marks[0]
            if not (given <= self.played + PLAYOUT_SLACK or (not frame.speaking and serial < placed)):
                break
            released.append(self.marks.popleft()[2])
        return True, released
