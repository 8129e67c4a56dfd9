"""One row → a conversation in the Hugging Face chat format and the image files it names.

A row holds ``messages`` (or ShareGPT's ``conversations``): a list of ``{"role", "content"}``
(``{"from", "value"}``). A content is a string or a list of parts, as the OpenAI and Hugging Face
chat formats write them:

- ``{"type": "text", "text": "..."}``;
- ``{"type": "image", "path": "photos/cat.jpg"}`` (``"image"`` or ``"url"`` may hold the path
  instead, as Hugging Face's format does; OpenAI's ``{"type": "image_url", "image_url": {"url": ...}}``
  too). Paths are local files, relative paths starting from the data file's folder; nothing is
  downloaded (``http(s)://`` and ``data:`` URLs are refused).

The result is what the processors' chat templates read: every content a list of parts, each image
part reduced to ``{"type": "image"}`` (the template writes the model's image placeholder), and the
images in the order their placeholders appear.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deltatune.data.paths import resolve_file
from deltatune.errors import DeltatuneError
from deltatune.tasks.chat_format import SHAREGPT_ROLES, message_text

# keys an image part may name its file with (HF chat format: "image", "url", "path")
IMAGE_KEYS = ("path", "image", "url")
REMOTE_PREFIXES = ("http://", "https://", "data:")


def _image_path(part: dict[str, Any], where: str, base: str) -> Path:
    """The local file an image part names.

    Raises:
        DeltatuneError: no path, a non-text path, or a URL, naming ``where``.
    """
    if part.get("type") == "image_url":
        url = part.get("image_url")
        value = url.get("url") if isinstance(url, dict) else url
    else:
        value = next((part[k] for k in IMAGE_KEYS if isinstance(part.get(k), str)), None)
    if not isinstance(value, str) or not value.strip():
        raise DeltatuneError(f"{where} is an image part without a file path; give it as {{\"type\": \"image\", \"path\": \"...\"}}")
    if value.strip().lower().startswith(REMOTE_PREFIXES):
        raise DeltatuneError(f"{where} names the image {value[:60]!r}, which is not a local file (nothing is downloaded); save it and give its path")
    if value.startswith("file://"):
        value = value[len("file://"):]
    return resolve_file(value, base)


def content_parts(value: Any, where: str, base: str) -> tuple[list[dict[str, str]], list[Path]]:
    """A message content as chat-template parts and the image files it names, in order (relative paths
    start from the folder of the data file ``base``, :func:`deltatune.data.paths.resolve_file`).

    Raises:
        DeltatuneError: a part that is neither text nor an image, an image without a local path,
            a content that is not text or a list of parts; naming ``where``.
    """
    if not isinstance(value, (list, tuple)):
        return [{"type": "text", "text": message_text(value, where)}], []
    parts: list[dict[str, str]] = []
    images: list[Path] = []
    for k, part in enumerate(value, start=1):
        at = f"{where}, part {k}"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            parts.append({"type": "text", "text": part["text"]})
        elif kind in ("image", "image_url"):
            images.append(_image_path(part, at, base))
            parts.append({"type": "image"})
        else:
            raise DeltatuneError(f"{at} must be {{\"type\": \"text\", \"text\": ...}} or {{\"type\": \"image\", \"path\": ...}}, got {str(part)[:60]!r}")
    return parts, images


def row_conversation(
    row: dict[str, Any], row_number: int, source: str, with_answer: bool = True, system_prompt: str | None = None,
    base: str | None = None,
) -> tuple[list[dict[str, Any]], list[Path]]:
    """The conversation of one row (``{"role", "content": [parts]}``) and its image files, in order.

    Args:
        row_number: the row, from 1 (messages).
        source: the data file: relative image paths start from its folder; named in messages.
        with_answer: False for prediction inputs: trailing assistant turns are dropped and a
            conversation need not have one.
        system_prompt: prepended as a system turn when the conversation has none.
        base: the data file relative image paths start from, when not ``source``.

    Raises:
        DeltatuneError: no ``messages``/``conversations`` list, an unknown role, a bad part, an
            empty assistant turn, an assistant turn before any user turn, or (with answers) no
            assistant turn; naming the file, the row and the message (from 1).
    """
    at = f"{source}: row {row_number}"
    raw = row.get("messages") if row.get("messages") is not None else row.get("conversations")
    if not isinstance(raw, (list, tuple)) or not raw:
        raise DeltatuneError(f"{at} has no 'messages' list of {{role, content}}; give one (docs/vision_language.md)")
    messages: list[dict[str, Any]] = []
    images: list[Path] = []
    for k, m in enumerate(raw, start=1):
        if not isinstance(m, dict):
            raise DeltatuneError(f"{at}: message {k} must be an object with role and content")
        raw_role = m.get("role", m.get("from"))
        role = SHAREGPT_ROLES.get(str(raw_role).lower()) if raw_role is not None else None
        if role is None:
            raise DeltatuneError(f"{at}: message {k} has role {raw_role!r}; use system/user/assistant")
        content = m.get("content", m.get("value"))
        if content is None:
            raise DeltatuneError(f"{at}: message {k} ({raw_role}) has no content")
        parts, found = content_parts(content, f"{at}: message {k}", base or source)
        if role == "assistant" and with_answer and not found and not "".join(p.get("text", "") for p in parts).strip():
            raise DeltatuneError(f"{at}: message {k} is an empty assistant turn; fill it or drop the row")
        messages.append({"role": role, "content": parts})
        images += found
    first_assistant = next((k for k, m in enumerate(messages) if m["role"] == "assistant"), None)
    if first_assistant is not None and not any(m["role"] == "user" for m in messages[:first_assistant]):
        raise DeltatuneError(f"{at}: the conversation has an assistant turn before any user turn; start it with a user message")
    if with_answer and first_assistant is None:
        raise DeltatuneError(f"{at}: the conversation has no assistant turn, so nothing would be trained; add one or drop the row")
    if not with_answer:
        while messages and messages[-1]["role"] == "assistant":
            dropped = messages.pop()
            images = images[: len(images) - sum(p["type"] == "image" for p in dropped["content"])]
    if system_prompt and messages and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": [{"type": "text", "text": system_prompt}]})
    return messages, images


def text_of(message: dict[str, Any]) -> str:
    """The text parts of a normalised message, joined (images left out)."""
    return "".join(p["text"] for p in message["content"] if p["type"] == "text")
