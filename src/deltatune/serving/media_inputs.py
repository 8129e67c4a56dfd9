"""Uploaded image and audio inputs of ``/v1/predict`` -> request-scoped temporary files, checked by the task.

Image and audio runs (``image-classification``, ``audio-classification``, ``speech-recognition``:
:data:`UPLOAD_KINDS` by ``Task.input_kind``) read rows that name files. Over HTTP an input is the
file's **content**, never a path on the server (a path would let any client make the server open
any file it can read). The forms follow the Hugging Face Inference API, whose ``inputs`` for
image classification, audio classification and speech recognition is "the input image/audio data
as a base64-encoded string" (https://huggingface.co/docs/inference-providers/tasks/image-classification),
and OpenAI's image inputs, which take a data URL
(``data:image/png;base64,...``):

- a string: bare base64 (standard or URL-safe alphabet; line breaks and missing padding allowed)
  or a data URL ``data:<type>;base64,<data>`` whose type is ``image/*`` (``audio/*``) or
  ``application/octet-stream``;
- an object ``{"image": <string>}`` / ``{"audio": <string>}`` (Hugging Face's
  ``inputs.image``, as its zero-shot image classification and visual question answering take).

Each input is decoded, held to the server's per-input limit (``serve --max-upload-bytes``, checked
on the encoded length before decoding), written to the request's temporary folder
(:func:`request_uploads`, removed when the request ends, on errors too) and checked by the task's
own file check (:meth:`~deltatune.tasks.media_classification.MediaClassificationTask.file_problem`,
:meth:`~deltatune.tasks.speech_recognition.SpeechRecognitionTask.file_problem`: images decoded,
audio headers read, a transcription clip's length), the check ``predict`` runs on a file row. The
row then names the temporary file (:meth:`Task.rows_from_texts`), so the prediction is
``deltatune predict``'s on the same bytes. Every refusal is a 400 naming ``inputs[i]``.
"""

from __future__ import annotations

import base64
import binascii
import mimetypes
import re
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from deltatune.serving.http_errors import ApiError
from deltatune.tasks import Task

# Task.input_kind -> what an upload of the run is
UPLOAD_KINDS = {"image": "image", "audio": "audio", "audio-text": "audio"}
FORMATS = {"image": "PNG, JPEG, GIF, WebP, BMP or TIFF", "audio": "WAV, FLAC, OGG or MP3"}
_DATA_URL = re.compile(r"data:(?P<type>[^;,]*)(?P<params>(?:;[^;,]*)*),(?P<data>.*)", re.DOTALL | re.IGNORECASE)
_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")
_BASE64_URLSAFE = re.compile(r"[A-Za-z0-9_-]*={0,2}")


def upload_kind(task: Task) -> str | None:
    """``"image"`` or ``"audio"`` when the run's inputs are uploaded files (:data:`UPLOAD_KINDS`), else ``None``."""
    return UPLOAD_KINDS.get(task.input_kind)


@dataclass
class Uploads:
    """The uploaded files of one request.

    Attributes:
        folder: the request's temporary folder (removed by :func:`request_uploads`).
        kind: ``"image"`` or ``"audio"``.
        max_bytes: largest decoded input (bytes).
        max_pixels: most pixels of an uploaded image (width x height, from its header).
        files: the files written so far.
    """

    folder: Path
    kind: str
    max_bytes: int
    max_pixels: int = 50_000_000
    files: list[Path] = field(default_factory=list)

    def save(self, data: bytes, media_type: str) -> Path:
        """``data`` as a new file of the folder (suffix from ``media_type`` when it names one, e.g. ``.png``)."""
        suffix = (mimetypes.guess_extension(media_type) or "") if media_type else ""
        path = self.folder / f"input-{len(self.files)}{suffix}"
        path.write_bytes(data)
        self.files.append(path)
        return path


@contextmanager
def request_uploads(task: Task, max_bytes: int, max_pixels: int = 50_000_000) -> Iterator[Uploads | None]:
    """A request's :class:`Uploads` for an image or audio run (``None`` for other runs); its temporary
    folder and every file in it are removed when the block ends, also on an error or a cancelled request."""
    kind = upload_kind(task)
    if kind is None:
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="deltatune-upload-", ignore_cleanup_errors=True) as folder:
        yield Uploads(Path(folder), kind, max_bytes, max_pixels)


def upload_row(item: Any, task: Task, uploads: Uploads | None, where: str) -> dict[str, Any]:
    """One input of an image or audio run as a row naming its uploaded file (written to ``uploads``).

    Raises:
        ApiError: 400 naming ``where``: not one of the forms (module doc), not base64, empty,
            larger than ``uploads.max_bytes``, or refused by the task's file check.
    """
    kind = upload_kind(task) or "file"
    if uploads is None:  # a caller without a request folder (never a path: see the module doc)
        raise ApiError(400, f"{where}: {task.config.task} runs take uploaded {kind} files, which this endpoint does not accept", param=where)
    text, param = _encoded(item, kind, where)
    media_type, data = _decode(text, kind, uploads.max_bytes, param)
    path = uploads.save(data, media_type)
    problem = _too_many_pixels(path, uploads.max_pixels) if kind == "image" else None
    problem = problem or _file_problem(task, path)
    if problem is not None:
        problem = problem.replace(str(path), "the upload")
        hint = " (the server never opens a path named in a request)" if _looks_like_path(text) else ""
        raise ApiError(400, f"{param}: the uploaded {kind} ({len(data)} bytes) {problem}; send a {FORMATS.get(kind, kind)} "
                       f"file's content, base64-encoded{hint}", param=param)
    return task.rows_from_texts([str(path)])[0]


