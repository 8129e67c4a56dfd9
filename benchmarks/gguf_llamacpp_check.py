"""Does llama.cpp run what ``write_gguf`` writes? The packaged SmolLM2, f16 GGUF, greedy chat.

Exports the packaged SmolLM2-135M-Instruct (float32 weights) with
``deltatune.models.gguf_write.write_gguf``, then compares, for a few chat prompts:

- token ids: transformers' tokenizer on the rendered chat prompt vs ``llama_cpp.Llama.tokenize``
  of the same text (``special=True``: ``<|im_start|>`` is one control token);
- the next-token logits of the prompt (max absolute difference, and whether the argmax agrees);
- greedy continuations of ``--tokens`` tokens: transformers' ``generate`` on the float32 model vs
  llama.cpp (``temperature=0``, ``top_k=1``) on the f16 GGUF, as token ids;
- ``create_chat_completion``, which renders the chat template stored in the GGUF (checks that
  the template survives the trip and that llama.cpp stops at ``<|im_end|>``).

llama.cpp's Python binding is not a project dependency: it builds llama.cpp from source
(``pip install llama-cpp-python``, cmake + a C++ compiler, ~30 CPU-minutes). Usage:

    HF_HUB_OFFLINE=1 python benchmarks/gguf_llamacpp_check.py [--dtype f16] [--tokens 16] [--out result.json]

Prints one JSON object (``RESULT {...}``) and writes it to ``--out`` when given.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "What is 12 plus 30?",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtype", default="f16", choices=["f16", "f32", "q8_0"])
    ap.add_argument("--tokens", type=int, default=16, help="greedy tokens generated per prompt")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    try:
        import llama_cpp
    except ImportError as e:
        raise SystemExit(f"llama_cpp is not importable ({e}): pip install llama-cpp-python (builds llama.cpp)")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from deltatune.models import resolve_model
    from deltatune.models.gguf_write import write_gguf

    folder = resolve_model("smollm2")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    result: dict = {"llama_cpp_version": llama_cpp.__version__, "dtype": args.dtype, "prompts": []}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        summary = write_gguf(model, tok, Path(tmp) / f"smollm2-{args.dtype}.gguf", dtype=args.dtype)
        result["export_s"] = round(time.perf_counter() - t0, 2)
        result["export"] = {k: summary[k] for k in ("tensors", "bytes", "tokenizer_pre")}
        t0 = time.perf_counter()
        llm = llama_cpp.Llama(
            model_path=summary["path"], n_ctx=512, n_threads=args.threads, logits_all=True, seed=0, verbose=False
        )
        result["llama_load_s"] = round(time.perf_counter() - t0, 2)
        for prompt in PROMPTS:
            result["prompts"].append(_compare(prompt, model, tok, llm, args.tokens))
    result["all_ids_equal"] = all(p["prompt_ids_equal"] for p in result["prompts"])
    result["all_greedy_equal"] = all(p["greedy_equal"] for p in result["prompts"])
    line = json.dumps(result, ensure_ascii=False)
    print("RESULT " + line)
    if args.out:
        args.out.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    sys.exit(0 if result["all_ids_equal"] else 1)


def _compare(prompt: str, model, tok, llm, n_tokens: int) -> dict:
    """One chat prompt through both runtimes; see the module docstring for what is compared."""
    import numpy as np
    import torch

    messages = [{"role": "user", "content": prompt}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    hf_ids = tok(text)["input_ids"]
    cpp_ids = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    with torch.no_grad():
        hf_last = model(torch.tensor([hf_ids])).logits[0, -1].numpy()
        want = model.generate(torch.tensor([hf_ids]), max_new_tokens=n_tokens, do_sample=False)[0, len(hf_ids):].tolist()
    llm.reset()
    llm.eval(hf_ids)
    cpp_last = np.asarray(llm.scores[llm.n_tokens - 1])
    got: list[int] = []
    llm.reset()
    for token in llm.generate(hf_ids, temp=0.0, top_k=1, reset=True):
        got.append(int(token))
        if len(got) >= n_tokens or token == llm.token_eos():
            break
    chat = llm.create_chat_completion(messages=messages, max_tokens=n_tokens, temperature=0.0, top_k=1)
    return {
        "prompt": prompt,
        "prompt_ids_equal": list(cpp_ids) == hf_ids,
        "n_prompt_tokens": len(hf_ids),
        "last_logits_max_abs_diff": round(float(np.abs(cpp_last - hf_last).max()), 4),
        "last_logits_argmax_equal": int(cpp_last.argmax()) == int(hf_last.argmax()),
        "greedy_equal": got == want,
        "transformers": tok.decode(want, skip_special_tokens=True),
        "llama_cpp": tok.decode(got, skip_special_tokens=True),
        "llama_cpp_chat_completion": chat["choices"][0]["message"]["content"],
        "chat_finish_reason": chat["choices"][0]["finish_reason"],
    }


if __name__ == "__main__":
    main()
