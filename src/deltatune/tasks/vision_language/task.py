"""``vision-language``: supervised fine-tuning of an image-text-to-text model on chat data with images.

Rows: JSONL/JSON ``messages`` (:mod:`.conversation`: content parts ``{"type": "text", "text"}`` and
``{"type": "image", "path"}``, paths relative to the data file). Model: ``AutoModelForImageTextToText``
(SmolVLM/Idefics3, Qwen2-VL/2.5-VL, LLaVA, Gemma 3, ...) with its ``AutoProcessor``
(:func:`deltatune.models.loading.load_processor` kind ``"image-text"``). Loss: next-token
cross-entropy of the assistant tokens only (:mod:`.encoding`), summed, with the number of trained
tokens as the normalizer, as every decoder task (:class:`deltatune.tasks.language_modeling.LanguageModelTask`).

What is trained: the language model. The image encoder ("vision tower") and the projector between
it and the language model ("connector") stay frozen unless ``data.train_vision_tower`` /
``data.train_connector``: with LoRA/DoRA the adapters go on the language model's linear layers (and
the image encoder's with ``train_vision_tower``) and the connector is trained and saved whole; with
full fine-tuning the frozen parts get no gradient. The parts are found by their module names
(:data:`PART_NAMES`, the one per-architecture table). Evaluation: token loss and perplexity, and
ROUGE of generated answers against the reference answers (docs/vision_language.md).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

import datasets
import torch
import torch.nn.functional as F
from transformers import AutoModelForImageTextToText

from deltatune.config import DeltaConfig
from deltatune.data.columns import require_columns
from deltatune.data.images import image_problem, load_image
from deltatune.data.paths import COLUMN_REMEDIES, base_folder
from deltatune.data.splits import row_number
from deltatune.errors import DeltatuneError
from deltatune.models.loading import load_pretrained
from deltatune.tasks.base import Features
from deltatune.tasks.chat_format import IGNORE_INDEX
from deltatune.tasks.collate import model_inputs
from deltatune.tasks.language_modeling import LanguageModelTask
from deltatune.tasks.prompting import SCORERS, GenerationMetrics
from deltatune.tasks.token_loss import chunked_cross_entropy, head_inputs, resolve_chunk_size, unwrap
from deltatune.tasks.vision_language import batching
from deltatune.tasks.vision_language.conversation import row_conversation, text_of
from deltatune.tasks.vision_language.encoding import VisionChatEncoder, VisionEncodeStats

# module names (a path component) of the parts of the supported architectures: the image encoder
# and the connector; everything else (the language model, its embeddings and head) is the language
# model. Idefics3/SmolVLM: vision_model, connector; LLaVA, Gemma 3: vision_tower, multi_modal_projector;
# Qwen2-VL/2.5-VL: visual (its patch merger, visual.merger, is the connector)
PART_NAMES = {"connector": ("connector", "multi_modal_projector", "merger"), "vision": ("vision_model", "vision_tower", "visual")}
# architectures whose logits are exactly lm_head(hidden states): the chunked loss is exact on them
CHUNKABLE_MODEL_TYPES = frozenset({"idefics3", "smolvlm", "llava", "qwen2_vl", "qwen2_5_vl"})
# the Δθ methods whose "all-linear" targets are narrowed to the trained parts
LINEAR_ADAPTERS = ("lora", "dora")
MESSAGE_COLUMNS = ("messages", "conversations")


def model_part(name: str) -> str:
    """``"connector"``, ``"vision"`` or ``"language"``: the part a parameter or module ``name`` belongs to."""
    components = name.split(".")
    for part in ("connector", "vision"):
        if any(c in PART_NAMES[part] for c in components):
            return part
    return "language"


class VisionLanguageTask(GenerationMetrics, LanguageModelTask):
    """Chat SFT with images on an ``AutoModelForImageTextToText`` model (see the module doc)."""

    name = "vision-language"
    input_kind = "image-text"
    auto_model_class = AutoModelForImageTextToText
    peft_task_type = "CAUSAL_LM"
    supports_packing = False  # image features are placed per sequence
    chat = False  # the chat API takes text messages; images come in rows (predict --input)
    modules_to_save: list[str] | None = None  # set by build_model: the connector, with data.train_connector
    adapter_targets: list[str] | None = None  # set by build_model: the linear layers LoRA/DoRA adapt
    processor: Any = None

    # ---- rows ---------------------------------------------------------------------------------
    def set_tokenizer(self, tokenizer) -> None:
        """Keep the model's processor (``load_processor(model, "image-text")``) and its tokenizer's pad id
        (its EOS when it has none: padding is masked out)."""
        self.processor = tokenizer
        tok = tokenizer.tokenizer
        self.tokenizer = tok
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        self.pad_token_id = pad if pad is not None else 0

    def fit_columns(self, ds: datasets.Dataset, source: str, with_labels: bool = True) -> None:
        """Check that the rows have a ``messages`` (or ``conversations``) column and valid conversations.

        Raises:
            DeltatuneError: no such column; a row whose conversation is malformed (see
                :func:`deltatune.tasks.vision_language.conversation.row_conversation`).
        """
        column = next((c for c in MESSAGE_COLUMNS if c in ds.column_names), None)
        if column is None:
            require_columns(ds, ["messages"], source, remedy=COLUMN_REMEDIES[self.input_kind])
        for i, row in enumerate(ds, start=1):
            self.conversation(row, i, source, with_answer=with_labels)

    def conversation(self, row: dict[str, Any], row_number: int, source: str, with_answer: bool = True) -> tuple[list[dict], list[Path]]:
        """The row's messages (``data.system_prompt`` first when set) and its image files.

        Relative image paths start from the folder of the data file ``source``; rows whose origin names
        no file (a split handed over as ``"data"``) start from the run's validation, test or training
        file's folder, the first that exists (:meth:`image_base`)."""
        return row_conversation(row, row_number, source, with_answer, self.config.data.system_prompt, self.image_base(source))

    def image_base(self, source: str) -> str:
        """``source`` when it names a local data file, else the run's first existing local data file
        (validation, test, training), else ``source`` (paths start from the current folder)."""
        if base_folder(source) != Path.cwd():
            return source
        d = self.config.data
        files = [f for f in (d.validation_file, d.test_file, d.train_file) if isinstance(f, str) and Path(f).expanduser().is_file()]
        return files[0] if files else source

    def encoder(self) -> VisionChatEncoder:
        """The encoder of the run's processor, chat template and ``data.max_seq_length``."""
        if self.processor is None:
            raise DeltatuneError("vision-language: no processor was set (set_tokenizer) before encoding")
        return VisionChatEncoder(self.processor, self.config.data.chat_template, self.config.data.max_seq_length)

    @staticmethod
    def images(files: list[Path], where: str) -> list:
        """The images of a row, decoded as RGB.

        Raises:
            DeltatuneError: a missing or unreadable file, naming ``where`` and the file.
        """
        out = []
        for f in files:
            problem = image_problem(f)
            if problem is not None:
                raise DeltatuneError(f"{where}: image {f} {problem}; fix the path or the file, or drop the row")
            out.append(load_image(f, where))
        return out

    def encode(self, ds, tokenizer, with_labels: bool = True, source: str = "data") -> Features:
        """Each row's conversation as token ids with assistant-only labels and its image paths
        (decoded again, batch by batch, in :meth:`collate`); rows whose trained tokens or images
        would be cut by ``data.max_seq_length`` are dropped and counted (``Features.stats``).

        Raises:
            DeltatuneError: a malformed row, a missing or unreadable image (naming the file, the row
                and the path), or no row left.
        """
        if self.processor is None or tokenizer is not self.processor:
            self.set_tokenizer(tokenizer)
        enc = self.encoder()
        st = VisionEncodeStats()
        rows = []
        for j, row in enumerate(ds):
            i = row_number(source, j)  # the file's row, also in a part carved out of the training file
            where = f"{source}: row {i}"
            messages, files = self.conversation(row, i, source)
            out = enc.encode(messages, self.images(files, where), st, where)
            if out is None:
                st.dropped_rows.append(i)
                continue
            rows.append({**out, "images": [str(f) for f in files]})
        if not rows:
            raise DeltatuneError(
                f"{source}: no conversation fits data.max_seq_length={self.config.data.max_seq_length} with its images and a "
                "trained token; raise max_seq_length (images take many tokens)"
            )
        return Features(rows, [len(r["input_ids"]) for r in rows], stats=st)

    def input_texts(self, ds: datasets.Dataset, source: str = "data") -> list[tuple[str, ...]]:
        """The text of each row's messages, joined by newlines (images left out)."""
        return [("\n".join(text_of(m) for m in self.conversation(row, i, source)[0]),) for i, row in enumerate(ds, start=1)]

    def rows_from_texts(self, texts: Sequence[Any]) -> datasets.Dataset:
        """Rows from plain inputs: a text is a user turn; a ``(text, image path, ...)`` tuple a user turn
        with those images (before the text); a dict is a row."""
        rows = []
        for t in texts:
            if isinstance(t, dict):
                rows.append(dict(t))
                continue
            text, files = (t[0], list(t[1:])) if isinstance(t, (tuple, list)) else (t, [])
            parts = [{"type": "image", "path": str(f)} for f in files] + [{"type": "text", "text": str(text)}]
            rows.append({"messages": [{"role": "user", "content": parts}]})
        return datasets.Dataset.from_list(rows)

    def show_feature(self, tokenizer, feature: dict[str, Any]) -> list[str]:
        """``deltatune check``: the text with the trained spans in ``[[ ]]`` and the image files."""
        lines = super().show_feature(self.tokenizer, feature)
        return lines + [f"images: {', '.join(feature['images']) or '(none)'}"]

    # ---- model --------------------------------------------------------------------------------
    def build_model(self, model_path: str, config_overrides: dict[str, Any]) -> torch.nn.Module:
        """``AutoModelForImageTextToText`` in float32 (mixed precision is applied by autocast); sets
        :attr:`adapter_targets` and :attr:`modules_to_save` from ``data.train_vision_tower`` / ``train_connector``."""
        model = load_pretrained(
            AutoModelForImageTextToText,
            model_path,
            trust_remote_code=self.config.model.trust_remote_code,
            allow_pickle_weights=self.config.model.allow_pickle_weights,
            dtype=torch.float32,
            **config_overrides,
        )
        self.new_parameter_names = set()
        d = self.config.data
        trained = {"language"} | ({"vision"} if d.train_vision_tower else set())
        head = model.get_output_embeddings()
        self.adapter_targets = sorted(
            n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m is not head and model_part(n) in trained
        )
        connectors = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules() if n and n.rsplit(".", 1)[-1] in PART_NAMES["connector"]}
        self.modules_to_save = sorted(connectors) if d.train_connector and connectors else None
        return model

    def delta_config(self, delta: DeltaConfig) -> DeltaConfig:
        """LoRA/DoRA with ``delta.target_modules: all-linear``: the linear layers of the trained parts
        (:attr:`adapter_targets`, set by :meth:`build_model`), not the image encoder's."""
        if delta.method in LINEAR_ADAPTERS and delta.target_modules in (None, "all-linear", ["all-linear"]) and self.adapter_targets:
            return delta.model_copy(update={"target_modules": list(self.adapter_targets)})
        return delta

    def prepare_model(self, model: torch.nn.Module) -> None:
        """Full fine-tuning (and ``freeze``): no gradient for the image encoder and the connector unless
        ``data.train_vision_tower`` / ``data.train_connector`` (adapters already leave them frozen)."""
        if self.config.delta.method not in ("full", "freeze"):
            return
        d = self.config.data
        frozen = ({"vision"} if not d.train_vision_tower else set()) | ({"connector"} if not d.train_connector else set())
        for name, p in model.named_parameters():
            if model_part(name) in frozen:
                p.requires_grad_(False)

    def collate(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Right-padded ``input_ids``/``attention_mask``/``labels`` (and the processor's other per-token
        outputs), int64 (B, T), plus the batch's image tensors (:func:`batching.collate`)."""
        return batching.collate(self.processor, features, self.pad_token_id)

    def token_losses(self, model, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token next-token cross-entropy (B, T-1) fp32, zero where not trained, and the trained mask.

        The whole batch (image tensors included) goes through the model; with ``train.loss_chunk_size``
        (or automatically for large vocabularies) the LM head and loss run in chunks of trained tokens
        on the architectures of :data:`CHUNKABLE_MODEL_TYPES` (:mod:`deltatune.tasks.token_loss`).
        """
        inputs = model_inputs(batch)
        targets = batch["labels"][:, 1:]
        mask = targets != IGNORE_INDEX
        inner = unwrap(model)
        vocab = inner.config.get_text_config().vocab_size
        chunk = resolve_chunk_size(self.config.train.loss_chunk_size, vocab)
        head = inner.get_output_embeddings() if chunk > 0 and inner.config.model_type in CHUNKABLE_MODEL_TYPES else None
        if head is None:
            logits = model(**inputs, use_cache=False).logits
            ce = F.cross_entropy(
                logits[:, :-1].float().reshape(-1, logits.shape[-1]), targets.reshape(-1).clamp(min=0), reduction="none"
            ).view(targets.shape)
            return ce * mask, mask
        hidden = head_inputs(model, head, inputs)
        per_token = chunked_cross_entropy(head, hidden[:, :-1][mask], targets[mask], chunk)
        return torch.zeros(targets.shape, dtype=torch.float32, device=per_token.device).masked_scatter(mask, per_token), mask

    # ---- generation ---------------------------------------------------------------------------
    def generate_rows(self, model, tokenizer, ds, device="cpu", source: str = "data") -> tuple[list[str], list[bool]]:
        """Generate an answer for each row (its conversation without trailing assistant turns, with its images)."""
        if self.processor is None or tokenizer is not self.processor:
            self.set_tokenizer(tokenizer)
        enc = self.encoder()
        prompts = []
        for i, row in enumerate(ds, start=1):
            where = f"{source}: row {i}"
            messages, files = self.conversation(row, i, source, with_answer=False)
            prompts.append({**enc.prompt(messages, self.images(files, where), where), "images": [str(f) for f in files]})
        return batching.generate(model, self.processor, prompts, self.generation_settings(), self.pad_token_id, device)

    def references(self, row: dict[str, Any]) -> list[str]:
        """The reference answer of one row: the text of its last assistant message."""
        messages, _ = row_conversation(row, 0, "data")
        return [text_of(messages[-1])] if messages[-1]["role"] == "assistant" else []

    def example_input(self, row: dict[str, Any], row_number: int, source: str) -> str:
        """The conversation without its answer as analysis.json shows it: ``role: text`` lines, an image
        shown as ``[image <file name>]``."""
        messages, files = self.conversation(row, row_number, source, with_answer=False)
        names = iter(files)
        lines = []
        for m in messages:
            shown = "".join(p["text"] if p["type"] == "text" else f"[image {next(names).name}] " for p in m["content"])
            lines.append(f"{m['role']}: {shown}")
        return "\n".join(lines)

    def score(self, predictions: list[str], references: list[list[str]]) -> dict[str, float]:
        """ROUGE of the generated answers against the reference answers (the registry's scorer)."""
        return SCORERS[self.name](predictions, references)

    @classmethod
    def demo_rows(cls) -> dict[str, Any]:
        """Eight conversations about 32x32 red and blue PNGs (written once per process to a temporary
        folder; rows hold their absolute paths): one, two or no image per row (see :meth:`Task.demo_rows`)."""
        from PIL import Image

        folder = Path(tempfile.gettempdir()) / "deltatune-demo-images"
        folder.mkdir(exist_ok=True)
        paths = {}
        for colour, rgb in (("red", (220, 20, 20)), ("blue", (20, 20, 220))):
            path = folder / f"vl-{colour}.png"
            if not path.is_file():
                tmp = folder / f".vl-{colour}.{os.getpid()}.png"
                Image.new("RGB", (32, 32), rgb).save(tmp)
                os.replace(tmp, path)
            paths[colour] = str(path)
        rows = []
        for i in range(8):
            colour = "red" if i % 2 else "blue"
            if i == 6:  # no image
                user: Any = [{"type": "text", "text": "Say a colour."}]
            elif i == 7:  # two images
                user = [{"type": "image", "path": paths["red"]}, {"type": "image", "path": paths["blue"]},
                        {"type": "text", "text": "What colour is the first image?"}]
            else:
                user = [{"type": "image", "path": paths[colour]}, {"type": "text", "text": "What colour is this?"}]
            answer = "Red." if i in (6, 7) or colour == "red" else "Blue."
            rows.append({"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": [{"type": "text", "text": answer}]}]})
        return {"rows": rows, "config": {}}
