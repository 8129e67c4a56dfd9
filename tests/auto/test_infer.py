"""Task inference from columns and values, with the tie-breaks, and the --task override."""

import pytest

from deltatune.auto import infer_task
from deltatune.errors import DeltatuneError

LONG = "word " * 80


def _rows(**cols):
    n = len(next(iter(cols.values())))
    return [{k: v[i] for k, v in cols.items()} for i in range(n)], list(cols)


def infer(family=None, task=None, **cols):
    rows, names = _rows(**cols)
    return infer_task(rows, names, family=family, task=task, source="t.csv")


def test_classification_by_usual_names():
    inf = infer(review=["a fine film", "dull", "great fun", "awful"], sentiment=["pos", "neg", "pos", "neg"])
    assert inf.task == "text-classification"
    assert inf.settings == {"data.text_column": "review", "data.label_column": "sentiment"}
    assert len(inf.reasons) == 3 and "review" in inf.reasons[1] and "sentiment" in inf.reasons[2]


def test_classification_by_values_when_names_are_unknown():
    inf = infer(msg_id=[str(i) for i in range(8)], body_txt=[f"longer message number {i}" for i in range(8)], y=["a", "b"] * 4)
    assert inf.task == "text-classification"
    assert inf.settings["data.text_column"] == "body_txt"  # the longest strings, not the ids
    assert inf.settings["data.label_column"] == "y"  # few distinct values; the ids are all distinct


def test_multi_label_lists_and_separators():
    lists = infer(text=["a", "b", "c", "d"], labels=[["x", "y"], ["x"], ["y"], []])
    assert lists.task == "text-classification" and lists.settings["data.multi_label"] is True
    joined = infer(text=["a", "b", "c", "d"], category=["sports;politics", "sports", "politics", "tech;sports"])
    assert joined.settings["data.label_separator"] == ";" and joined.settings["data.multi_label"] is True
    # a comma inside ordinary single labels (every value distinct after splitting) is not a separator
    single = infer(text=["a", "b", "c", "d"], label=["yes, sure", "no", "yes, sure", "no"])
    assert "data.label_separator" not in single.settings


def test_text_pairs():
    inf = infer(premise=["a man eats", "a dog runs"], hypothesis=["someone eats", "a cat"], label=["entail", "contra"])
    assert inf.settings["data.text_column"] == "premise" and inf.settings["data.text_pair_column"] == "hypothesis"


def test_token_classification_beats_the_text_and_label_rule():
    inf = infer(
        text=["EU rejects it", "Peter runs"], tokens=[["EU", "rejects", "it"], ["Peter", "runs"]],
        ner_tags=[["B-ORG", "O", "O"], ["B-PER", "O"]], label=["x", "y"],
    )
    assert inf.task == "token-classification"
    assert inf.settings == {"data.tokens_column": "tokens", "data.tags_column": "ner_tags"}


def test_conll_file(tmp_path):
    from deltatune.data import load_table

    path = tmp_path / "eng.train"
    path.write_text("-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\nPeter NNP B-NP B-PER\nruns VBZ B-VP O\n")
    ds = load_table(str(path))
    inf = infer_task(ds.to_list(), ds.column_names)
    assert inf.task == "token-classification"


def test_question_answering_extractive_or_generative():
    squad = {"text": ["Paris"], "answer_start": [0]}
    inf = infer(question=["where?", "where?"], context=["Paris is big", "Paris is big"], answers=[squad, squad])
    assert inf.task == "question-answering"
    assert inf.settings["data.answers_column"] == "answers"
    gen = infer(query=["where?", "who?"], passage=["Paris is big", "Ann came"], answer=["Paris", "Ann"])
    assert gen.task == "generative-qa" and gen.settings["data.target_column"] == "answer"
    assert "{passage}" in gen.settings["data.prompt_template"] and "{query}" in gen.settings["data.prompt_template"]
    assert "answer_start" in gen.reasons[0]


