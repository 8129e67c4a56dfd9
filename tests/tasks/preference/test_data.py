"""Preference rows: format detection, HH-RLHF parsing on the real files, dropped rows, and the
token ids of pairs (one BOS, prompt masked, response + EOS trained, left truncation)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import datasets
import pytest

from deltatune.errors import DeltatuneError
from deltatune.tasks.chat_format import IGNORE_INDEX
from deltatune.tasks.preference.data import (
    PreferenceEncoder,
    PreferenceExample,
    PreferenceStats,
    detect_preference_format,
    hh_messages,
    read_example,
    split_dialogues,
)

HH = Path("/work/shared/data/preference/hh_rlhf_helpful_base")
IDENTICAL_IDS = {721, 2168}  # chosen == rejected in the original file, left out of pairs.jsonl


@pytest.fixture(scope="module")
def hh_pairs() -> list[dict]:
    if not (HH / "pairs.jsonl").exists():
        pytest.skip("HH-RLHF helpful-base not staged")
    with open(HH / "pairs.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def hh_original() -> list[dict]:
    if not (HH / "test.jsonl.gz").exists():
        pytest.skip("HH-RLHF helpful-base not staged")
    with gzip.open(HH / "test.jsonl.gz", "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def tok(tiny_llama_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama_dir)


class BosTokenizer:
    """The SmolLM2 tokenizer made to add a BOS (``<|endoftext|>``) as Llama-style tokenizers do."""

    def __init__(self, tok):
        self.tok = tok
        self.chat_template = tok.chat_template
        self.eos_token_id = tok.eos_token_id
        self.bos_token_id = tok.convert_tokens_to_ids("<|endoftext|>")

    def __call__(self, text, add_special_tokens=True):
        ids = self.tok(text, add_special_tokens=False)["input_ids"]
        return {"input_ids": ([self.bos_token_id] if add_special_tokens else []) + ids}

    def apply_chat_template(self, *args, **kwargs):
        return self.tok.apply_chat_template(*args, **kwargs)


def trained(tok, ids, labels) -> str:
    """The labelled tokens decoded (labels are the input ids themselves there)."""
    assert all(lab == i for i, lab in zip(ids, labels) if lab != IGNORE_INDEX)
    return tok.decode([i for i, lab in zip(ids, labels) if lab != IGNORE_INDEX])


# ---- format detection ----


def test_format_detection_and_its_error():
    assert detect_preference_format(["prompt", "chosen", "rejected", "id"], paired=True) == "pairs"
    assert detect_preference_format(["chosen", "rejected"], paired=True) == "dialogues"
    assert detect_preference_format(["q", "good", "bad"], True, "q", "good", "bad") == "pairs"
    assert detect_preference_format(["prompt", "completion", "label"], paired=False) == "unpaired"
    with pytest.raises(DeltatuneError) as e:
        detect_preference_format(["question", "answer"], paired=True, source="d.jsonl")
    msg = str(e.value)
    assert msg.startswith("d.jsonl: ") and "['answer', 'question']" in msg
    assert "'prompt', 'chosen' and 'rejected'" in msg and "data.prompt_column" in msg
    with pytest.raises(DeltatuneError, match="'completion' and 'label'"):
        detect_preference_format(["prompt", "chosen", "rejected"], paired=False)


# ---- HH-RLHF on the real files ----


def test_hh_messages_gives_pairs_jsonl_prompt_messages(hh_pairs):
    for p in hh_pairs:
        assert hh_messages(p["prompt"], f"row {p['id']}") == p["prompt_messages"], p["id"]


def test_hh_messages_small_cases():
    text = "\n\nHuman: a \n\nAssistant: b\n\nHuman: c\n\nAssistant:"
    assert hh_messages(text, "x") == [
        {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}
    ]
    assert hh_messages("  What is 2+2? ", "x") == [{"role": "user", "content": "What is 2+2?"}]
    with pytest.raises(DeltatuneError, match="x: text before the first"):
        hh_messages("Preamble\n\nHuman: hi\n\nAssistant:", "x")


def test_split_dialogues_gives_exactly_pairs_jsonl(hh_pairs, hh_original):
    # pairs.jsonl's id is the line number in test.jsonl.gz; every kept pair is checked
    assert len(hh_pairs) == len(hh_original) - len(IDENTICAL_IDS)
    for p in hh_pairs:
        o = hh_original[p["id"]]
        got = split_dialogues(o["chosen"], o["rejected"], f"row {p['id'] + 1}")
        assert got == (p["prompt_messages"], p["chosen_text"], p["rejected_text"]), p["id"]


def test_reading_the_original_file_drops_identical_and_empty_pairs(hh_original):
    st = PreferenceStats()
    kept = [read_example(o, "dialogues", i, "test.jsonl.gz", st) for i, o in enumerate(hh_original, start=1)]
    assert st.examples == 2354 and sum(x is not None for x in kept) == 2348
    assert st.dropped_identical == 2 and st.dropped_empty == 4  # PROVENANCE: ids 721, 2168; 120, 740, 1214, 2063
    assert st.dropped_rows == [121, 722, 741, 1215, 2064, 2169]
    assert kept[0].prompt == [{"role": "user", "content": "Do you know why turkeys became the official food of thanksgiving?"}]


def test_dialogues_sharing_no_prompt_are_refused_with_the_row():
    st = PreferenceStats()
    with pytest.raises(DeltatuneError) as e:
        read_example({"chosen": "Hello there", "rejected": "Goodbye"}, "dialogues", 7, "d.jsonl", st)
    assert str(e.value).startswith("d.jsonl: row 7: chosen and rejected share no prompt") and "data.prompt_column" in str(e.value)
    # differing before the final assistant turn
    c = "\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant: d"
    r = "\n\nHuman: a\n\nAssistant: x\n\nHuman: c\n\nAssistant: d"
    with pytest.raises(DeltatuneError, match="row 8: chosen and rejected share no prompt"):
        read_example({"chosen": c, "rejected": r}, "dialogues", 8, "d.jsonl", st)
    u, a1, a2 = ({"role": "user", "content": "q"}, {"role": "assistant", "content": "1"}, {"role": "assistant", "content": "2"})
    with pytest.raises(DeltatuneError, match="row 9: chosen and rejected share no prompt"):
        read_example({"chosen": [a1], "rejected": [a2]}, "dialogues", 9, "d.jsonl", st)
    with pytest.raises(DeltatuneError, match="share no prompt"):
        split_dialogues([u, a1, u, a1], [u, a2], "x")


def test_message_list_dialogues_and_sharegpt():
    chosen = [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": " Hello! "}]
    rejected = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Go away"}]
    ex = read_example({"chosen": chosen, "rejected": rejected}, "dialogues", 1, "d", PreferenceStats())
    assert ex == PreferenceExample(prompt=[{"role": "user", "content": "Hi"}], chosen="Hello!", rejected="Go away")


# ---- pairs rows ----


def test_pairs_rows_strings_and_message_lists():
    st = PreferenceStats()
    ex = read_example({"prompt": "Capital of France?", "chosen": " Paris.", "rejected": "Lyon."}, "pairs", 1, "d", st)
    assert ex.prompt == [{"role": "user", "content": "Capital of France?"}] and (ex.chosen, ex.rejected) == ("Paris.", "Lyon.")
    # UltraFeedback-style: responses are the whole conversation; only the last message is taken
    u = {"role": "user", "content": "Capital of France?"}
    row = {"prompt": [u], "chosen": [u, {"role": "assistant", "content": "Paris."}],
           "rejected": [{"role": "assistant", "content": "Lyon."}]}
    assert read_example(row, "pairs", 2, "d", st) == ex
    # an HH prompt string with configured column names and a system prompt
    row = {"q": "\n\nHuman: hi\n\nAssistant: hey\n\nHuman: 2+2?\n\nAssistant:", "good": "4", "bad": "5"}
    ex = read_example(row, "pairs", 3, "d", st, prompt_column="q", chosen_column="good", rejected_column="bad", system_prompt="Be brief.")
    assert [m["role"] for m in ex.prompt] == ["system", "user", "assistant", "user"] and ex.prompt[0]["content"] == "Be brief."
    sys_row = {"prompt": [{"role": "system", "content": "Own."}, u], "chosen": "a", "rejected": "b"}
    assert read_example(sys_row, "pairs", 4, "d", st, system_prompt="Be brief.").prompt[0]["content"] == "Own."
    assert st.examples == 4 and st.dropped_rows == []


def test_identical_and_empty_pairs_are_dropped_and_counted():
    st = PreferenceStats()
    rows = [
        {"prompt": "q", "chosen": " same ", "rejected": "same"},
        {"prompt": "q", "chosen": "a", "rejected": "   "},
        {"prompt": "q", "chosen": "", "rejected": "b"},
        {"prompt": "q", "chosen": "a", "rejected": "b"},
    ]
    kept = [read_example(r, "pairs", i, "d", st) for i, r in enumerate(rows, start=1)]
    assert [k is not None for k in kept] == [False, False, False, True]
    assert (st.dropped_identical, st.dropped_empty, st.dropped_rows, st.examples) == (1, 2, [1, 2, 3], 4)
    assert st.as_dict()["dropped_identical"] == 1


@pytest.mark.parametrize(
    "row, match",
    [
        ({"chosen": "a", "rejected": "b"}, r"d\.jsonl: row 5: 'prompt' is missing"),
        ({"prompt": None, "chosen": "a", "rejected": "b"}, r"row 5: 'prompt' is missing"),
        ({"prompt": {"x": 1}, "chosen": "a", "rejected": "b"}, r"row 5: 'prompt' must be text"),
        ({"prompt": "  ", "chosen": "a", "rejected": "b"}, r"row 5: 'prompt' is empty"),
        ({"prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "chosen": "a", "rejected": "b"},
         r"row 5: 'prompt' must end with a user turn"),
        ({"prompt": [{"role": "robot", "content": "q"}], "chosen": "a", "rejected": "b"}, r"role 'robot'"),
        ({"prompt": "q", "chosen": None, "rejected": "b"}, r"row 5: 'chosen' is missing"),
        ({"prompt": "q", "chosen": [{"role": "user", "content": "q"}], "rejected": "b"}, r"'chosen': the last message must be the assistant"),
        ({"prompt": "q", "chosen": [{"role": "user", "content": "other"}, {"role": "assistant", "content": "a"}], "rejected": "b"},
         r"'chosen': the messages before the response differ from the prompt"),
    ],
)
def test_bad_rows_are_refused_naming_the_row(row, match):
    with pytest.raises(DeltatuneError, match=match):
        read_example(row, "pairs", 5, "d.jsonl", PreferenceStats())


# ---- unpaired (kto) ----


def test_unpaired_labels():
    st = PreferenceStats()
    for value, want in [(True, True), (False, False), (1, True), (0, False), ("true", True), (" False ", False)]:
        ex = read_example({"prompt": "q", "completion": " a ", "label": value}, "unpaired", 1, "d", st)
        assert ex == PreferenceExample(prompt=[{"role": "user", "content": "q"}], completion="a", label=want)
    for value in ["yes", 2, None, "", 0.5]:
        with pytest.raises(DeltatuneError, match=r"d: row 3: 'label' is .*true \(desirable\) or false"):
            read_example({"prompt": "q", "completion": "a", "label": value}, "unpaired", 3, "d", st)
    assert read_example({"prompt": "q", "completion": " ", "label": True}, "unpaired", 4, "d", st) is None
    assert st.dropped_empty == 1 and st.dropped_rows == [4]


# ---- encoding ----


def test_a_pair_shares_its_prompt_ids_and_trains_response_and_eos(tok):
    enc = PreferenceEncoder(tok, None, 512)
    ex = PreferenceExample(prompt=[{"role": "user", "content": "Capital of France?"}], chosen="Paris.", rejected="It is Lyon, I think.")
    st = PreferenceStats()
    f = enc.encode_pair(ex, st, 1)
    prompt = enc.prompt_ids(ex.prompt)
    for side, text in (("chosen", ex.chosen), ("rejected", ex.rejected)):
        ids, labels = f[f"{side}_input_ids"], f[f"{side}_labels"]
        assert ids[: len(prompt)] == prompt and labels[: len(prompt)] == [IGNORE_INDEX] * len(prompt)
        assert trained(tok, ids, labels) == text + "<|im_end|>"
        assert ids[-1] == tok.eos_token_id and tok.decode(prompt).endswith("<|im_start|>assistant\n")
    assert enc.response_ids(ex.prompt, ex.chosen) == f["chosen_input_ids"][len(prompt) :]
    n_c, n_r = len(f["chosen_input_ids"]), len(f["rejected_input_ids"])
    assert st.total_tokens == n_c + n_r and st.trained_tokens == n_c + n_r - 2 * len(prompt)
    assert (st.truncated, st.eos_appended, st.double_bos, st.dropped_rows) == (0, 0, 0, [])


def test_exactly_one_bos_and_eos_appended_when_the_template_has_none(tok):
    btok = BosTokenizer(tok)
    template = "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\\n' }}{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}"
    enc = PreferenceEncoder(btok, template, 512)
    ex = PreferenceExample(prompt=[{"role": "user", "content": "Q"}], chosen="A", rejected="B")
    st = PreferenceStats()
    f = enc.encode_pair(ex, st, 1)
    for side in ("chosen", "rejected"):
        ids, labels = f[f"{side}_input_ids"], f[f"{side}_labels"]
        assert ids[0] == btok.bos_token_id and ids.count(btok.bos_token_id) == 1
        assert labels[-1] == ids[-1] == tok.eos_token_id
    # the template's own text after the response ("\n") stays, then the appended EOS (as ChatEncoder does)
    assert tok.decode(f["chosen_input_ids"][1:]) == "user: Q\nassistant: A\n<|im_end|>"
    assert st.eos_appended == 2 and st.double_bos == 0


def test_the_template_newline_after_eos_is_not_part_of_the_response(tok):
    enc = PreferenceEncoder(tok, None, 512)
    ids = enc.response_ids([{"role": "user", "content": "q"}], "yes")
    assert tok.decode(ids) == "yes<|im_end|>"  # the template writes "<|im_end|>\n"


def test_truncation_keeps_the_response_and_cuts_the_prompt_from_the_left(tok):
    long_prompt = [{"role": "user", "content": " ".join(f"w{i}" for i in range(200)) + " END"}]
    ex = PreferenceExample(prompt=long_prompt, chosen="Short answer.", rejected="A somewhat longer answer than the other.")
    full = PreferenceEncoder(tok, None, 4096).encode_pair(ex, PreferenceStats(), 1)
    resp_r = len(full["rejected_input_ids"]) - full["rejected_labels"].count(IGNORE_INDEX)
    prompt = full["chosen_input_ids"][: full["chosen_labels"].count(IGNORE_INDEX)]
    max_len = resp_r + 30
    st = PreferenceStats()
    f = PreferenceEncoder(tok, None, max_len).encode_pair(ex, st, 1)
    assert st.truncated == 1 and len(f["rejected_input_ids"]) == max_len
    assert trained(tok, f["chosen_input_ids"], f["chosen_labels"]) == "Short answer.<|im_end|>"
    assert trained(tok, f["rejected_input_ids"], f["rejected_labels"]) == "A somewhat longer answer than the other.<|im_end|>"
    kept = f["chosen_input_ids"][:30]
    assert kept == f["rejected_input_ids"][:30] == prompt[-30:]  # the end of the prompt, shared
    assert "END<|im_end|>\n<|im_start|>assistant\n" in tok.decode(kept) and "w0 " not in tok.decode(kept)


def test_truncation_keeps_the_bos_first(tok):
    btok = BosTokenizer(tok)
    enc = PreferenceEncoder(btok, None, 512)
    ex = PreferenceExample(prompt=[{"role": "user", "content": "x " * 100}], chosen="yes", rejected="no")
    resp = len(enc.response_ids(ex.prompt, ex.chosen))
    st = PreferenceStats()
    f = PreferenceEncoder(btok, None, resp + 6).encode_pair(ex, st, 1)
    ids = f["chosen_input_ids"]
    assert st.truncated == 1 and len(ids) == resp + 6 and ids[0] == btok.bos_token_id and ids.count(btok.bos_token_id) == 1
    assert tok.decode(ids[1:6]).endswith("<|im_start|>assistant\n")


def test_a_response_leaving_no_room_for_the_prompt_is_dropped_and_counted(tok):
    ex = PreferenceExample(prompt=[{"role": "user", "content": "q"}], chosen="ok", rejected=" ".join(["long"] * 40))
    enc = PreferenceEncoder(tok, None, 16)
    st = PreferenceStats()
    assert enc.encode_pair(ex, st, 9) is None
    assert (st.dropped_too_long, st.dropped_rows, st.truncated, st.total_tokens) == (1, [9], 0, 0)
    # exactly one prompt token fits: kept
    n = len(enc.response_ids(ex.prompt, ex.rejected))
    st = PreferenceStats()
    f = PreferenceEncoder(tok, None, n + 1).encode_pair(ex, st, 9)
    assert f is not None and f["rejected_labels"][0] == IGNORE_INDEX and f["rejected_labels"][1:] == f["rejected_input_ids"][1:]
    assert st.truncated == 1 and st.dropped_too_long == 0


def test_encode_single_for_kto(tok):
    enc = PreferenceEncoder(tok, None, 512)
    st = PreferenceStats()
    prompt = [{"role": "user", "content": "Capital of France?"}]
    f = enc.encode_single(prompt, "Paris.", st, 1)
    assert f["input_ids"][: len(enc.prompt_ids(prompt))] == enc.prompt_ids(prompt)
    assert trained(tok, f["input_ids"], f["labels"]) == "Paris.<|im_end|>"
    assert st.total_tokens == len(f["input_ids"]) and st.trained_tokens == len(enc.response_ids(prompt, "Paris."))
    before = PreferenceStats(**{k: (list(v) if isinstance(v, list) else v) for k, v in st.__dict__.items()})
    assert enc.encode_single(prompt, "Lyon.", st, 1, count=False) is not None  # a mismatched KL sequence: not counted
    assert st == before
    assert PreferenceEncoder(tok, None, 4).encode_single(prompt, "a b c d e f", st, 2) is None
    assert st.dropped_too_long == 1 and st.dropped_rows == [2]


def test_real_hh_pairs_encode(tok, hh_pairs):
    enc = PreferenceEncoder(tok, None, 256)
    st = PreferenceStats()
    feats = []
    for p in hh_pairs[:40]:
        ex = read_example(p, "pairs", p["id"] + 1, "pairs.jsonl", st)
        if ex is not None:
            feats.append(enc.encode_pair(ex, st, p["id"] + 1))
    kept = [f for f in feats if f is not None]
    assert st.examples == 40 and len(kept) + st.dropped_too_long + st.dropped_empty == 40 and kept
    for f in kept:
        assert max(len(f["chosen_input_ids"]), len(f["rejected_input_ids"])) <= 256
        assert f["chosen_labels"][-1] == f["rejected_labels"][-1] == tok.eos_token_id


# ---- the column errors and the worst examples of the tasks ----


def test_kto_column_error_advises_renaming_not_an_option():
    with pytest.raises(DeltatuneError) as e:
        detect_preference_format(["response", "desirable"], paired=False, source="k.jsonl")
    msg = str(e.value)
    assert msg.startswith("k.jsonl: cannot read KTO rows from columns ['desirable', 'response']")
    assert "rename your columns to prompt, completion and label" in msg
    assert "data.prompt_column" not in msg  # not a kto option: the config would refuse it


@pytest.mark.parametrize("task, columns", [("dpo", ["q", "good", "bad"]), ("kto", ["response", "desirable"])])
def test_the_tasks_column_errors_name_the_file(task, columns):
    import datasets

    from deltatune.config import build_config
    from deltatune.tasks import create_task

    t = create_task(build_config({"task": task}))
    ds = datasets.Dataset.from_list([{c: "x" for c in columns}])
    with pytest.raises(DeltatuneError, match=r"^my/data.jsonl: cannot read"):
        t.fit_columns(ds, "my/data.jsonl")
    with pytest.raises(DeltatuneError, match=r"^my/data.jsonl: cannot read"):
        t.examples(ds, "my/data.jsonl", PreferenceStats())


def test_worst_examples_show_response_texts_of_message_lists():
    from types import SimpleNamespace

    import numpy as np

    from deltatune.config import build_config
    from deltatune.tasks import create_task

    def msgs(text):
        return [{"role": "user", "content": "q"}, {"role": "assistant", "content": text}]

    pairs = datasets.Dataset.from_list([  # worst_examples gets the validation rows as a Dataset
        {"prompt": [{"role": "user", "content": "q"}], "chosen": msgs("1"), "rejected": [{"role": "assistant", "content": "2"}]},
        {"prompt": [{"role": "user", "content": "q"}], "chosen": msgs(" good "), "rejected": [{"role": "assistant", "content": "bad"}]},
    ])
    dpo = create_task(build_config({"task": "dpo"}))
    out = dpo.worst_examples(
        {"rewards_chosen": np.array([0.0, 1.0]), "rewards_rejected": np.array([1.0, 0.0])}, SimpleNamespace(meta=[0, 1]), pairs, 2
    )
    assert [(r["reference"], r["prediction"]) for r in out["rows"]] == [("1", "2"), ("good", "bad")]

    unpaired = datasets.Dataset.from_list([{"prompt": "q", "completion": [{"role": "assistant", "content": "yes"}], "label": True}])
    kto = create_task(build_config({"task": "kto"}))
    out = kto.worst_examples({"rewards": np.array([0.5]), "desirable": np.array([1.0])}, SimpleNamespace(meta=[0]), unpaired, 1)
    assert out["rows"][0]["prediction"] == "yes" and out["rows"][0]["reference"] == "desirable"
