"""Which runs ``deltatune export --format onnx`` takes, checked without torch (the CLI checks it first)."""

from __future__ import annotations

from deltatune.errors import DeltatuneError

# the encoder text tasks whose predictions come from one forward pass of the model (Task.eval_step)
ONNX_TASKS = ("text-classification", "token-classification", "question-answering", "extractive-summarization")
# the file-reading tasks likewise (one forward pass on the processor's pixel_values / audio features)
MEDIA_ONNX_TASKS = ("image-classification", "audio-classification")
EXPORTABLE_TASKS = ONNX_TASKS + MEDIA_ONNX_TASKS
QUANTIZE_CHOICES = ("int8",)


def check_onnx_request(task: str, quantize: str | None) -> None:
    """Refuse what the ONNX export does not support (callable before the run is loaded).

    Raises:
        DeltatuneError: ``task`` is not one of :data:`EXPORTABLE_TASKS` (generative tasks:
            speech-recognition, vision-language, decoders, ...); ``quantize`` is not ``None`` or ``"int8"``.
    """
    if quantize is not None and quantize not in QUANTIZE_CHOICES:
        raise DeltatuneError(f"--quantize {quantize!r} is not supported; use --quantize int8 (or leave it out for fp32)")
    if task not in EXPORTABLE_TASKS:
        raise DeltatuneError(
            f"--format onnx supports the encoder tasks {', '.join(EXPORTABLE_TASKS)}; this run's task is {task}: "
            "export decoder runs (instruction, causal-lm, prompted tasks) with --format gguf, other runs as a merged model (--merge)"
        )
