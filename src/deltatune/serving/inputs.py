"""``/v1/predict`` inputs -> the rows ``deltatune predict`` reads from a file, checked per input.

An input is a string, a list of strings (a text pair; (question, context); a prompt
template's columns in order; an extractive summary's sentences) or an object. Objects in the
Hugging Face Inference API's shape (``{"text", "text_pair"}``, ``{"question", "context"}``) are
mapped to the run's column names; any other object is a row with the run's own column names.
Every row then goes through the task's own check (:meth:`deltatune.tasks.base.Task.check`),
as rows of a file do, so serving and ``predict`` accept the same things.

Image and audio runs take each input's file content (base64), never a path on the server: the
uploads become request-scoped temporary files (:mod:`deltatune.serving.media_inputs`).
"""

from __future__ import annotations

from typing import Any, Callable

import datasets
from pydantic import BaseModel

from deltatune.errors import DeltatuneError
from deltatune.serving.http_errors import ApiError, strings
from deltatune.serving.media_inputs import Uploads, upload_kind, upload_row
from deltatune.tasks import Task


def as_items(inputs: Any) -> list[Any]:
    """The list of inputs of a request: a top-level list is a batch, anything else one input."""
    items = inputs if isinstance(inputs, list) else [inputs]
    return [x.model_dump() if isinstance(x, BaseModel) else x for x in items]


def _object_row(item: dict[str, Any], task: Task, where: str) -> dict[str, Any]:
    """A JSON object input as a row: the Hugging Face shapes mapped to the run's columns, others as they are."""
    d, name = task.config.data, task.config.task
    keys = set(item)
    if keys == {"messages"} and name != "instruction":
        raise ApiError(400, f"{where}: {{messages}} inputs are for instruction runs; this run is {name}", param=f"{where}.messages")
    if keys == {"text", "text_pair"} and name in ("text-classification", "text-regression"):
        if not d.text_pair_column:
            raise ApiError(400, f"{where}: this run reads single texts, not pairs: send a string", param=f"{where}.text_pair")
        return {d.text_column: item["text"], d.text_pair_column: item["text_pair"]}
    if keys == {"question", "context"} and name == "question-answering":
        return {d.question_column: item["question"], d.context_column: item["context"]}
    return dict(item)


def item_row(item: Any, task: Task, where: str) -> dict[str, Any]:
    """One input as a row of the run's columns.

    Raises:
        ApiError: 400 naming ``where`` when the input's form does not fit the task; for a
            vision-language run, anything but a text (its rows would name image files, which the
            server never opens on a request's word).
    """
    if task.input_kind == "image-text" and not isinstance(item, str):
        raise ApiError(400, f"{where}: a vision-language run takes a text over HTTP; images in requests are not supported yet "
                       "(the server opens no file a request names)", param=where)
    if isinstance(item, dict):
        return _object_row(item, task, where)
    return _plain_row(item, task, where)


def _plain_row(item: Any, task: Task, where: str) -> dict[str, Any]:
    if isinstance(item, list) and task.config.task == "extractive-summarization":
        return {task.config.data.text_column: [str(s) for s in item]}
    value = tuple(item) if isinstance(item, list) else item
    if isinstance(value, tuple) and task.config.task in ("text-classification", "text-regression") and not task.config.data.text_pair_column:
        raise ApiError(400, f"{where}: this run reads single texts; send a string, not a list", param=where)
    try:
        return task.rows_from_texts([value])[0]
    except DeltatuneError as e:
        raise ApiError(400, f"{where}: {e}", param=where) from None


def check_lengths(item: Any, limit: int, where: str) -> None:
    """Refuse an input holding a text longer than ``limit`` characters (400 naming the field)."""
    for path, text in strings(item, where):
        if len(text) > limit:
            raise ApiError(400, f"{path}: {len(text)} characters, more than the server's limit of {limit}", param=path)


def request_rows(
    inputs: Any, task: Task, max_inputs: int, max_chars: int, uploads: Uploads | None = None
) -> list[tuple[str, dict[str, Any]]]:
    """The rows of one request's ``inputs``, each with the field it came from (``inputs[i]``).

    Only the form and the size of the inputs are checked here; the task's own row checks run
    with the prediction, on the whole batch (:func:`predict_located`). Inputs of image and audio
    runs are uploads, decoded into ``uploads`` and their files checked here
    (:func:`deltatune.serving.media_inputs.upload_row`; without ``uploads`` they are refused).

    Raises:
        ApiError: 400 for an empty list, more than ``max_inputs`` inputs, a text over
            ``max_chars`` characters, an input whose form does not fit the task, or a bad upload.
    """
    items = as_items(inputs)
    if not items:
        raise ApiError(400, "inputs: the list is empty; send at least one input", param="inputs")
    if len(items) > max_inputs:
        raise ApiError(400, f"inputs: {len(items)} inputs, more than the server's limit of {max_inputs} per request", param="inputs")
    out = []
    for i, item in enumerate(items):
        where = f"inputs[{i}]" if isinstance(inputs, list) else "inputs"
        if upload_kind(task) is not None:
            out.append((where, upload_row(item, task, uploads, where)))
            continue
        check_lengths(item, max_chars, where)
        out.append((where, item_row(item, task, where)))
    return out


def predict_located(predict: Callable[[datasets.Dataset], list], rows: list[tuple[str, dict[str, Any]]]) -> list:
    """``predict`` on all rows at once; when that fails on bad input, the input at fault is found.

    Args:
        predict: rows -> one prediction each (``Predictor.predict_rows``, which runs the
            task's checks first).
        rows: (field, row) pairs with the same columns.

    Raises:
        ApiError: 400 naming the first input that fails alone (the task's message), or naming
            ``inputs`` when only the combination fails (values of different types in one column).
    """
    try:
        return predict(datasets.Dataset.from_list([row for _, row in rows]))
    except (DeltatuneError, TypeError, ValueError, KeyError) as e:
        first = e
    for where, row in rows:
        try:
            predict(datasets.Dataset.from_list([row]))
        except DeltatuneError as e:
            raise ApiError(400, _located(str(e), where), param=where) from None
        except (TypeError, ValueError, KeyError) as e:
            raise ApiError(400, f"{where}: {type(e).__name__}: {_first_line(e)}", param=where) from None
    raise ApiError(400, f"inputs: {type(first).__name__}: {_first_line(first)}; give every input the same form", param="inputs")


def _located(message: str, where: str) -> str:
    """The task's message about a one-row dataset, said of the request field ``where``."""
    if "is empty in every row" in message:  # said of a file's column; here it is one input
        return f"{where}: the text is empty; send some text"
    return message.replace("inputs: row 1", where).replace("inputs row 1", where).replace(" row 1", "") if message.startswith(
        "inputs"
    ) else f"{where}: {message}"


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
