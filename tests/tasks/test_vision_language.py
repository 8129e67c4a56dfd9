"""vision-language SFT on tiny random image-text-to-text models built here: Idefics3 (SmolVLM's
architecture, 5-D pixel values with padded image counts) and LLaVA (one (images, 3, H, W) stack), each
with a processor assembled from the packaged SmolLM2 tokenizer, the architecture's image processor at
28-56 px and a chat template like the real model's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from PIL import Image

import deltatune
from deltatune.config import build_config
from deltatune.delta import apply_delta
from deltatune.errors import DeltatuneError
from deltatune.models.loading import load_processor
from deltatune.tasks import create_task
from deltatune.tasks.chat_format import IGNORE_INDEX

pytestmark = pytest.mark.usefixtures("one_thread")

# HuggingFaceTB/SmolVLM-256M-Instruct's chat template
SMOLVLM_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}{% if message['content'][0]['type'] == 'image' %}"
    "{{':'}}{% else %}{{': '}}{% endif %}{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
# llava-hf/llava-1.5-7b-hf's chat template (no end-of-turn token: deltatune appends and trains EOS)
LLAVA_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}{% endfor %}"
    "{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
            max_position_embeddings=512, initializer_range=0.2)


def _tokenizer(*special: str, eos: str | None = None):
    from transformers import AutoTokenizer

    from deltatune.models import resolve_model

    try:
        tok = AutoTokenizer.from_pretrained(resolve_model("smollm2"))
    except Exception as e:  # the packaged model is an extra install
        pytest.skip(f"SmolLM2 tokenizer not available: {e}")
    tok.add_special_tokens({"additional_special_tokens": list(special)})
    if eos:
        tok.add_special_tokens({"eos_token": eos})
    return tok


def tiny_idefics3(folder: Path) -> str:
    """A 2-layer, 32-wide random Idefics3 (SmolVLM's architecture) with its processor: 28 px tiles, an image
    of up to 56 px split into 2x2 tiles plus a global one, one <image> token per tile."""
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3ImageProcessor, Idefics3Processor

    tok = _tokenizer("<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>",
                     *[f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)], eos="<end_of_utterance>")
    images = Idefics3ImageProcessor(size={"longest_edge": 56}, max_image_size={"longest_edge": 28})
    processor = Idefics3Processor(image_processor=images, tokenizer=tok, image_seq_len=1, chat_template=SMOLVLM_TEMPLATE)
    cfg = Idefics3Config(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=28,
                           patch_size=14, initializer_range=0.2),
        text_config=dict(model_type="llama", vocab_size=len(tok), eos_token_id=tok.eos_token_id, **TEXT),
        image_token_id=processor.image_token_id, scale_factor=2,
    )
    torch.manual_seed(0)
    Idefics3ForConditionalGeneration(cfg).save_pretrained(folder)
    processor.save_pretrained(folder)
    return str(folder)


def tiny_llava(folder: Path) -> str:
    """A 2-layer, 32-wide random LLaVA (CLIP image encoder on 28 px images, 14 px patches: 4 <image> tokens)."""
    from transformers import CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaImageProcessor, LlavaProcessor

    tok = _tokenizer("<image>")
    images = LlavaImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})
    processor = LlavaProcessor(image_processor=images, tokenizer=tok, patch_size=14, vision_feature_select_strategy="default",
                               chat_template=LLAVA_TEMPLATE, num_additional_image_tokens=1)
    cfg = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                       image_size=28, patch_size=14, projection_dim=32, initializer_range=0.2),
        text_config=dict(model_type="llama", vocab_size=len(tok), eos_token_id=tok.eos_token_id, **TEXT),
        image_token_id=processor.image_token_id, vision_feature_layer=-1,
    )
    torch.manual_seed(0)
    LlavaForConditionalGeneration(cfg).save_pretrained(folder)
    processor.save_pretrained(folder)
    return str(folder)


BUILDERS = {"idefics3": tiny_idefics3, "llava": tiny_llava}


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def vlm_dir(request, tmp_path_factory) -> str:
    return BUILDERS[request.param](tmp_path_factory.mktemp(request.param))


def _images(folder: Path) -> dict[str, str]:
    out = {}
    for name, rgb, size in (("red.png", (220, 20, 20), (40, 30)), ("blue.jpg", (20, 20, 220), (32, 32))):
        Image.new("RGB", size, rgb).save(folder / name)
        out[name.split(".")[0]] = name  # relative to the data file
    return out


def _text(s: str) -> list[dict]:
    return [{"type": "text", "text": s}]


def _rows(folder: Path) -> list[dict]:
    """Three conversations with 1, 2 and 0 images; every content a list of parts (a data file must use
    one kind per field: Arrow cannot mix strings and lists)."""
    img = _images(folder)
    return [
        {"messages": [{"role": "user", "content": [{"type": "image", "path": img["red"]}, {"type": "text", "text": "Colour?"}]},
                      {"role": "assistant", "content": _text("Red.")}]},
        {"messages": [{"role": "user", "content": [{"type": "image", "path": img["red"]}, {"type": "image", "url": img["blue"]},
                                                    {"type": "text", "text": "And these?"}]},
                      {"role": "assistant", "content": _text("Red and blue.")}]},
        {"messages": [{"role": "user", "content": _text("No picture here.")}, {"role": "assistant", "content": _text("Fine.")}]},
    ]


def _task(model_dir: str, folder: Path, **data):
    """The task with the model's processor; ``folder/train.jsonl`` exists (relative image paths start from its folder)."""
    train = folder / "train.jsonl"
    train.write_text("")
    cfg = build_config({"task": "vision-language", "output_dir": str(folder / "run"), "model": {"name_or_path": model_dir},
                        "data": {"train_file": str(train), "max_seq_length": 256, **data}})
    task = create_task(cfg)
    task.set_tokenizer(load_processor(model_dir, task.input_kind))
    return task, str(train)


def _trained_text(task, feature) -> str:
    return task.tokenizer.decode([t for t, lab in zip(feature["input_ids"], feature["labels"]) if lab != IGNORE_INDEX])


def test_only_assistant_tokens_are_trained_and_image_tokens_never(vlm_dir, tmp_path):
    task, train = _task(vlm_dir, tmp_path)
    ds = Dataset.from_list(_rows(tmp_path))
    task.fit(ds, train)
    feats = task.encode(ds, task.processor, source=train)
    tok = task.tokenizer
    eos = tok.eos_token
    # Idefics3 (SmolVLM template): the turn through its <end_of_utterance>; LLaVA: no end token in the template, EOS appended
    expected = [" Red." + eos, " Red and blue." + eos, " Fine." + eos] if "idefics3" in vlm_dir else [
        " Red. " + eos, " Red and blue. " + eos, " Fine. " + eos]
    assert [_trained_text(task, f) for f in feats.rows] == expected
    image_ids = {task.processor.image_token_id}
    for f, n_images in zip(feats.rows, (1, 2, 0)):
        assert len(f["images"]) == n_images and Path(f["images"][0]).parent == tmp_path if n_images else True
        at_images = [lab for t, lab in zip(f["input_ids"], f["labels"]) if t in image_ids]
        assert len(at_images) >= n_images and all(lab == IGNORE_INDEX for lab in at_images)
    assert feats.stats.images == 3 and feats.stats.examples == 3
    assert feats.stats.eos_appended == (0 if "idefics3" in vlm_dir else 3)


def test_an_image_inside_an_assistant_turn_is_never_trained(vlm_dir, tmp_path):
    task, train = _task(vlm_dir, tmp_path)
    img = _images(tmp_path)
    row = {"messages": [{"role": "user", "content": _text("Draw red.")},
                        {"role": "assistant", "content": [{"type": "text", "text": "Here:"}, {"type": "image", "path": img["red"]}]}]}
    (f,) = task.encode(Dataset.from_list([row]), task.processor, source=train).rows
    trained = [t for t, lab in zip(f["input_ids"], f["labels"]) if lab != IGNORE_INDEX]
    assert task.processor.image_token_id in f["input_ids"] and task.processor.image_token_id not in trained
    assert "Here:" in task.tokenizer.decode(trained)


def test_a_missing_image_is_refused_naming_the_row_and_the_file(vlm_dir, tmp_path):
    task, train = _task(vlm_dir, tmp_path)
    rows = _rows(tmp_path)
    rows[1]["messages"][0]["content"][1]["url"] = "gone.png"
    with pytest.raises(DeltatuneError, match=r"row 2: image .*gone\.png does not exist"):
        task.encode(Dataset.from_list(rows), task.processor, source=train)
    rows[1]["messages"][0]["content"][1]["url"] = "https://example.com/x.png"
    with pytest.raises(DeltatuneError, match=r"row 2: message 1, part 2 .*not a local file"):
        task.fit(Dataset.from_list(rows), train)


def test_truncation_keeps_the_images_or_drops_and_counts_the_row(vlm_dir, tmp_path):
    from deltatune.tasks.vision_language.conversation import row_conversation
    from deltatune.tasks.vision_language.encoding import VisionEncodeStats

    task, train = _task(vlm_dir, tmp_path)
    row = _rows(tmp_path)[0]
    row["messages"][1]["content"] = _text("Red" + " red" * 30 + ".")
    messages, files = row_conversation(row, 1, train)
    images = task.images(files, "row 1")
    enc = task.encoder()
    full = enc.encode(messages, images)
    last_image = max(i for i, t in enumerate(full["input_ids"]) if t == task.processor.image_token_id)
    first_trained = min(i for i, lab in enumerate(full["labels"]) if lab != IGNORE_INDEX)
    st = VisionEncodeStats()
    enc.max_len = last_image  # the image's last token would be cut: the row is dropped
    assert enc.encode(messages, images, st) is None and st.dropped_image_cut == 1
    enc.max_len = first_trained + 3  # the answer is cut, the image kept
    out = enc.encode(messages, images, st)
    assert len(out["input_ids"]) == len(out["labels"]) == first_trained + 3 and st.truncated == 1
    assert out["input_ids"] == full["input_ids"][: first_trained + 3]


def test_variable_image_counts_batch_and_train(vlm_dir, tmp_path):
    task, train = _task(vlm_dir, tmp_path)
    ds = Dataset.from_list(_rows(tmp_path))
    feats = task.encode(ds, task.processor, source=train)
    batch = task.collate(feats.rows)  # 1, 2 and 0 images
    pixels = batch["pixel_values"]
    if "idefics3" in vlm_dir:  # (rows with images, images per row padded, 3, H, W): 5 tiles per image
        assert pixels.shape[:2] == (2, 10) and batch["pixel_attention_mask"].shape[:2] == (2, 10)
        assert pixels[0, 5:].abs().sum() == 0  # the padded images are all zero
    else:  # (images, 3, H, W)
        assert pixels.shape == (3, 3, 28, 28)
    assert batch["input_ids"].shape == batch["labels"].shape and pixels.dtype == torch.float32
    model = task.build_model(vlm_dir, {})
    delta = task.delta_config(build_config({"task": "vision-language", "delta": {"method": "lora", "lora_r": 4}}).delta)
    model = apply_delta(model, delta, task.peft_task_type, task.modules_to_save)
    lora = [n for n, p in model.named_parameters() if p.requires_grad]
    assert lora and all("lora_" in n for n in lora)
    assert not any(part in n for n in lora for part in ("vision_model", "vision_tower", "connector", "multi_modal_projector"))
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-2)
    losses = []
    for _ in range(8):  # the same batch again and again: the loss must fall
        total, count = task.loss(model, batch)
        (total / count).backward()
        optim.step()
        optim.zero_grad()
        losses.append(float(total.detach() / count))
    assert count == task.num_targets(batch) and losses[-1] < 0.8 * losses[0], losses


