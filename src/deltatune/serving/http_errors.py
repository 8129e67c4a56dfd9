"""The one error type of the HTTP API, rendered as ``{"error": {"message", "type", "param", "code"}}``.

The shape is OpenAI's (https://platform.openai.com/docs/guides/error-codes), so that the
official ``openai`` client raises its typed errors (``BadRequestError``, ``NotFoundError``,
``AuthenticationError``) with our message; ``/v1/predict`` uses the same shape.
"""

from __future__ import annotations

from typing import Any, Iterator


class ApiError(Exception):
    """A request the server refuses, with the HTTP status to answer.

    Args:
        status: 4xx status code (400 bad value, 401 missing/wrong key, 404 unknown model or
            path, 413 body too large, 422 wrong type or missing field, 503 not ready).
        message: one line saying what is wrong and what to do.
        param: the request field at fault as a path (``inputs[2].question``, ``messages``,
            ``model``), or ``None``.
        type: OpenAI's error type (``invalid_request_error``, ``authentication_error``, ...).
        code: a short machine-readable code, or ``None``.
    """

    def __init__(self, status: int, message: str, param: str | None = None, type: str = "invalid_request_error", code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.type, self.code = status, message, param, type, code

    def body(self) -> dict[str, Any]:
        """The JSON body: ``{"error": {"message", "type", "param", "code"}}``."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


# pydantic names the member of a union a value was tried against in the error location
_UNION_MEMBERS = {"str", "int", "float", "bool", "dict", "list", "none", "null"}


def _is_union_member(part: str) -> bool:
    # our field names are snake_case; pydantic's location tags are types (``str``, ``list[str]``,
    # ``TextPair``) or kebab-case (``constrained-str``, ``function-after[...]``, ``tagged-union[...]``)
    return part in _UNION_MEMBERS or part[:1].isupper() or "[" in part or "-" in part


def field_path(loc: tuple | list) -> str:
    """A pydantic/FastAPI error location as a field path: ``("body", "inputs", 2, "question")`` ->
    ``inputs[2].question``; the union members pydantic adds to a location (``str``,
    ``list[str]``, ``TextPair``) are left out. The body itself is ``body``."""
    out = ""
    for p in loc[1:] if loc and loc[0] in ("body", "query", "path", "header") else loc:
        if isinstance(p, int):
            out += f"[{p}]"
        elif not _is_union_member(str(p)):
            out += ("." if out else "") + str(p)
    return out or "body"


def strings(value: Any, path: str = "body") -> Iterator[tuple[str, str]]:
    """Every string in a parsed JSON value (dict keys too) with its field path (``inputs[1].text``)."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield path, str(k)
            yield from strings(v, f"{path}.{k}" if path != "body" else str(k))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from strings(v, f"{path}[{i}]")


def check_unicode(value: Any, path: str = "body") -> None:
    """Refuse strings that are not valid Unicode text: JSON's ``\\ud800`` escapes decode to lone
    surrogates, which no tokenizer or UTF-8 encoder takes.

    Raises:
        ApiError: 400 naming the field (``messages[0].content``, ``inputs[1]``).
    """
    for where, text in strings(value, path):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise ApiError(400, f"{where}: the text holds a lone UTF-16 surrogate (an unpaired \\ud800-\\udfff escape); send valid Unicode",
                           param=where, code="invalid_unicode") from None
