"""Image classification, single-label (softmax) and multi-label (sigmoid), on any vision backbone with
an ``AutoModelForImageClassification`` head (ViT, DINOv2, ConvNeXt, ...).

Rows: ``data.image_column`` (a file path; relative paths start from the data file's folder) and
``data.label_column``, from a CSV/JSONL table or a class-folder directory (``<class>/<file>``,
:mod:`deltatune.data.folders`). Images are converted to RGB and processed by the model's own image
processor (``AutoImageProcessor``: resize, centre crop, rescale, normalize). Training images may
first be augmented (``data.random_resized_crop``, ``data.horizontal_flip``; never evaluation or
prediction images). Labels, loss, metrics and predictions are text classification's
(:mod:`deltatune.tasks.media_classification`).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForImageClassification

from deltatune.data.images import horizontal_flip, image_problem, load_image, random_resized_crop
from deltatune.tasks.media_classification import MediaClassificationTask

# tokens per image for the memory estimate when the processor's size is unknown: 224 px, 16 px patches, [CLS]
_DEFAULT_SIDE, _PATCH = 224, 16


def pixel_size(processor) -> tuple[int, int]:
    """(height, width) in pixels of what ``processor`` gives the model: its crop size when it crops,
    else its size (a ``shortest_edge`` as a square); 224 x 224 when it says neither."""
    crop = processor.crop_size if getattr(processor, "do_center_crop", False) else None
    size = crop or getattr(processor, "size", None) or {}
    size = dict(size)
    if "height" in size and "width" in size:
        return int(size["height"]), int(size["width"])
    side = int(size.get("shortest_edge", _DEFAULT_SIDE))
    return side, side


class ImageClassificationTask(MediaClassificationTask):
    """Image classification with a linear head on a vision backbone (``AutoModelForImageClassification``)."""

    name = "image-classification"
    input_kind = "image"
    file_kind = "image"
    auto_model_class = AutoModelForImageClassification

    @property
    def file_column(self) -> str:
        return self.config.data.image_column

    def file_problem(self, path: Path) -> str | None:
        return image_problem(path)

    # the backbone's patch side in pixels: its config's ``patch_size`` once :meth:`build_model` has read it
    patch_size: int = _PATCH

    def input_length(self) -> int:
        """Patches of the processed image plus one [CLS]: the memory estimate's sequence length. The patch
        side is the model config's ``patch_size`` (DINOv2 14, ViT 16) after :meth:`build_model`, 16 before
        (``deltatune check``, which loads no model)."""
        h, w = pixel_size(self.tokenizer) if self.tokenizer is not None else (_DEFAULT_SIDE, _DEFAULT_SIDE)
        return (h // self.patch_size) * (w // self.patch_size) + 1

    def build_model(self, model_path: str, config_overrides: dict[str, Any]) -> torch.nn.Module:
        """As :meth:`MediaClassificationTask.build_model`; keeps the backbone's ``patch_size`` for :meth:`input_length`."""
        model = super().build_model(model_path, config_overrides)
        patch = getattr(model.config, "patch_size", None)
        if isinstance(patch, int) and patch > 0:  # some configs give (height, width) or none: keep 16
            self.patch_size = patch
        return model

    def batch_inputs(self, files: list[str], train: bool) -> dict[str, torch.Tensor]:
        """``pixel_values`` float32 (B, 3, H, W) from the image processor; training images augmented
        first as ``data.random_resized_crop`` / ``data.horizontal_flip`` say."""
        d = self.config.data
        images = []
        for f in files:
            img = load_image(Path(f), f)
            if train and d.random_resized_crop:
                img = random_resized_crop(img, self.rng)
            if train and d.horizontal_flip:
                img = horizontal_flip(img, self.rng)
            images.append(img)
        out = self.tokenizer(images=images, return_tensors="pt")
        return {"pixel_values": out["pixel_values"].float()}

    @classmethod
    def demo_rows(cls) -> dict[str, Any]:
        """Eight 32x32 PNGs, four red ("red") and four blue ("blue"), written once per process to a
        temporary folder; rows hold their absolute paths (see :meth:`Task.demo_rows`)."""
        from PIL import Image

        folder = Path(tempfile.gettempdir()) / "deltatune-demo-images"
        folder.mkdir(exist_ok=True)
        rows = []
        for i in range(8):
            label = "red" if i % 2 else "blue"
            path = folder / f"{label}-{i}.png"
            if not path.is_file():
                colour = (200 + 5 * i, 10 * i, 20) if label == "red" else (20, 10 * i, 200 + 5 * i)
                tmp = folder / f".{label}-{i}.{os.getpid()}.png"
                Image.new("RGB", (32, 32), colour).save(tmp)
                os.replace(tmp, path)
            rows.append({"image": str(path), "label": label})
        return {"rows": rows, "config": {}}
