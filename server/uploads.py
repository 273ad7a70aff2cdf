"""Untrusted input: names checked by a strict pattern, uploads streamed to disk under a size
limit and kept only when their content (not their name) is the kind asked for."""
import os
import re
import shutil
import tempfile

import av
import cv2
import numpy as np

from videoio import IMAGE_EXTENSIONS

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
EXTENSION = re.compile(r"\.[A-Za-z0-9]{1,8}")
FIELD_BYTES = 64 * 1024     # a form field that is not a file
CHUNK_BYTES = 1 << 20


class RequestError(Exception):
    """A bad request: an HTTP status and a one-line message naming the fix."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


def check_name(name, what="name"):
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise RequestError(400, "bad %s %r: use 1-64 letters, digits, '-' or '_', starting with a letter or digit"
                           % (what, name if isinstance(name, str) else type(name).__name__))
    return name


class TempRoot:
    """The one folder the server writes temporary files to; every job and session gets its own
    sub-folder, removed when it ends, and the whole folder goes at shutdown."""

    def __init__(self, parent=None):
        self.path = tempfile.mkdtemp(prefix="wav2lip-serve-", dir=parent)

    def folder(self, prefix):
        return tempfile.mkdtemp(prefix=prefix + "-", dir=self.path)

    def entries(self):
        return sorted(os.listdir(self.path)) if os.path.isdir(self.path) else []

    def remove(self):
        shutil.rmtree(self.path, ignore_errors=True)


def remove_folder(path):
    if path:
        shutil.rmtree(path, ignore_errors=True)


async def read_form(request, folder, file_fields, max_bytes):
    """Stream a multipart form: files named in `file_fields` to `folder` (at most `max_bytes`
    each, else 413), other fields as short strings. Returns (fields, {name: (path, client filename)})."""
    if request.content_length is not None and request.content_length > max_bytes + FIELD_BYTES:
        raise RequestError(413, "upload of %d bytes is over the limit of %d MB; send a smaller file or "
                           "start the server with a larger --max_upload_mb" % (request.content_length, max_bytes >> 20))
    if not request.content_type.startswith("multipart/"):
        raise RequestError(400, "send a multipart/form-data body (fields %s)" % ", ".join(file_fields))
    fields, files = {}, {}
    reader = await request.multipart()
    while (part := await reader.next()) is not None:
        if part.name in file_fields and part.name not in files:
            path = os.path.join(folder, part.name + ".upload")
            await _save_part(part, path, max_bytes)
            files[part.name] = (path, part.filename or "")
        elif part.filename is None and part.name and part.name not in fields:
            value = await part.read(decode=True)
            if len(value) > FIELD_BYTES:
                raise RequestError(413, "form field %r is over %d bytes" % (part.name, FIELD_BYTES))
            fields[part.name] = value.decode("utf-8", "replace")
        else:
            raise RequestError(400, "unexpected form part %r; send %s and option fields once each"
                               % (part.name, ", ".join(file_fields)))
    missing = [name for name in file_fields if name not in files]
    if missing:
        raise RequestError(400, "missing file field(s) %s in the form" % ", ".join(missing))
    return fields, files


async def _save_part(part, path, max_bytes):
    size = 0
    with open(path, "wb") as out:
        while chunk := await part.read_chunk(CHUNK_BYTES):
            size += len(chunk)
            if size > max_bytes:
                raise RequestError(413, "upload %r is over the limit of %d MB; send a smaller file or start the "
                                   "server with a larger --max_upload_mb" % (part.name, max_bytes >> 20))
            out.write(chunk)
    if size == 0:
        raise RequestError(400, "upload %r is empty" % part.name)


def _client_extension(filename):
    ext = os.path.splitext(os.path.basename(filename or ""))[1]
    return ext.lower() if EXTENSION.fullmatch(ext) else ""


def _decodes(path, kind):
    """Whether ffmpeg finds a `kind` ("video" or "audio") stream in `path` and decodes a frame of it."""
    try:
        with av.open(path) as container:
            streams = getattr(container.streams, kind)
            if not streams:
                return False
            for _ in container.decode(streams[0]):
                return True
    except (av.FFmpegError, UnicodeDecodeError, ValueError):
        return False
    return False


def _is_image(path):
    with open(path, "rb") as f:
        data = np.frombuffer(f.read(), np.uint8)
    return cv2.imdecode(data, cv2.IMREAD_COLOR) is not None


def keep_face(path, filename):
    """Rename an uploaded face file to an extension its content agrees with (an image keeps an
    image extension, a video anything else, as inference.py reads by extension); 415 otherwise."""
    ext = _client_extension(filename)
    if _is_image(path):
        ext = ext if ext in IMAGE_EXTENSIONS else ".png"
    elif _decodes(path, "video"):
        ext = ".mp4" if ext in IMAGE_EXTENSIONS or not ext else ext
    else:
        raise RequestError(415, "face upload %r is neither an image nor a video ffmpeg can decode; "
                           "send a video or an image with a face" % filename)
    return _rename(path, ext)


def keep_audio(path, filename):
    """Rename an uploaded speech file to its client's extension (".wav" matters to the decoding,
    as in inference.py); 415 when ffmpeg finds no decodable audio in it."""
    if not _decodes(path, "audio"):
        raise RequestError(415, "audio upload %r has no audio ffmpeg can decode; send speech as an audio file "
                           "or a video with sound" % filename)
    ext = _client_extension(filename)
    return _rename(path, ".audio" if not ext or ext in IMAGE_EXTENSIONS else ext)


def _rename(path, ext):
    final = os.path.splitext(path)[0] + ext
    os.replace(path, final)
    return final
