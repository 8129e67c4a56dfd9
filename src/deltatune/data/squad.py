"""SQuAD v1.1 / v2.0 JSON (``{"data": [{"title", "paragraphs": [{"context", "qas": [...]}]}]}``) as flat rows.

Each question becomes one row ``{"id", "title", "context", "question", "answers":
{"text": [...], "answer_start": [...]}}`` (the layout of the Hugging Face ``squad``
dataset); unanswerable v2.0 questions (``is_impossible``) have empty answer lists.
Reference: Rajpurkar et al. (2016, 2018), SQuAD v1.1 and v2.0.
"""

from __future__ import annotations

from typing import Any

from deltatune.errors import DeltatuneError


def is_squad(obj: Any) -> bool:
    """True for a parsed JSON object in SQuAD's nested layout."""
    return (
        isinstance(obj, dict)
        and isinstance(obj.get("data"), list)
        and bool(obj["data"])
        and isinstance(obj["data"][0], dict)
        and "paragraphs" in obj["data"][0]
    )


def flatten_squad(obj: dict[str, Any], source: str) -> list[dict[str, Any]]:
    """One row per question, in file order.

    Raises:
        DeltatuneError: a paragraph without ``context`` or a question without ``question``,
            naming the article and question numbers.
    """
    rows = []
    for a, article in enumerate(obj["data"], start=1):
        for p, para in enumerate(article.get("paragraphs", []), start=1):
            context = para.get("context")
            if not isinstance(context, str):
                raise DeltatuneError(f"{source}: article {a} paragraph {p} has no 'context' text")
            for q, qa in enumerate(para.get("qas", []), start=1):
                if not isinstance(qa.get("question"), str):
                    raise DeltatuneError(f"{source}: article {a} paragraph {p} question {q} has no 'question' text")
                answers = [] if qa.get("is_impossible") else qa.get("answers", [])
                rows.append(
                    {
                        "id": str(qa.get("id", f"{a}-{p}-{q}")),
                        "title": str(article.get("title", "")),
                        "context": context,
                        "question": qa["question"],
                        "answers": {
                            "text": [str(x["text"]) for x in answers],
                            "answer_start": [int(x["answer_start"]) for x in answers],
                        },
                    }
                )
    return rows