def _encoded(item: Any, kind: str, where: str) -> tuple[str, str]:
    """The base64 text of an input and the field it sits in (``inputs[0]`` or ``inputs[0].image``)."""
    if isinstance(item, dict):
        if set(item) == {kind} and isinstance(item[kind], str):
            return item[kind], f"{where}.{kind}"
        keys = ", ".join(map(repr, item)) or "none"
        raise ApiError(400, f"{where}: an object input of this run is {{\"{kind}\": \"<base64>\"}}; got the keys {keys}", param=where)
    if not isinstance(item, str):
        raise ApiError(400, f"{where}: send one {kind} per input, as a base64 string or {{\"{kind}\": \"<base64>\"}}", param=where)
    return item, where


def _decode(text: str, kind: str, max_bytes: int, where: str) -> tuple[str, bytes]:
    """(media type, bytes) of a base64 string or data URL; the media type is ``""`` for bare base64.

    Raises:
        ApiError: 400 naming ``where``: empty, a data URL that is not base64 or of another kind,
            not base64 (a path gets its own message), more than ``max_bytes`` once decoded.
    """
    media_type, payload = "", text
    match = _DATA_URL.fullmatch(text.strip()) if text.lstrip()[:5].lower() == "data:" else None
    if match is not None:
        media_type = match["type"].strip().lower()
        if "base64" not in [p.strip().lower() for p in match["params"].split(";")]:
            raise ApiError(400, f"{where}: the data URL is not base64 (send data:{kind}/...;base64,<data>)", param=where)
        if media_type and media_type.split("/")[0] != kind and media_type != "application/octet-stream":
            raise ApiError(400, f"{where}: the data URL holds {media_type}; this run reads {kind} files ({FORMATS[kind]})", param=where)
        payload = match["data"]
    compact = "".join(payload.split())  # line breaks of `base64` without -w0
    if not compact:
        raise ApiError(400, f"{where}: the input is empty; send {_a(kind)} file's content, base64-encoded", param=where)
    if 3 * (len(compact) // 4) > max_bytes + 3:
        raise ApiError(400, f"{where}: the {kind} is about {3 * len(compact) // 4} bytes, more than the server's limit of {max_bytes} "
                       "bytes per input (serve --max-upload-bytes); send a smaller file", param=where)
    data = _base64_bytes(compact)
    if data is None:
        if match is None and _looks_like_path(text):
            what = "a URL; the server fetches nothing named in a request" if re.match(r"[a-z]+://", text.strip()) and not \
                text.strip().startswith("file://") else "a file path; the server does not open files named in a request"
            raise ApiError(400, f"{where}: this looks like {what}: send "
                           f"the {kind} file's content, base64-encoded (e.g. base64 -w0 FILE) or as a data URL", param=where)
        raise ApiError(400, f"{where}: not base64; send the {kind} file's content, base64-encoded, or a data URL "
                       f"data:{kind}/...;base64,<data>", param=where)
    if not data:
        raise ApiError(400, f"{where}: the {kind} is empty (0 bytes); send {_a(kind)} file's content, base64-encoded", param=where)
    if len(data) > max_bytes:
        raise ApiError(400, f"{where}: the {kind} is {len(data)} bytes, more than the server's limit of {max_bytes} bytes per input "
                       "(serve --max-upload-bytes); send a smaller file", param=where)
    return media_type, data


def _a(kind: str) -> str:
    """``kind`` with its article: "an image", "an audio"."""
    return f"an {kind}" if kind[:1] in "aeiou" else f"a {kind}"


def _base64_bytes(compact: str) -> bytes | None:
    """The bytes of a base64 text without whitespace (standard or URL-safe alphabet, padding optional), or ``None``."""
    padded = compact + "=" * (-len(compact) % 4)
    try:
        if _BASE64.fullmatch(compact):
            return base64.b64decode(padded, validate=True)
        if _BASE64_URLSAFE.fullmatch(compact):
            return base64.urlsafe_b64decode(padded)
    except (binascii.Error, ValueError):
        return None
    return None


def _looks_like_path(text: str) -> bool:
    """Whether ``text`` reads as a file path or URL (``/data/x.png``, ``C:\\x.wav``, ``~/a.flac``, ``file:///...``)."""
    t = text.strip()
    return bool(re.match(r"([A-Za-z]:\\|~|\.{1,2}[/\\]|/|[a-z]+://)", t)) or bool(re.search(r"\.[A-Za-z0-9]{2,5}$", t))


def _too_many_pixels(path: Path, max_pixels: int) -> str | None:
    """``"has W x H pixels, more than ..."`` when the image's header says more than ``max_pixels``
    (read without decoding the pixels), else ``None`` (also for a file Pillow cannot open: the task's
    check says what is wrong with it)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            width, height = img.size
    except Exception:  # noqa: BLE001 - not an image: _file_problem names the problem
        return None
    if width * height > max_pixels:
        return f"has {width} x {height} pixels, more than the server's limit of {max_pixels} (serve --max-upload-pixels)"
    return None


def _file_problem(task: Task, path: Path) -> str | None:
    """The task's own check of a file row's file (the one ``encode`` runs before predicting), in words, or ``None``."""
    from deltatune.tasks.media_classification import MediaClassificationTask
    from deltatune.tasks.speech_recognition import SpeechRecognitionTask

    if isinstance(task, (MediaClassificationTask, SpeechRecognitionTask)):
        return task.file_problem(path)
    return None
