"""Typed request and response bodies of ``POST /v1/predict``, per task.

The request is the Hugging Face Inference API's shape (``{"inputs": ..., "parameters": ...}``,
https://huggingface.co/docs/api-inference/): ``inputs`` is one input or a list of them. What an
input may be depends on the served run's task (:data:`TASK_IO`); a JSON object is a row with
the run's own column names (as in a ``predict --input`` file). The predictions are the records
``deltatune predict`` writes (:meth:`deltatune.serving.predictor.Predictor.predict_rows`), typed
here so that the OpenAPI schema at ``/openapi.json`` tells clients what comes back. Image and
audio runs take each file's content, base64-encoded (:data:`IMAGE_INPUT`, :data:`AUDIO_INPUT`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

Text = str


class TextPair(BaseModel):
    """A sentence pair (NLI, paraphrase, similarity runs)."""

    text: str
    text_pair: str


class QuestionContext(BaseModel):
    """A question about a context (extractive question answering)."""

    question: str
    context: str


class ChatMessage(BaseModel):
    """One message of a conversation."""

    role: Literal["system", "user", "assistant"]
    content: str


class Conversation(BaseModel):
    """A conversation to answer (instruction runs)."""

    messages: list[ChatMessage] = Field(min_length=1)


Row = dict[str, Any]  # a row with the run's column names, as in a predict --input file

# image and audio runs: the file's content, never a path on the server (deltatune.serving.media_inputs)
Base64Image = Annotated[str, Field(
    description="an image file's content, base64-encoded, or a data URL data:image/png;base64,... (PNG, JPEG, GIF, WebP, BMP, TIFF)",
    json_schema_extra={"contentEncoding": "base64"},
)]
Base64Audio = Annotated[str, Field(
    description="an audio file's content, base64-encoded, or a data URL data:audio/wav;base64,... (WAV, FLAC, OGG, MP3)",
    json_schema_extra={"contentEncoding": "base64"},
)]


class ImageUpload(BaseModel):
    """An image input as an object (Hugging Face's ``inputs.image``)."""

    model_config = ConfigDict(extra="forbid")

    image: Base64Image


class AudioUpload(BaseModel):
    """An audio input as an object."""

    model_config = ConfigDict(extra="forbid")

    audio: Base64Audio


# what one input of each task may be (the first form listed is the usual one)
CLASSIFICATION_INPUT = Union[Text, TextPair, list[str], Row]
QA_INPUT = Union[QuestionContext, list[str], Row]
TEXT_INPUT = Union[Text, Row]
CHAT_INPUT = Union[Text, Conversation, Row]
PROMPTED_INPUT = Union[Text, list[str], Row]
IMAGE_INPUT = Union[Base64Image, ImageUpload]
AUDIO_INPUT = Union[Base64Audio, AudioUpload]


class GenerationParameters(BaseModel):
    """``parameters`` of generative runs; ``None`` keeps the run's ``eval`` settings."""

    model_config = ConfigDict(extra="forbid")
    max_new_tokens: Optional[int] = Field(default=None, ge=1, description="tokens to generate at most")
    temperature: Optional[float] = Field(default=None, ge=0, le=2, description="0: greedy; > 0: sampling at this temperature")
    top_p: Optional[float] = Field(default=None, gt=0, le=1, description="nucleus sampling mass (needs temperature > 0)")


class NoParameters(BaseModel):
    """Runs that do not generate take no parameters."""

    model_config = ConfigDict(extra="forbid")


# ---- predictions -------------------------------------------------------------------------
class ClassificationPrediction(BaseModel):
    label: Union[str, list[str]] = Field(description="the predicted label (a list for multi-label runs)")
    probabilities: dict[str, float] = Field(description="probability of every label (softmax; sigmoid for multi-label)")


class RegressionPrediction(BaseModel):
    score: Union[float, dict[str, float]] = Field(
        description="the predicted value in the targets' units; with several targets, {target column: value}"
    )


class Entity(BaseModel):
    type: str = Field(description="entity type, e.g. PER")
    text: str
    start: int = Field(description="character offset of the first character in the input text")
    end: int = Field(description="character offset after the last character")
    score: float = Field(description="mean probability of the entity's tokens' tags")


class TokenClassificationPrediction(BaseModel):
    entities: list[Entity]
    tags: list[str] = Field(description="IOB2 tag per whitespace-separated word")


class QuestionAnsweringPrediction(BaseModel):
    answer: str = Field(description="the answer span ('' when the run answers 'no answer', SQuAD v2)")
    score: Optional[float] = None
    start: Optional[int] = Field(default=None, description="character offset of the answer in the context")
    end: Optional[int] = Field(default=None, description="character offset after the answer")


class ExtractiveSummaryPrediction(BaseModel):
    summary: str
    sentence_indices: list[int] = Field(description="selected sentences, in document order")
    scores: list[Optional[float]] = Field(description="score of every sentence")


class MaskCandidate(BaseModel):
    token: str
    score: float


class MaskFill(BaseModel):
    position: int
    predictions: list[MaskCandidate]


class MaskedLMPrediction(BaseModel):
    filled: str
    masks: list[MaskFill]


class GenerationPrediction(BaseModel):
    generated: str = Field(description="the generated text")
    ended_with_eos: bool = Field(description="generation ended with an end token (not cut at max_new_tokens)")


class TaskIO(BaseModel):
    """What a task takes and gives on ``/v1/predict``."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    input: Any
    prediction: Any
    parameters: Any = NoParameters


TASK_IO: dict[str, TaskIO] = {
    "text-classification": TaskIO(input=CLASSIFICATION_INPUT, prediction=ClassificationPrediction),
    "text-regression": TaskIO(input=CLASSIFICATION_INPUT, prediction=RegressionPrediction),
    "token-classification": TaskIO(input=TEXT_INPUT, prediction=TokenClassificationPrediction),
    "question-answering": TaskIO(input=QA_INPUT, prediction=QuestionAnsweringPrediction),
    "extractive-summarization": TaskIO(input=Union[Text, list[str], Row], prediction=ExtractiveSummaryPrediction),
    "masked-lm": TaskIO(input=TEXT_INPUT, prediction=MaskedLMPrediction),
    "causal-lm": TaskIO(input=TEXT_INPUT, prediction=GenerationPrediction, parameters=GenerationParameters),
    "instruction": TaskIO(input=CHAT_INPUT, prediction=GenerationPrediction, parameters=GenerationParameters),
    "summarization": TaskIO(input=PROMPTED_INPUT, prediction=GenerationPrediction, parameters=GenerationParameters),
    "translation": TaskIO(input=PROMPTED_INPUT, prediction=GenerationPrediction, parameters=GenerationParameters),
    "generative-qa": TaskIO(input=PROMPTED_INPUT, prediction=GenerationPrediction, parameters=GenerationParameters),
    "image-classification": TaskIO(input=IMAGE_INPUT, prediction=ClassificationPrediction),
    "audio-classification": TaskIO(input=AUDIO_INPUT, prediction=ClassificationPrediction),
    "speech-recognition": TaskIO(input=AUDIO_INPUT, prediction=GenerationPrediction, parameters=GenerationParameters),
    # preference-tuned and GRPO runs answer prompts as instruction runs do
    **{
        name: TaskIO(input=CHAT_INPUT, prediction=GenerationPrediction, parameters=GenerationParameters)
        for name in ("dpo", "orpo", "simpo", "kto", "grpo")
    },
}
# a task registered without an entry here (a user's own task) takes texts or rows and gives its records as they are
DEFAULT_IO = TaskIO(input=TEXT_INPUT, prediction=dict[str, Any])


def task_io(task: str) -> TaskIO:
    """The request/response types of ``task`` (:data:`DEFAULT_IO` for tasks not listed)."""
    return TASK_IO.get(task, DEFAULT_IO)


def _union(types: list) -> Any:
    unique = list(dict.fromkeys(types))
    return unique[0] if len(unique) == 1 else Union[tuple(unique)]


def predict_models(tasks: list[str], model_ids: list[str] | None = None) -> tuple[type[BaseModel], type[BaseModel]]:
    """The request and response models of ``/v1/predict`` for the served tasks (their union).

    ``model_ids`` (the served ids) are given as the ``model`` field's examples in the schema.

    Returns:
        (PredictRequest, PredictResponse) pydantic models; the request's ``inputs`` is one
        input or a non-empty list of inputs, ``parameters`` the tasks' parameters.
    """
    ios = [task_io(t) for t in dict.fromkeys(tasks)]
    item = _union([io.input for io in ios])
    prediction = _union([io.prediction for io in ios])
    # generation parameters where any served run generates (refused per run for the others)
    params = GenerationParameters if GenerationParameters in [io.parameters for io in ios] else NoParameters

    class PredictRequest(BaseModel):
        """Body of ``POST /v1/predict``."""

        model_config = ConfigDict(extra="forbid")
        inputs: Union[item, list[item]] = Field(  # type: ignore[valid-type]
            description="one input, or a list of inputs (a top-level list is always a batch: send a text pair as [[text, pair]] or {text, text_pair})"
        )
        parameters: Optional[params] = None  # type: ignore[valid-type]
        model: Optional[str] = Field(
            default=None, description="the served model's id (GET /v1/models); optional with one model", examples=model_ids or None
        )

    class PredictResponse(BaseModel):
        """Body of a ``POST /v1/predict`` answer: one prediction per input, in order."""

        model: str
        task: str
        predictions: list[prediction]  # type: ignore[valid-type]

    return PredictRequest, PredictResponse
