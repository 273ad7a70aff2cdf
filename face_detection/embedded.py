"""The embedded default face detector: dlib's HOG frontal-face detector, from the dlib-bin wheel.

It is used when no S3FD weights are on disk. The HOG model is compiled into dlib itself, so
`pip install dlib-bin` is all it needs: no model file, no download at run time, Boost licence.

HOG boxes are tighter than S3FD's: measured on the GRID clips and the portraits of the test
media, they start at the eyebrows and end a little above the chin, while S3FD (like every
WIDER FACE trained detector we compared: RetinaFace, MTCNN, YuNet) boxes the face from the
forehead to the chin. Each box is therefore extended by a fixed fraction of its height upwards
and downwards: its median IoU with those detectors' boxes rises from 0.66-0.76 to 0.72-0.95,
and on GRID the chin ends at most 7 px below it, inside Wav2Lip's default 10 px bottom padding.
HOG scans a pyramid of scales 1.2x apart, so on some clips the box size can jump by that step
between frames; Wav2Lip's box smoothing over 5 frames evens it out.
"""
import cv2
import numpy as np

# Detection runs on frames scaled down to this longer side: faces in lip-sync footage are large,
# and HOG's cost grows with the pixel count (a 1280x720 frame takes ~4x longer than 640x360).
WORKING_MAX_SIDE = 640
# HOG finds faces of about 80 px and up; a frame with no face is searched again at twice the
# size, so small faces are still found without slowing down the common case.
RETRY_UPSAMPLE = 1
# Extensions of the HOG box towards S3FD's convention, as fractions of the box height.
EXTEND_TOP = 0.22
EXTEND_BOTTOM = 0.10


class EmbeddedDetector:
    """Faces with dlib's HOG detector (the best per frame, or all); runs on the CPU whatever `device` says."""

    name = "dlib HOG"

    def __init__(self, device="cpu"):
        import dlib  # lazily: importing this module must stay cheap

        self.device = device
        self._hog = dlib.get_frontal_face_detector()
        # Names the detector and everything that shapes its boxes, for the detection cache.
        self.cache_key = "dlib-hog:%s:%d:%d:%g:%g" % (dlib.__version__, WORKING_MAX_SIDE, RETRY_UPSAMPLE,
                                                     EXTEND_TOP, EXTEND_BOTTOM)

    def detect(self, frames_bgr):
        """Per frame (HxWx3 uint8 BGR) the highest-scoring face as int (x1, y1, x2, y2), or None."""
        return [faces[0][:4] if faces else None for faces in self.detect_all(frames_bgr)]

    def detect_all(self, frames_bgr):
        """Per frame every face, [(x1, y1, x2, y2, score), ...] highest score first."""
        return [self._faces(frame) for frame in frames_bgr]

    def _faces(self, frame_bgr):
        height, width = frame_bgr.shape[:2]
        scale = min(1.0, WORKING_MAX_SIDE / max(height, width))
        small = frame_bgr if scale == 1.0 else cv2.resize(
            frame_bgr, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA)
        rgb = np.ascontiguousarray(small[:, :, ::-1])
        found = self._hog_faces(rgb, upsample=0) or self._hog_faces(rgb, upsample=RETRY_UPSAMPLE)
        faces = []
        for box, score in found:
            x1, y1, x2, y2 = (value / scale for value in box)
            box_height = y2 - y1
            y1 -= EXTEND_TOP * box_height
            y2 += EXTEND_BOTTOM * box_height
            faces.append((int(np.clip(x1, 0, width)), int(np.clip(y1, 0, height)),
                          int(np.clip(x2, 0, width)), int(np.clip(y2, 0, height)), float(score)))
        return faces

    def _hog_faces(self, rgb, upsample):
        """[((left, top, right, bottom), score), ...] highest score first (ties: dlib's order)."""
        rects, scores, _ = self._hog.run(rgb, upsample, 0.0)
        order = sorted(range(len(rects)), key=lambda i: -scores[i])
        return [((rects[i].left(), rects[i].top(), rects[i].right(), rects[i].bottom()), scores[i]) for i in order]
