"""Task families, all with the interface of :class:`deltatune.tasks.base.Task`."""

from deltatune.config import RunConfig
from deltatune.errors import DeltatuneError
from deltatune.tasks.base import Features, Task
from deltatune.tasks.classification import ClassificationTask
from deltatune.tasks.language_modeling import (
    CausalLMTask,
    GenerativeQATask,
    InstructionTask,
    SummarizationTask,
    TranslationTask,
)

TASK_CLASSES: dict[str, type[Task]] = {
    cls.name: cls
    for cls in (ClassificationTask, CausalLMTask, InstructionTask, SummarizationTask, TranslationTask, GenerativeQATask)
}


def get_task_class(name: str) -> type[Task]:
    """The task class registered under ``name``.

    Raises:
        DeltatuneError: unknown task name (lists the known ones).
    """
    try:
        return TASK_CLASSES[name]
    except KeyError:
        raise DeltatuneError(f"unknown task '{name}'; known tasks: {', '.join(TASK_CLASSES)}") from None


def create_task(config: RunConfig) -> Task:
    """A fresh, unfitted task for ``config.task``."""
    return get_task_class(config.task)(config)


__all__ = ["ClassificationTask", "Features", "Task", "TASK_CLASSES", "create_task", "get_task_class"]