@pytest.mark.parametrize(
    "cols,fmt",
    [
        ({"instruction": ["do x"], "input": [""], "output": ["done"]}, "alpaca"),
        ({"messages": [[{"role": "user", "content": "hi"}]]}, "messages"),
        ({"conversations": [[{"from": "human", "value": "hi"}]]}, "messages"),
        ({"prompt": ["2+2="], "completion": ["4"]}, "prompt_completion"),
    ],
)
def test_instruction_formats(cols, fmt):
    inf = infer(**cols)
    assert inf.task == "instruction" and inf.settings == {"data.format": fmt}


def test_source_target_summarization_vs_translation():
    summ = infer(source=[LONG, LONG + "more"], target=["short one", "short two"])
    assert summ.task == "summarization" and "ratio" in summ.reasons[0]
    assert summ.settings["data.target_column"] == "target" and "data.prompt_template" not in summ.settings
    trans = infer(src=["the house is small", "I like tea"], tgt=["das Haus ist klein", "ich mag Tee"])
    assert trans.task == "translation"
    assert "{src}" in trans.settings["data.prompt_template"] and trans.settings["data.target_column"] == "tgt"
    # an encoder-decoder reads the plain source (the seq2seq template), a decoder an instruction prompt
    assert infer(family="encoder-decoder", src=["the house is small"], tgt=["das Haus ist klein"]).settings["data.prompt_template"] == "{src}"
    langs = infer(en=["the house is small", "I like tea"], fr=["la maison est petite", "j'aime le thé"])
    assert langs.task == "translation" and langs.settings["data.target_lang"] == "French"
    # a list of sentences is a document, whatever the lengths
    doc = infer(source=[["One.", "Two."], ["Three.", "Four."]], target=["x y", "z w"])
    assert doc.task == "summarization"


def test_summarization_on_an_encoder_is_extractive():
    inf = infer(family="encoder", document=[LONG, LONG], summary=["short", "short"])
    assert inf.task == "extractive-summarization"
    assert inf.settings == {"data.text_column": "document", "data.target_column": "summary"}
    assert infer(family="decoder", document=[LONG, LONG], summary=["s", "s"]).task == "summarization"


def test_raw_text_depends_on_the_model_family():
    cols = {"text": ["once upon a time", "there was a king", "and a queen"], "id": ["1", "2", "3"]}
    assert infer(**cols).task == "causal-lm"
    assert infer(family="decoder", **cols).task == "causal-lm"
    enc = infer(family="encoder", **cols)
    assert enc.task == "masked-lm" and enc.settings == {"data.text_column": "text"}


def test_task_override_keeps_the_column_mapping():
    inf = infer(task="text-classification", content=["a", "b"], category=["x", "y"])
    assert inf.task == "text-classification"
    assert inf.settings["data.text_column"] == "content" and inf.settings["data.label_column"] == "category"
    assert "--task" in inf.reasons[0]
    # override to a task the columns would not suggest: the column mapping for that task
    summ = infer(task="summarization", src=["the house is small"], tgt=["das Haus"])
    assert summ.task == "summarization" and "{src}" in summ.settings["data.prompt_template"]
    # nothing to map: the task's defaults
    assert infer(task="token-classification", a=["x"], b=["y"]).settings == {}


def test_cannot_infer_names_the_columns_and_the_flags():
    with pytest.raises(DeltatuneError) as e:
        infer(x=[1.0, 2.0], y=[3, 4])
    msg = str(e.value)
    assert "'x', 'y'" in msg and "--task" in msg and "--text-column" in msg and "\n" not in msg


def test_continuous_labels_are_refused():
    with pytest.raises(DeltatuneError, match="regression"):
        infer(text=["a", "b", "c"], label=[0.25, 1.5, 3.75])


def test_few_shot_is_chosen_only_when_every_class_is_small():
    from deltatune.auto.infer import FEW_SHOT_MAX_PER_CLASS, few_shot_reason

    assert "contrastive" in few_shot_reason(["a"] * 8 + ["b"] * 8)
    assert few_shot_reason(["a"] * 8 + ["b"] * (FEW_SHOT_MAX_PER_CLASS + 1)) is None  # one big class: standard
    assert few_shot_reason(["a"] * 5) is None and few_shot_reason(None) is None  # one class; multi-label
