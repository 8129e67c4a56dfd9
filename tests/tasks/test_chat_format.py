"""Golden label-masking tests on the real SmolLM2 tokenizer and chat template.

Each test names the exact text that is trained; a prompt-masking, EOS or BOS bug changes it.
"""

import pytest

from deltatune.errors import DeltatuneError
from deltatune.tasks.chat_format import IGNORE_INDEX, ChatEncoder, EncodeStats, detect_format, row_to_messages


@pytest.fixture(scope="module")
def tok(smollm2_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir)


def trained_text(tok, ids, labels):
    """The trained tokens decoded, turn by turn (spans joined with |)."""
    spans, cur = [], []
    for i, lab in zip(ids, labels):
        if lab != IGNORE_INDEX:
            assert lab == i  # labels are the input ids themselves (the loss shifts them)
            cur.append(i)
        elif cur:
            spans.append(tok.decode(cur))
            cur = []
    if cur:
        spans.append(tok.decode(cur))
    return "|".join(spans)


def test_alpaca_trains_only_the_response_and_eos(tok):
    msgs = row_to_messages({"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"}, "alpaca", 1, "x")
    assert msgs[0]["content"] == "Add the numbers.\n\n2 and 3"
    ids, labels = ChatEncoder(tok, None, 512).encode(msgs)
    assert trained_text(tok, ids, labels) == "5<|im_end|>"
    assert labels.count(tok.eos_token_id) == 1 and tok.eos_token == "<|im_end|>"
    # everything before the response, including the generation prompt, is masked
    first = next(i for i, lab in enumerate(labels) if lab != IGNORE_INDEX)
    assert tok.decode(ids[:first]).endswith("<|im_start|>assistant\n")
    assert "Add the numbers." in tok.decode(ids[:first])


def test_multi_turn_trains_every_assistant_turn(tok):
    row = {"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."},
    ]}
    ids, labels = ChatEncoder(tok, None, 512).encode(row_to_messages(row, "messages", 1, "x"))
    assert trained_text(tok, ids, labels) == "Hello!<|im_end|>|Paris.<|im_end|>"


def test_sharegpt_and_prompt_completion(tok):
    sg = {"conversations": [{"from": "human", "value": "Q?"}, {"from": "gpt", "value": "A."}]}
    pc = {"prompt": "Q?", "completion": "A."}
    enc = ChatEncoder(tok, None, 512)
    a = enc.encode(row_to_messages(sg, "messages", 1, "x"))
    b = enc.encode(row_to_messages(pc, "prompt_completion", 1, "x"))
    assert a == b and trained_text(tok, *a) == "A.<|im_end|>"


def test_one_bos_and_eos_appended_for_templates_without_it(tok):
    # the Alpaca template ends responses with eos_token text; ChatML on a tokenizer whose EOS
    # differs from <|im_end|> would not: simulate with a template that emits no EOS
    template = "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\\n' }}{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}"
    st = EncodeStats()
    ids, labels = ChatEncoder(tok, template, 512).encode([{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}], st)
    assert st.eos_appended == 1 and labels[-1] == tok.eos_token_id and ids[-1] == tok.eos_token_id
    bos = tok.bos_token_id
    assert ids.count(bos) <= 1 if bos is not None and bos != tok.convert_tokens_to_ids("<|im_start|>") else True
    assert st.double_bos == 0


def test_truncated_away_responses_are_dropped_and_counted(tok):
    st = EncodeStats()
    enc = ChatEncoder(tok, None, 40)  # SmolLM2's template adds a ~20-token default system prompt
    long_prompt = [{"role": "user", "content": "word " * 50}, {"role": "assistant", "content": "ok"}]
    assert enc.encode(long_prompt, st) is None
    assert st.dropped_no_trained_tokens == 1 and st.truncated == 1
    short = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "a long answer " * 10}]
    ids, labels = enc.encode(short, st)
    assert len(ids) == 40 and any(lab != IGNORE_INDEX for lab in labels)


def test_format_detection_and_bad_rows():
    assert detect_format(["instruction", "input", "output"]) == "alpaca"
    assert detect_format(["messages"]) == "messages"
    assert detect_format(["prompt", "completion"]) == "prompt_completion"
    with pytest.raises(DeltatuneError, match="cannot tell"):
        detect_format(["question", "answer"])
    with pytest.raises(DeltatuneError, match="row 4 has no 'output'"):
        row_to_messages({"instruction": "x"}, "alpaca", 4, "f.json")


