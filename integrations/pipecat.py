"""A self-hosted Wav2Lip avatar for Pipecat: a video service over the live engine.

    avatar = Wav2LipVideoService(checkpoint_path="checkpoints/wav2lip_gan.pth", avatar="avatars/me")
    pipeline = Pipeline([transport.input(), stt, user_agg, llm, tts, avatar, transport.output(), assistant_agg])

It takes the text-to-speech audio flowing downstream, lip-syncs the avatar to it and emits, on
the engine's clock, each image (OutputImageRawFrame) with the audio it belongs to
(TTSAudioRawFrame), idle frames between utterances, and stops speaking on an interruption.
"""
import asyncio
import time

import cv2
from pipecat.frames.frames import (
    CancelFrame,
    EndFrame,
    Frame,
    InterruptionFrame,
    OutputImageRawFrame,
    StartFrame,
    TTSAudioRawFrame,
    TTSStoppedFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from integrations import SAMPLE_RATE, Playout, frame_queue, open_session, pcm16, read_ahead, shown

# A frame this late (s) restarts the clock from it: after a stall (speech arriving slower than
# real time, a slow machine) a burst of overdue frames would put the video ahead of the audio.
MAX_LATE = 0.2


class Wav2LipVideoService(FrameProcessor):
    """Lip-synced avatar frames for the TTS audio of a pipeline.

    `avatar` is a prepared avatar's folder (live.prepare_avatar) or a loaded live.Avatar;
    `fast` and `session_options` (silence_gap, batch_size, ...) are live.Session's; `device`
    defaults to the best available. The TTS audio is replaced by the audio of each emitted
    frame (16 kHz mono), so put the service between the TTS and the output transport, and give
    the transport's video output the avatar's size and fps (`.size`, `.fps`).
    """

    def __init__(self, *, checkpoint_path, avatar, fast=False, device=None, name=None, **session_options):
        super().__init__(name=name)
        self._session, self._avatar = open_session(checkpoint_path, avatar, fast, device, **session_options)
        self._playout = Playout(self._avatar.fps)
        self._tasks = []          # the session's reader and the player

    @property
    def size(self):
        return self._avatar.size

    @property
    def fps(self):
        return self._avatar.fps

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, StartFrame):
            await self.push_frame(frame, direction)
            if not self._tasks:
                queue = frame_queue(self.fps)
                self._tasks = [self.create_task(read_ahead(self._session, self._playout, queue), "wav2lip_read"),
                               self.create_task(self._play(queue), "wav2lip_play")]
        elif isinstance(frame, TTSAudioRawFrame):
            samples = pcm16(frame.audio, frame.num_channels)
            self._session.push(samples, sample_rate=frame.sample_rate)
            self._playout.give(len(samples), frame.sample_rate)
        elif isinstance(frame, (TTSStoppedFrame, EndFrame)):
            # Both leave once the speech before them is out; EndFrame then stops the service.
            self._session.end_utterance()
            if not self._tasks or any(task.done() for task in self._tasks):   # not started, or failed
                await self.push_frame(frame, direction)
            else:
                self._playout.place(frame)
        elif isinstance(frame, InterruptionFrame):
            self._session.interrupt()
            for held in self._playout.interrupt():
                if not held.interruptible:        # EndFrame: the pipeline waits for it
                    self._playout.place(held)
            await self.push_frame(frame, direction)
        elif isinstance(frame, CancelFrame):
            await self._stop()
            await self.push_frame(frame, direction)
        else:
            await self.push_frame(frame, direction)

    async def _play(self, queue):
        """Push each frame the reader has read when due: the engine's pts on a monotonic clock
        started at the first frame."""
        start = None
        while True:
            frame, ticket = await queue.get()
            queue.task_done()
            wait = None if start is None else start + frame.pts - time.monotonic()
            if wait is None or wait < -MAX_LATE:
                start, wait = time.monotonic() - frame.pts, 0.0
            await asyncio.sleep(max(0.0, wait))
            released = self._playout.out(frame, ticket)
            await self._push_output(frame, ticket)
            for marker in released:
                await self.push_frame(marker)
                if isinstance(marker, EndFrame):      # the pipeline tears down from here
                    return

    async def _push_output(self, frame, ticket):
        pts = round(frame.pts * 1e9)              # Pipecat's pts are nanoseconds
        rgb = cv2.cvtColor(shown(frame, self._avatar, self._playout.fresh(ticket)), cv2.COLOR_BGR2RGB)
        image = OutputImageRawFrame(image=rgb.tobytes(), size=(rgb.shape[1], rgb.shape[0]), format="RGB")
        image.pts = pts
        await self.push_frame(image)
        if frame.speaking and self._playout.fresh(ticket):   # not if read before an interruption
            audio = TTSAudioRawFrame(audio=frame.audio.tobytes(), sample_rate=SAMPLE_RATE, num_channels=1)
            audio.pts = pts
            await self.push_frame(audio)

    async def _stop(self):
        for task in self._tasks:
            await self.cancel_task(task)
        self._tasks = []
        self._session.interrupt()

    async def cleanup(self):
        await super().cleanup()
        await self._stop()
