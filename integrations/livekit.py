"""A self-hosted Wav2Lip avatar for LiveKit Agents: the video generator of LiveKit's AvatarRunner.

    video_gen = Wav2LipVideoGenerator(checkpoint_path="checkpoints/wav2lip_gan.pth", avatar="avatars/me")
    runner = AvatarRunner(room, audio_recv=DataStreamAudioReceiver(room), video_gen=video_gen,
                          options=video_gen.options)

The agent's speech is pushed in (`push_audio`, AudioSegmentEnd after each utterance); iterating
yields every frame of the live session in order: its rtc.VideoFrame, and while speaking the
rtc.AudioFrame it belongs to; AudioSegmentEnd once an utterance's last frame is out.
`clear_buffer` (the user interrupted) returns to idle. The runner's AVSynchronizer paces the
frames at the avatar's fps. `integrations/livekit_worker.py` runs it in a room.
"""
import asyncio

import cv2
from livekit import rtc
from livekit.agents.voice.avatar import AudioSegmentEnd, AvatarOptions, VideoGenerator

from integrations import SAMPLE_RATE, Playout, frame_queue, open_session, pcm16, read_ahead, shown


class Wav2LipVideoGenerator(VideoGenerator):
    """Lip-synced avatar frames for the audio LiveKit's AvatarRunner pushes in.

    `avatar` is a prepared avatar's folder (live.prepare_avatar) or a loaded live.Avatar;
    `fast` and `session_options` (silence_gap, batch_size, ...) are live.Session's; `device`
    defaults to the best available.
    """

    def __init__(self, *, checkpoint_path, avatar, fast=False, device=None, **session_options):
        self._session, self._avatar = open_session(checkpoint_path, avatar, fast, device, **session_options)
        self._playout = Playout(self._avatar.fps)

    @property
    def options(self):
        """AvatarOptions of this avatar (its size and fps; 16 kHz mono audio)."""
        width, height = self._avatar.size
        return AvatarOptions(video_width=width, video_height=height, video_fps=self._avatar.fps,
                             audio_sample_rate=SAMPLE_RATE, audio_channels=1)

    async def push_audio(self, frame):
        if isinstance(frame, AudioSegmentEnd):
            self._session.end_utterance()
            self._playout.place(frame)
            return
        samples = pcm16(frame.data, frame.num_channels)
        self._session.push(samples, sample_rate=frame.sample_rate)
        self._playout.give(len(samples), frame.sample_rate)

    def clear_buffer(self):
        # The runner reports the interrupted playback itself: the segment's end is not due.
        self._session.interrupt()
        self._playout.interrupt()

    def __aiter__(self):
        return self._frames()

    async def _frames(self):
        queue = frame_queue(self._avatar.fps)
        reader = asyncio.create_task(read_ahead(self._session, self._playout, queue))
        try:
            while True:
                frame, ticket = await queue.get()
                queue.task_done()
                released = self._playout.out(frame, ticket)
                image = shown(frame, self._avatar, self._playout.fresh(ticket))
                rgba = cv2.cvtColor(image, cv2.COLOR_BGR2RGBA)
                yield rtc.VideoFrame(rgba.shape[1], rgba.shape[0], rtc.VideoBufferType.RGBA, rgba.tobytes())
                if frame.speaking and self._playout.fresh(ticket):   # not if read before clear_buffer
                    yield rtc.AudioFrame(frame.audio.tobytes(), SAMPLE_RATE, 1, len(frame.audio))
                for marker in released:
                    yield marker
        finally:
            reader.cancel()
