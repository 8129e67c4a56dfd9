"""Encoder-decoder tasks on tiny random T5 / BART / bert2bert models with the MiniLM tokenizer.

There are no real T5/BART weights offline: the models are random and 2 layers deep, so these
tests check mechanics (labels, loss normalization, generation, save/reload, Δθ), not quality.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from safetensors.torch import load_file

import deltatune
from deltatune.api import evaluate_pretrained
from deltatune.config import build_config
from deltatune.errors import DeltatuneError
from deltatune.tasks import create_task
from deltatune.tasks.generation import GenerationSettings, generate
from deltatune.tasks.seq2seq import Seq2SeqGenerativeQATask, Seq2SeqTranslationTask

WORDS = "red blue green cyan pink gold gray teal navy lime apple house tree river stone cloud".split()


pytestmark = pytest.mark.usefixtures("one_thread")


def _tokenizer():
    from transformers import AutoTokenizer

    from deltatune.models import resolve_model

    return AutoTokenizer.from_pretrained(resolve_model("minilm"))




@pytest.fixture(scope="module")
def tiny_bart_dir(tmp_path_factory) -> str:
    """A 2+2-layer, 32-wide random BART on the MiniLM vocabulary ([CLS] as BOS, [SEP] as EOS and decoder start)."""
    from transformers import BartConfig, BartForConditionalGeneration

    tok = _tokenizer()
    out = tmp_path_factory.mktemp("tiny_bart")
    cfg = BartConfig(
        vocab_size=tok.vocab_size, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=128, init_std=0.2,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id,
        decoder_start_token_id=tok.sep_token_id, forced_eos_token_id=tok.sep_token_id,
    )
    torch.manual_seed(0)
    BartForConditionalGeneration(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


def _pairs(n: int, seed: int, reverse: bool = False, max_words: int = 6) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(1, max_words))]
        rows.append({"source": " ".join(words), "target": " ".join(reversed(words) if reverse else words)})
    return rows


def _write(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def _config(model_dir, tmp_path, out="run", decoder=None, train_rows=None, val_rows=None, **train_kw) -> dict:
    train = _write(tmp_path / "train.jsonl", train_rows or _pairs(24, 1))
    val = _write(tmp_path / "val.jsonl", val_rows or _pairs(6, 2))
    model = {"name_or_path": model_dir, "dropout": 0.0}
    if decoder:
        model["decoder_name_or_path"] = decoder
    return {
        "task": "translation",
        "output_dir": str(tmp_path / out),
        "seed": 0,
        "model": model,
        "data": {"train_file": str(train), "validation_file": str(val), "max_seq_length": 32, "max_target_length": 16},
        "train": {
            "per_device_train_batch_size": 8, "learning_rate": 3e-3, "num_train_epochs": 2, "logging_steps": 1,
            "progress_bar": False, **train_kw,
        },
        "eval": {"max_new_tokens": 8, "generation_max_samples": 3},
    }


def _task(model_dir, **data):
    cfg = build_config({"task": "translation", "model": {"name_or_path": model_dir}, "data": data})
    task = create_task(cfg)
    tok = _tokenizer()
    task.set_tokenizer(tok)
    return task, tok


# ---- rows -> features ------------------------------------------------------------------------
def test_registry_picks_seq2seq_for_encoder_decoders(tiny_t5_dir, tiny_model_dir):
    assert isinstance(create_task(build_config({"task": "translation", "model": {"name_or_path": tiny_t5_dir}})), Seq2SeqTranslationTask)
    two = build_config({"task": "generative-qa", "model": {"name_or_path": tiny_model_dir, "decoder_name_or_path": tiny_model_dir}})
    assert isinstance(create_task(two), Seq2SeqGenerativeQATask)


def test_source_prefix_template_and_label_masking(tiny_t5_dir):
    task, tok = _task(tiny_t5_dir, source_prefix="translate English to German: ", max_target_length=5)
    ds = Dataset.from_list([{"source": "red house", "target": "rot haus"}, {"source": "a", "target": "one two three four five six"}])
    task.check(ds, "x.jsonl")
    f = task.encode(ds, tok, source="x.jsonl")
    assert f.rows[0]["input_ids"] == tok("translate English to German: red house")["input_ids"]
    # targets: [CLS] ... [SEP] (T5 here starts the decoder with [PAD], so [CLS] stays a target), cut to 5 with [SEP] kept
    assert f.rows[0]["labels"] == tok(text_target="rot haus")["input_ids"]
    assert len(f.rows[1]["labels"]) == 5 and f.rows[1]["labels"][-1] == tok.sep_token_id
    assert f.stats.targets_truncated == 1 and f.stats.truncated == 0
    batch = task.collate(f.rows)
    n0 = len(f.rows[0]["labels"])
    assert batch["labels"].shape == (2, 5) and (batch["labels"][0, n0:] == -100).all() and (batch["labels"][0, :n0] != -100).all()
    assert task.num_targets(batch) == n0 + 5
    assert batch["attention_mask"].sum().item() == sum(len(r["input_ids"]) for r in f.rows)


def test_generative_qa_template_and_bad_rows(tiny_t5_dir):
    cfg = build_config({"task": "generative-qa", "model": {"name_or_path": tiny_t5_dir}})
    task = create_task(cfg)
    tok = _tokenizer()
    task.set_tokenizer(tok)
    ds = Dataset.from_list([{"question": "who?", "context": "Ann ran.", "answers": {"text": ["Ann", "ann"], "answer_start": [0, 0]}}])
    f = task.encode(ds, tok)
    assert tok.decode(f.rows[0]["input_ids"], skip_special_tokens=True) == "question : who? context : ann ran."
    assert task.references(ds[0]) == ["Ann", "ann"]
    with pytest.raises(DeltatuneError, match=r"q\.json: no column 'context'"):
        task.check(Dataset.from_list([{"question": "x", "answers": "y"}]), "q.json")
    empty = Dataset.from_list([{"question": "x", "context": "c", "answers": {"text": [""], "answer_start": [0]}}])
    with pytest.raises(DeltatuneError, match=r"q\.json: row 1 has an empty 'answers'"):
        task.encode(empty, tok, source="q.json")
    no_context = Dataset.from_list([{"question": "x", "context": " ", "answers": "y"}])
    with pytest.raises(DeltatuneError, match=r"q\.json: row 1 has an empty 'context'"):
        task.encode(no_context, tok, source="q.json")
    with pytest.raises(DeltatuneError, match="one --text cannot fill them"):
        task.rows_from_texts(["Who wrote Hamlet?"])
    assert task.template_columns() == ["question", "context"]  # a tuple fills them in this order
    assert task.rows_from_texts([("who?", "Ann ran.")])[0]["context"] == "Ann ran."


@pytest.mark.parametrize(
    "template, needle",
    [("Translate: {en", "is not a valid template"), ("{en} {}", "positional field"), ("Translate", "reads no column"),
     ("To {target_lang}", "reads no column")],
)
def test_prompt_templates_that_cannot_work_are_refused(tiny_t5_dir, template, needle):
    task = create_task(build_config({"task": "translation", "model": {"name_or_path": tiny_t5_dir}, "data": {"prompt_template": template}}))
    with pytest.raises(DeltatuneError, match=needle):
        task.check(Dataset.from_list([{"en": "a", "target": "b"}]), "t.jsonl")


def test_a_missing_prompt_column_points_at_the_template(tiny_t5_dir):
    task = create_task(build_config({"task": "translation", "model": {"name_or_path": tiny_t5_dir}}))
    with pytest.raises(DeltatuneError, match=r"t\.jsonl: no column 'source' for the prompt template .*columns are 'en', 'de'.*data\.prompt_template"):
        task.check(Dataset.from_list([{"en": "a", "de": "b"}]), "t.jsonl")


# ---- loss --------------------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["t5", "bart"])
def test_loss_falls_on_a_toy_reverse_task(which, tiny_t5_dir, tiny_bart_dir):
    task, tok = _task(tiny_t5_dir if which == "t5" else tiny_bart_dir)
    model = task.build_model(tiny_t5_dir if which == "t5" else tiny_bart_dir, {})
    assert task.new_parameter_names == set()
    batch = task.collate(task.encode(Dataset.from_list(_pairs(8, 3, reverse=True)), tok).rows)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        total, n = task.loss(model, batch)
        (total / n).backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(total.detach() / n))
    assert int(n) == task.num_targets(batch)
    assert losses[-1] < 0.5 * losses[0], losses


def _one_step(model_dir, tmp_path, out, batch, accum):
    rows = _pairs(4, 5, max_words=12)  # targets of different lengths
    assert len({len(r["target"].split()) for r in rows}) > 1
    cfg = _config(
        model_dir, tmp_path, out, train_rows=rows, per_device_train_batch_size=batch, gradient_accumulation_steps=accum,
        optimizer="sgd", momentum=0.0, weight_decay=0.0, learning_rate=1.0, lr_scheduler_type="constant",
        max_grad_norm=None, max_steps=1, group_by_length=False,
    )
    cfg["eval"] = {"eval_strategy": "no", "generation_max_samples": 0}
    deltatune.finetune(cfg, verbose=False)
    return load_file(str(tmp_path / out / "model" / "model.safetensors"))


def test_token_normalized_accumulation_on_variable_length_targets(tiny_t5_dir, tmp_path):
    ref = _one_step(tiny_t5_dir, tmp_path, "b4", 4, 1)
    acc = _one_step(tiny_t5_dir, tmp_path, "b1a4", 1, 4)
    base = load_file(str(Path(tiny_t5_dir) / "model.safetensors"))
    assert any(not torch.equal(ref[k], base[k]) for k in ref)  # the step changed the weights
    for k in ref:
        torch.testing.assert_close(acc[k], ref[k], atol=1e-5, rtol=0, msg=k)


# ---- generation --------------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["t5", "bert2bert"])
def test_right_padded_batched_generation_equals_one_by_one(which, tiny_t5_dir, tiny_model_dir):
    if which == "t5":
        task, tok = _task(tiny_t5_dir)
        model = task.build_model(tiny_t5_dir, {})
    else:
        cfg = build_config({"task": "translation", "model": {"name_or_path": tiny_model_dir, "decoder_name_or_path": tiny_model_dir}})
        task, tok = create_task(cfg), _tokenizer()
        task.set_tokenizer(tok)
        model = task.build_model(tiny_model_dir, {})
    model.eval()
    prompts = [tok(t)["input_ids"] for t in ["red house", "a much longer input with many more words in it than the others", "x", "tree river"]]
    batched, ended = generate(model, tok, prompts, GenerationSettings(max_new_tokens=6, batch_size=4))
    single = [generate(model, tok, [p], GenerationSettings(max_new_tokens=6, batch_size=1))[0][0] for p in prompts]
    assert batched == single
    assert len(set(batched)) > 1 and len(ended) == 4


# ---- whole runs ---------------------------------------------------------------------------------
def test_t5_run_saves_reloads_and_predicts(tiny_t5_dir, tmp_path):
    run = deltatune.finetune(_config(tiny_t5_dir, tmp_path, num_train_epochs=3), verbose=False)
    val = run.metrics["validation"]
    assert {"loss", "perplexity", "bleu", "chrf", "generation_eos_share"} <= set(val)
    logged = [json.loads(line) for line in (run.path / "metrics.jsonl").read_text().splitlines()]
    train_losses = [r["loss"] for r in logged if "loss" in r]
    assert train_losses[-1] < train_losses[0]
    p = deltatune.load(run.path)
    rows = Dataset.from_list(_pairs(6, 2))
    assert p.metrics(rows)["loss"] == pytest.approx(val["loss"], abs=1e-6)
    assert [r["generated"] for r in p.predict_rows(rows.select(range(3)))] == [s["prediction"] for s in val["samples"]]
    out = p.predict(["red blue green", "tree"])
    assert len(out) == 2 and all(isinstance(r["generated"], str) and isinstance(r["ended_with_eos"], bool) for r in out)


def test_lora_on_t5_saves_an_adapter_and_reloads_equal(tiny_t5_dir, tmp_path):
    cfg = _config(tiny_t5_dir, tmp_path, learning_rate=1e-2)
    cfg["delta"] = {"method": "lora", "lora_r": 4}
    run = deltatune.finetune(cfg, verbose=False)
    files = {p.name for p in (run.path / "model").iterdir()}
    assert "adapter_config.json" in files and "model.safetensors" not in files
    assert json.loads((run.path / "model" / "adapter_config.json").read_text())["task_type"] == "SEQ_2_SEQ_LM"
    p = deltatune.load(run.path)
    rows = Dataset.from_list(_pairs(6, 2))
    val = run.metrics["validation"]
    assert p.metrics(rows)["loss"] == pytest.approx(val["loss"], abs=1e-6)
    assert [r["generated"] for r in p.predict_rows(rows.select(range(3)))] == [s["prediction"] for s in val["samples"]]
    # the adapter changed the model: the pretrained base (evaluate_pretrained) scores differently
    pre = evaluate_pretrained(cfg, str(tmp_path / "val.jsonl"))
    assert {"loss", "bleu", "chrf"} <= set(pre) and pre["tokens"] == val["tokens"]
    assert abs(pre["loss"] - val["loss"]) > 1e-3


def test_bert2bert_builds_trains_saves_and_reloads(tiny_model_dir, tmp_path):
    cfg = _config(tiny_model_dir, tmp_path, decoder=tiny_model_dir, num_train_epochs=3, learning_rate=1e-3)
    task = create_task(build_config(cfg))
    tok = _tokenizer()
    task.set_tokenizer(tok)
    model = task.build_model(tiny_model_dir, {})
    assert type(model).__name__ == "EncoderDecoderModel"
    assert any(".crossattention." in n for n in task.new_parameter_names)
    assert all(n.startswith("decoder.") for n in task.new_parameter_names)
    # labels drop the [CLS] that starts the decoder and end with [SEP]
    f = task.encode(Dataset.from_list([{"source": "red", "target": "blue tree"}]), tok)
    assert f.rows[0]["labels"] == tok("blue tree", add_special_tokens=False)["input_ids"] + [tok.sep_token_id]

    run = deltatune.finetune(cfg, verbose=False)
    saved = json.loads((run.path / "model" / "config.json").read_text())
    assert (saved["decoder_start_token_id"], saved["eos_token_id"], saved["pad_token_id"]) == (tok.cls_token_id, tok.sep_token_id, 0)
    gen = json.loads((run.path / "model" / "generation_config.json").read_text())
    assert gen["decoder_start_token_id"] == tok.cls_token_id and gen["eos_token_id"] == tok.sep_token_id
    logged = [json.loads(line) for line in (run.path / "metrics.jsonl").read_text().splitlines()]
    train_losses = [r["loss"] for r in logged if "loss" in r]
    assert train_losses[-1] < train_losses[0]
    p = deltatune.load(run.path)
    assert type(p.model).__name__ == "EncoderDecoderModel"
    assert p.metrics(Dataset.from_list(_pairs(6, 2)))["loss"] == pytest.approx(run.metrics["validation"]["loss"], abs=1e-6)
    assert len(p.predict(["red tree"])) == 1


def test_bert2bert_refuses_adapters_clearly(tiny_model_dir, tmp_path):
    cfg = _config(tiny_model_dir, tmp_path, decoder=tiny_model_dir)
    cfg["delta"] = {"method": "lora"}
    with pytest.raises(DeltatuneError, match="cross-attention.*delta.method full"):
        deltatune.finetune(cfg, verbose=False)
    assert not (tmp_path / "run").exists()


def test_decoder_and_encoder_decoder_read_rows_alike(tiny_t5_dir):
    """Both families share PromptedColumns: same columns, references and scores; their own default templates."""
    from deltatune.tasks.language_modeling import TranslationTask

    data = {"prompt_template": "{source} ({target_lang})", "target_column": "de"}
    dec = TranslationTask(build_config({"task": "translation", "data": data}))
    s2s, _ = _task(tiny_t5_dir, **data)
    row = {"source": "red house", "de": "rotes Haus"}
    assert dec.messages(row, 1, "x")[-2:] == [
        {"role": "user", "content": "red house (German)"},
        {"role": "assistant", "content": "rotes Haus"},
    ]
    assert s2s.source_texts(Dataset.from_list([row]), "x") == ["red house (German)"]
    assert dec.references(row) == s2s.references(row) == ["rotes Haus"]
    assert dec.score(["rotes Haus"], [["rotes Haus"]]) == s2s.score(["rotes Haus"], [["rotes Haus"]])
    assert dec.rows_from_texts(["a"])[0] == s2s.rows_from_texts(["a"])[0] == {"source": "a", "de": ""}
    with pytest.raises(DeltatuneError, match=r"x: row 3 has an empty 'de'"):
        dec.messages({"source": "a", "de": " "}, 3, "x")
    plain = TranslationTask(build_config({"task": "translation"}))
    assert plain.template.startswith("Translate the following text") and _task(tiny_t5_dir)[0].template == "{source}"
