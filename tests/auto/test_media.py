"""deltatune auto on image and audio classification: inference from file paths, the vision/audio
candidates and their methods, and the default model of a config without one."""

import pytest

from deltatune.auto import infer_task
from deltatune.auto.candidates import DEFAULT_MODELS, choose_candidates, count_parameters, fits_task, method_family
from deltatune.auto.infer import task_family
from deltatune.config import build_config
from deltatune.delta.registry import searched_methods
from deltatune.errors import DeltatuneError
from deltatune.models.loading import load_config


def _infer(task=None, **cols):
    n = len(next(iter(cols.values())))
    rows = [{k: v[i] for k, v in cols.items()} for i in range(n)]
    return infer_task(rows, list(cols), task=task, source="t.csv")


def test_a_class_folder_of_images_is_image_classification():
    # what the loader gives for <root>/<class>/<file>.jpg: the class name is in the path, which is not text
    inf = _infer(image=[f"/data/img/train/{c}/{i}.JPG" for i, c in enumerate(["cat", "dog"] * 4)], label=["cat", "dog"] * 4)
    assert inf.task == "image-classification"
    assert inf.settings == {"data.image_column": "image", "data.label_column": "label"}


def test_a_table_of_file_paths_infers_the_path_column_by_suffix():
    img = _infer(file=[f"pics/{i}.png" for i in range(6)], category=["a", "b", "c"] * 2)
    assert img.task == "image-classification" and img.settings["data.image_column"] == "file"
    aud = _infer(path=[f"clips/{i}.wav" for i in range(6)], speaker=["x", "y"] * 3)
    assert aud.task == "audio-classification"
    assert aud.settings == {"data.audio_column": "path", "data.label_column": "speaker"}
    multi = _infer(audio=[f"{i}.flac" for i in range(6)], labels=[["a", "b"], ["a"], ["b"]] * 2)
    assert multi.task == "audio-classification" and multi.settings["data.multi_label"] is True
    # text that merely mentions a file is still text
    assert _infer(text=["see a.jpg and the rest", "hello there", "ok then", "fine"], label=["a", "b"] * 2).task == "text-classification"


def test_file_paths_without_labels_and_forced_tasks():
    with pytest.raises(DeltatuneError, match="holds image files but no label column") as e:
        _infer(image=[f"{i}.jpg" for i in range(6)], size=[str(i) for i in range(6)])
    assert "\n" not in str(e.value)
    forced = _infer(task="audio-classification", path=[f"{i}.ogg" for i in range(4)], y=["a", "b"] * 2)
    assert forced.task == "audio-classification" and forced.settings["data.audio_column"] == "path"
    # --task with paths of another kind (or none): the task's defaults, the user's --set wins later
    assert _infer(task="image-classification", path=[f"{i}.wav" for i in range(4)], y=["a", "b"] * 2).settings == {}


def test_vision_and_audio_candidates_are_searched_with_the_encoder_methods(tiny_vit_dir, tiny_whisper_dir):
    for task, ref, family in (("image-classification", tiny_vit_dir, "vision"), ("audio-classification", tiny_whisper_dir, "audio")):
        methods = searched_methods(method_family(task_family(task)))
        assert methods == ["full", "lora"]
        kept, skipped = choose_candidates([ref], task, methods, None, None, 1000)
        assert not skipped and kept[0].family == family and kept[0].methods == methods, kept[0].notes if kept else skipped[0].notes
        assert f"{family} encoder" in kept[0].notes[0]
    # Whisper's classifier is its encoder: the decoder is not counted
    (whisper,), _ = choose_candidates([tiny_whisper_dir], "audio-classification", ["full"], None, None, 1000)
    whole, _ = count_parameters(load_config(tiny_whisper_dir))
    assert 0 < whisper.parameters < whole


def test_fits_task_by_media_family(tiny_model_dir, tiny_vit_dir):
    assert fits_task("audio", "audio-classification") is None and fits_task("vision", "image-classification") is None
    assert "needs a vision model (this is an encoder model)" in fits_task("encoder", "image-classification")
    assert "needs an audio model" in fits_task("encoder-decoder", "audio-classification")
    assert "text model" in fits_task("vision", "text-classification") and fits_task("audio", "instruction")
    kept, skipped = choose_candidates([tiny_model_dir, tiny_vit_dir], "image-classification", ["full"], None, None, 1000)
    assert [c.ref for c in kept] == [tiny_vit_dir] and "needs a vision model" in skipped[0].notes[-1]


def test_image_and_audio_tasks_default_to_their_packaged_model():
    assert build_config(None, {"task": "image-classification"}).model.name_or_path == DEFAULT_MODELS["vision"] == "dinov2-small"
    assert build_config(None, {"task": "audio-classification", "model.dropout": 0.1}).model.name_or_path == "whisper-tiny-en"
    assert build_config(None, {"task": "image-classification", "model.name_or_path": "x"}).model.name_or_path == "x"
    assert build_config(None, {"task": "text-classification"}).model.name_or_path == "minilm"


def test_auto_on_an_image_class_folder_and_an_audio_table(tiny_vit_dir, tiny_whisper_dir, tmp_path, capsys):
    import numpy as np
    import soundfile as sf
    from PIL import Image

    from deltatune.cli import main

    for split, n in (("train", 8), ("val", 4)):
        for i in range(n):
            label = ("red", "blue")[i % 2]
            (tmp_path / "img" / split / label).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (32, 32), (220, 30, 30) if label == "red" else (30, 30, 220)).save(tmp_path / "img" / split / label / f"{i}.png")
    code = main(["auto", "--train", str(tmp_path / "img" / "train"), "--validation", str(tmp_path / "img" / "val"),
                 "--models", tiny_vit_dir, "--max-steps", "2", "--n-trials", "1", "--output-dir", str(tmp_path / "a1")])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "task: image-classification" in out.out + out.err and "text column" not in out.out + out.err

    (tmp_path / "aud").mkdir()
    rows = []
    for i in range(8):
        label = ("low", "high")[i % 2]
        t = np.arange(2400) / 8000
        sf.write(str(tmp_path / "aud" / f"{i}.wav"), (0.5 * np.sin(2 * np.pi * (300 if label == "low" else 2500) * t)).astype(np.float32), 8000)
        rows.append(f"{i}.wav,{label}")
    (tmp_path / "aud" / "m.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    code = main(["auto", "--task", "audio-classification", "--train", str(tmp_path / "aud" / "m.csv"), "--models", tiny_whisper_dir,
                 "--set", "data.audio_column=path", "--set", "data.max_audio_seconds=0.3", "--max-steps", "2", "--n-trials", "1",
                 "--output-dir", str(tmp_path / "a2")])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "audio encoder" in out.out + out.err
