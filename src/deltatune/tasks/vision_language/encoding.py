"""Conversations with images → token ids with assistant-only labels, through the model's processor.

The conversation is rendered with the processor's chat template (or ``data.chat_template``),
which writes the model's image placeholder for each image part (``<image>``, ``<|image_pad|>``,
``<start_of_image>``, ...). The processor then expands each placeholder into the model's image
tokens (Idefics3/SmolVLM: ``<fake_token_around_image>``, ``<row_i_col_j>``, ``<global-img>`` and
``<image>`` runs; Qwen2-VL: ``<|image_pad|>`` runs sized by the image's patch grid; LLaVA:
``<image>`` runs) and tokenizes the result.

Which tokens are trained, as for text chat SFT (:class:`deltatune.tasks.chat_format.ChatEncoder`):
the template is rendered prefix by prefix (the conversation up to each assistant turn with the
generation prompt, then with the turn), which gives the characters of each assistant turn; the
processor's text-replacement offsets (``return_text_replacement_offsets``) carry those characters
through the placeholder expansion and its offset mapping gives the tokens. Each assistant turn is
trained through its last EOS token; when its rendering has none, one is inserted after it and
trained. Every other token is -100, and image tokens never train, even inside an assistant turn:
the tokens of every placeholder expansion, the processor's ``image_token_id`` and the tokens its
``mm_token_type_ids`` marks. A single BOS starts the sequence when the tokenizer uses one and the
template does not write it.

Truncation to ``data.max_seq_length`` keeps the beginning; a conversation whose images would be
cut (the model needs all of an image's tokens) or with no trained token left is dropped and
counted (:class:`VisionEncodeStats`).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any


from deltatune.errors import DeltatuneError
from deltatune.tasks.chat_format import IGNORE_INDEX, NAMED_TEMPLATES, EncodeStats, assistant_turns, render_chat

# processor outputs that are never per-token sequences
_NOT_PER_TOKEN = ("input_ids", "offset_mapping", "text_replacement_offsets")


@dataclass
class VisionEncodeStats(EncodeStats):
    """:class:`EncodeStats` plus the images seen and the conversations dropped because
    ``data.max_seq_length`` would cut an image's tokens."""

    images: int = 0
    dropped_image_cut: int = 0


def _first_line(e: Exception) -> str:
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__


