"""Vision-language supervised fine-tuning (``task: vision-language``, docs/vision_language.md).

Chat rows whose user turns hold images, trained on an ``AutoModelForImageTextToText`` model
(SmolVLM/Idefics3, Qwen2-VL/2.5-VL, LLaVA, Gemma 3, ...) with the loss on the assistant turns only.

- :mod:`.conversation`: a row → messages in the Hugging Face chat format (content parts) and the
  image files they name (torch-free);
- :mod:`.encoding`: messages + images → token ids (image placeholders expanded by the model's
  processor) and labels (assistant tokens only, image tokens never);
- :mod:`.batching`: padding, the processor's image tensors for a batch, batched generation;
- :mod:`.task`: the task (:class:`deltatune.tasks.vision_language.task.VisionLanguageTask`).
"""