def test_bad_rows_are_refused_with_the_row_and_the_fix():
    with pytest.raises(DeltatuneError, match=r"f\.json: row 2 has an empty 'output'"):
        row_to_messages({"instruction": "x", "output": "  "}, "alpaca", 2, "f.json")
    with pytest.raises(DeltatuneError, match=r"row 1: 'output' must be text, got list"):
        row_to_messages({"instruction": "x", "output": ["a", "b"]}, "alpaca", 1, "f.json")
    with pytest.raises(DeltatuneError, match="has an empty 'completion'"):
        row_to_messages({"prompt": "p", "completion": ""}, "prompt_completion", 1, "f.jsonl")
    with pytest.raises(DeltatuneError, match=r"message 2 has role 'bot'"):
        row_to_messages({"messages": [{"role": "user", "content": "q"}, {"role": "bot", "content": "a"}]}, "messages", 1, "m")
    with pytest.raises(DeltatuneError, match="assistant turn before any user turn"):
        row_to_messages({"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}]}, "messages", 1, "m")
    with pytest.raises(DeltatuneError, match="no assistant turn, so nothing would be trained"):
        row_to_messages({"messages": [{"role": "user", "content": "q"}]}, "messages", 1, "m")
    with pytest.raises(DeltatuneError, match="message 2 is an empty assistant turn"):
        row_to_messages({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}]}, "messages", 1, "m")
    with pytest.raises(DeltatuneError, match="message 1 content must be text, got dict"):
        row_to_messages({"messages": [{"role": "user", "content": {"x": 1}}]}, "messages", 1, "m")
    # OpenAI-style text parts are joined, numbers become text
    parts = [{"type": "text", "text": "one "}, {"type": "text", "text": "two"}]
    msgs = row_to_messages({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": parts}]}, "messages", 1, "m")
    assert msgs[1]["content"] == "one two"
    assert row_to_messages({"prompt": "2+2?", "completion": 4}, "prompt_completion", 1, "m")[1]["content"] == "4"


def test_prediction_inputs_need_no_answer():
    assert detect_format(["instruction", "input"], with_answer=False) == "alpaca"
    assert detect_format(["prompt"], with_answer=False) == "prompt_completion"
    with pytest.raises(DeltatuneError, match="cannot tell"):
        detect_format(["instruction", "input"])  # training data must have the answers
    assert row_to_messages({"instruction": "x", "input": "y"}, "alpaca", 1, "p", with_answer=False) == [
        {"role": "user", "content": "x\n\ny"}
    ]
    assert row_to_messages({"messages": [{"role": "user", "content": "q"}]}, "messages", 1, "p", with_answer=False)[0]["content"] == "q"


def test_chat_templates_that_cannot_work_are_refused(tok):
    with pytest.raises(DeltatuneError, match="neither a template name"):
        ChatEncoder(tok, "nonsense", 64)
    with pytest.raises(DeltatuneError, match="the chat template failed: TemplateSyntaxError"):
        ChatEncoder(tok, "{% for m in messages %}{{ m['content'] }", 64)
    with pytest.raises(DeltatuneError, match="does not write the messages' content"):
        ChatEncoder(tok, "{% for m in messages %}x{% endfor %}", 64)


def test_the_counts_line_names_added_counts_and_says_when_dropped_rows_are_cut():
    from dataclasses import dataclass

    @dataclass
    class PairStats(EncodeStats):
        dropped_identical: int = 0

    st = PairStats(examples=30, trained_tokens=5, total_tokens=10, dropped_identical=23, dropped_rows=list(range(1, 24)))
    line = st.summary()
    assert line.startswith("examples 30 | truncated 0 | dropped (no trained token) 0 | EOS appended 0 | double BOS 0 | trained tokens 5 of 10 (50.0%)")
    assert "| dropped identical 23 | dropped rows 1, 2," in line and line.endswith("19, 20, ... (3 more)")
    assert EncodeStats(examples=1).summary().endswith("(0.0%)")
