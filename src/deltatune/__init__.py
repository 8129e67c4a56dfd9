"""deltatune: fine-tune pretrained transformers; keep the full weights or just the delta.

Python API::

    import deltatune
    run = deltatune.finetune("config.yaml")          # or a dict / RunConfig, plus overrides
    predictor = deltatune.load(run.path)
    predictor.predict(["a great movie"])
    deltatune.evaluate(run.path, "test.csv")
"""

__version__ = "0.1.0"

from deltatune.api import Run, evaluate, finetune, load  # noqa: E402
from deltatune.auto import AutoResult, auto  # noqa: E402
from deltatune.config import RunConfig, build_config  # noqa: E402
from deltatune.errors import DeltatuneError  # noqa: E402

__all__ = ["AutoResult", "DeltatuneError", "Run", "RunConfig", "auto", "build_config", "evaluate", "finetune", "load", "__version__"]