def test_full_fine_tuning_freezes_the_image_encoder_and_connector_unless_asked(vlm_dir, tmp_path):
    task, _ = _task(vlm_dir, tmp_path)
    model = task.build_model(vlm_dir, {})
    for p in model.parameters():
        p.requires_grad_(True)  # what delta.method full does
    task.prepare_model(model)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen and all(any(k in n for k in ("vision", "connector", "multi_modal_projector")) for n in frozen)
    assert any("lm_head" in n or "embed_tokens" in n for n, p in model.named_parameters() if p.requires_grad)
    task, _ = _task(vlm_dir, tmp_path, train_connector=True, train_vision_tower=True)
    model = task.build_model(vlm_dir, {})
    task.prepare_model(model)
    assert all(p.requires_grad for p in model.parameters())
    lora = task.delta_config(build_config({"task": "vision-language", "delta": {"method": "lora"}}).delta)
    assert any("vision" in n for n in lora.target_modules) and task.modules_to_save in (["connector"], ["multi_modal_projector"])


def test_train_save_reload_and_generate_on_a_held_out_image(vlm_dir, tmp_path):
    rows = _rows(tmp_path)
    for name, rows_ in (("train.jsonl", rows * 2), ("dev.jsonl", rows)):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows_))
    cfg = {
        "task": "vision-language", "output_dir": str(tmp_path / "run"), "seed": 3,
        "model": {"name_or_path": vlm_dir, "dropout": 0.0},
        "data": {"train_file": str(tmp_path / "train.jsonl"), "validation_file": str(tmp_path / "dev.jsonl"), "max_seq_length": 128},
        "delta": {"method": "lora", "lora_r": 4},
        "train": {"per_device_train_batch_size": 3, "learning_rate": 1e-2, "max_steps": 2, "progress_bar": False},
        "eval": {"eval_strategy": "no", "max_new_tokens": 3, "generation_max_samples": 2, "compare_generations": 0},
    }
    run = deltatune.finetune(cfg, verbose=False)
    assert run.result.global_step == 2 and run.metrics["validation"]["tokens"] > 0
    adapter = json.loads((run.path / "model" / "adapter_config.json").read_text())
    assert adapter["target_modules"] and not any("vision" in t for t in adapter["target_modules"])
    predictor = deltatune.load(run.path)
    held_out = tmp_path / "held_out.png"
    Image.new("RGB", (50, 20), (20, 200, 20)).save(held_out)
    out = predictor.predict_rows(predictor.task.rows_from_texts([("What colour?", str(held_out)), "Say hi."]), "held-out")
    assert len(out) == 2 and all(isinstance(p["generated"], str) for p in out)
    with pytest.raises(DeltatuneError, match=r"^--file: .* is a vision-language run, .*'messages' column.* via --input$"):
        deltatune.api.predict(run.path, files=[str(held_out)])  # predict --file: not sent as the text of a turn