class VisionChatEncoder:
    """Turns (messages, images) into model inputs with assistant-only labels (see the module doc).

    Args:
        processor: the model's ``AutoProcessor`` (a tokenizer, an image processor, a chat template).
        template: ``None`` (the processor's chat template) or a Jinja chat template string that
            writes an image placeholder for ``{"type": "image"}`` parts.
        max_seq_length: sequences are cut to this many tokens.

    Raises:
        DeltatuneError: no chat template, a text-only named template (chatml, alpaca: they cannot
            place images), or a tokenizer without an EOS token.
    """

    def __init__(self, processor, template: str | None, max_seq_length: int):
        self.processor = processor
        self.tok = processor.tokenizer
        self.max_len = max_seq_length
        if template in NAMED_TEMPLATES:
            raise DeltatuneError(
                f"data.chat_template {template!r} is a text-only template that cannot place images; leave it unset to use "
                "the model's own, or give a Jinja template that writes the image placeholder"
            )
        chosen = template if template is not None else processor.chat_template
        if isinstance(chosen, dict):  # processors with several named templates
            chosen = chosen.get("default")
        if not chosen:
            raise DeltatuneError(
                "the model's processor has no chat template; set data.chat_template to a Jinja template that writes "
                "the model's image placeholder for image parts"
            )
        if "{{" not in chosen and "{%" not in chosen:
            raise DeltatuneError(f"data.chat_template {chosen[:40]!r} is not a Jinja chat template; leave it unset to use the model's own")
        self.template = chosen
        self.eos_id = self.tok.eos_token_id
        if self.eos_id is None:
            raise DeltatuneError("the tokenizer has no EOS token, so generation could never stop; use a chat (instruct) model")
        probe = self.tok("a")["input_ids"]
        bos = self.tok.bos_token_id
        self.bos_id = bos if bos is not None and probe[:1] == [bos] else None
        image_id = getattr(processor, "image_token_id", None)
        self.image_ids = {image_id} if isinstance(image_id, int) else set()
        self.image_keys = set(getattr(processor.image_processor, "model_input_names", ()) or ())

    def render(self, messages: list[dict[str, Any]], add_generation_prompt: bool) -> str:
        """The chat template applied to ``messages`` as text.

        Raises:
            DeltatuneError: the template is not valid Jinja or fails on these messages.
        """
        return render_chat(self.processor, messages, self.template, add_generation_prompt)

    def assistant_spans(self, messages: list[dict[str, Any]]) -> tuple[str, list[tuple[int, int]]]:
        """The rendered conversation and the character span ``[start, end)`` of each assistant turn.

        Raises:
            DeltatuneError: the template does not render a conversation as a prefix of its continuation.
        """
        turns = list(assistant_turns(self.render, messages, "give data.chat_template"))
        text = self.render(messages, add_generation_prompt=False)
        if turns and not text.startswith(turns[-1][1]):
            raise DeltatuneError("the chat template does not render conversations incrementally; give data.chat_template")
        return text, [(len(prompt), len(full)) for prompt, full in turns]

    def _process(self, text: str, images: list, where: str) -> tuple[dict[str, list], list[bool], list[tuple[int, int]], list[dict]]:
        """Run the processor on one rendered conversation.

        Returns:
            (per-token lists by key: ``input_ids``, ``attention_mask`` and any other per-token
            output such as ``mm_token_type_ids``; whether each token is an image token; each
            token's character span in the expanded text; the text-replacement offsets).
        """
        try:
            out = self.processor(
                text=[text], images=[images] if images else None, add_special_tokens=False,
                return_offsets_mapping=True, return_text_replacement_offsets=True,
            )
        except (ValueError, TypeError, IndexError) as e:
            raise DeltatuneError(
                f"{where}: the processor refused the conversation ({_first_line(e)}); check that each image part is one image"
            ) from None
        ids = [int(x) for x in out["input_ids"][0]]
        seqs = {"input_ids": ids}
        for key, value in out.items():
            if key in _NOT_PER_TOKEN or key in self.image_keys or not isinstance(value, list) or len(value) != 1:
                continue
            if isinstance(value[0], list) and len(value[0]) == len(ids):
                seqs[key] = [int(x) for x in value[0]]
        offsets = [tuple(o) for o in out["offset_mapping"][0]]
        replaced = list((out.get("text_replacement_offsets") or [[]])[0] or [])
        is_image = [t in self.image_ids for t in ids]
        for r in replaced:
            start, end = r["new_span"]
            for pos, (a, b) in enumerate(offsets):
                if a < end and b > start:
                    is_image[pos] = True
        for pos, kind in enumerate(seqs.get("mm_token_type_ids", ())):
            is_image[pos] = is_image[pos] or kind != 0
        return seqs, is_image, offsets, replaced

    @staticmethod
    def _expanded(char: int, replaced: list[dict]) -> int:
        """Where character ``char`` of the rendered text lands after the placeholder expansions."""
        ends = [r["span"][1] for r in replaced]
        gained = [0] + [r["new_span"][1] - r["span"][1] for r in replaced]
        return char + gained[bisect.bisect_right(ends, char)]

    def _insert(self, seqs: dict[str, list], is_image: list[bool], labels: list[int], pos: int, token: int, trained: bool) -> None:
        """Insert ``token`` at ``pos`` in every per-token sequence (attended, text)."""
        for key, seq in seqs.items():
            seq.insert(pos, token if key == "input_ids" else 1 if key == "attention_mask" else 0)
        is_image.insert(pos, False)
        labels.insert(pos, token if trained else IGNORE_INDEX)

    def encode(
        self, messages: list[dict[str, Any]], images: list, stats: VisionEncodeStats | None = None, where: str = "data"
    ) -> dict[str, list[int]] | None:
        """One conversation as per-token lists (``input_ids``, ``attention_mask``, ``labels``, and the
        processor's other per-token outputs), or ``None`` when it is dropped (counted in ``stats``).

        Args:
            messages: normalised messages (:func:`deltatune.tasks.vision_language.conversation.row_conversation`).
            images: the decoded images (PIL, RGB), one per image part, in order.
            where: names the row in messages.

        Raises:
            DeltatuneError: the template fails or renders non-incrementally; the processor refuses
                the text and images (e.g. a count mismatch), naming ``where``.
        """
        st = stats if stats is not None else VisionEncodeStats()
        text, spans = self.assistant_spans(messages)
        seqs, is_image, offsets, replaced = self._process(text, images, where)
        ids = seqs["input_ids"]
        labels = [IGNORE_INDEX] * len(ids)
        turns = []
        for start, end in spans:
            s, e = self._expanded(start, replaced), self._expanded(end, replaced)
            turns.append([p for p, (a, b) in enumerate(offsets) if a < e and b > s])
        inserts = []
        for positions in turns:
            if not positions:
                continue
            eos_at = [p for p in positions if ids[p] == self.eos_id]
            last = eos_at[-1] if eos_at else positions[-1]
            for p in positions:
                if p <= last and not is_image[p]:
                    labels[p] = ids[p]
            if not eos_at:
                inserts.append(last + 1)
        for pos in reversed(inserts):  # from the end, so that earlier positions stay valid
            self._insert(seqs, is_image, labels, pos, self.eos_id, trained=True)
        st.eos_appended += int(bool(inserts))
        ids = seqs["input_ids"]
        if self.bos_id is not None:
            if ids[:1] != [self.bos_id]:
                self._insert(seqs, is_image, labels, 0, self.bos_id, trained=False)
            elif ids[1:2] == [self.bos_id]:
                st.double_bos += 1
        st.examples += 1
        st.images += len(images)
        if len(labels) > self.max_len:
            if any(is_image[self.max_len :]):
                st.dropped_image_cut += 1
                return None
            st.truncated += 1
            seqs = {k: v[: self.max_len] for k, v in seqs.items()}
            labels = labels[: self.max_len]
        n_trained = sum(1 for x in labels if x != IGNORE_INDEX)
        if n_trained == 0:
            st.dropped_no_trained_tokens += 1
            return None
        st.trained_tokens += n_trained
        st.total_tokens += len(labels)
        return {**seqs, "labels": labels}

    def prompt(self, messages: list[dict[str, Any]], images: list, where: str = "data") -> dict[str, list[int]]:
        """Per-token lists of a conversation followed by the assistant generation prompt (generation)."""
        text = self.render(messages, add_generation_prompt=True)
        seqs, is_image, _, _ = self._process(text, images, where)
        if self.bos_id is not None and seqs["input_ids"][:1] != [self.bos_id]:
            self._insert(seqs, is_image, [], 0, self.bos_id, trained=False)
        return seqs