def test_rows_without_messages_name_the_messages_column_and_task(tmp_path):
    cfg = build_config({"task": "vision-language"})
    with pytest.raises(DeltatuneError, match=r"rows.jsonl: no column 'messages'; .*\(give each row a 'messages' .*--task\)$"):
        create_task(cfg).fit_columns(Dataset.from_list([{"text": "hi"}]), "rows.jsonl")


def test_predict_file_is_refused_for_a_vision_language_run(tmp_path):
    from types import SimpleNamespace

    from deltatune.api import _file_rows

    cfg = build_config({"task": "vision-language"})
    predictor = SimpleNamespace(task=create_task(cfg), config=cfg)
    with pytest.raises(DeltatuneError, match=r"^--file: runs/x is a vision-language run, .*via --input$"):
        _file_rows(predictor, "runs/x", ["a.png"])


def test_the_chunked_loss_equals_the_plain_one(vlm_dir, tmp_path):
    task, train = _task(vlm_dir, tmp_path)
    feats = task.encode(Dataset.from_list(_rows(tmp_path)), task.processor, source=train)
    batch = task.collate(feats.rows)
    model = task.build_model(vlm_dir, {})
    plain, n = task.loss(model, batch)
    task.config.train.loss_chunk_size = 4  # several chunks of 4 trained tokens, the LM head on those alone
    chunked, m = task.loss(model, batch)
    assert n == m and chunked.item() == pytest.approx(plain.item(), rel=1e-5)
