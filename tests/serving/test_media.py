"""Image, audio and speech-recognition runs over HTTP: ``/v1/predict`` takes each file's content (base64,
a data URL or ``{"image"|"audio": ...}``), never a path on the server.

One real ``deltatune serve`` process serves 1-step runs of image-classification (tiny ViT),
audio-classification (tiny Whisper encoder), speech-recognition (tiny Whisper with the packaged
tokenizer; skipped without it) and a text classifier, with small upload and body limits. Its
temporary folder is the test's own, so that the uploads' files can be seen to go.
"""

from __future__ import annotations

import base64
import csv
import json
import os
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
from PIL import Image

import deltatune
from tests.helpers import predictions_close
from tests.serving.server_process import start_server

MAX_UPLOAD = 20_000  # serve --max-upload-bytes
COLOURS = [(220, 30, 30), (30, 30, 220), (200, 40, 60), (40, 60, 200)]


def _csv(path: Path, header: tuple[str, str], rows) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def _tones(folder: Path, n: int, seconds=(0.3, 0.45), rate: int = 8000) -> list[Path]:
    """``n`` 8 kHz tones alternately 300 Hz and 2,500 Hz, lengths from ``seconds``."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        t = np.arange(int(rate * seconds[i % len(seconds)])) / rate
        x = 0.5 * np.sin(2 * np.pi * (300 if i % 2 == 0 else 2500) * (1 + 0.01 * i) * t)
        path = folder / f"tone-{i}.wav"
        sf.write(str(path), x.astype(np.float32), rate)
        out.append(path)
    return out


def _train(config: dict) -> Path:
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return deltatune.finetune(config, verbose=False).path
    finally:
        torch.set_num_threads(n)


def _config(task: str, model_dir: str, train: Path, out: Path, data: dict | None = None, **sections) -> dict:
    return {
        "task": task, "output_dir": str(out), "seed": 3, "model": {"name_or_path": model_dir, **sections.pop("model", {})},
        "data": {"train_file": str(train), "validation_file": str(train), **(data or {})},
        "train": {"per_device_train_batch_size": 4, "max_steps": 1, "progress_bar": False},
        "eval": {"eval_strategy": "no", **sections.pop("eval", {})},
    }


@pytest.fixture(scope="module")
def media(tiny_vit_dir, tiny_whisper_dir, classifier_run, request, tmp_path_factory) -> dict:
    """{"image"|"audio"|"asr": (run folder, files to predict)} (asr only with whisper-tiny-en), and "text": run."""
    d = tmp_path_factory.mktemp("media")
    images = []
    for i, colour in enumerate(COLOURS):
        (d / "img").mkdir(exist_ok=True)
        images.append(d / "img" / f"{i}.png")
        Image.new("RGB", (32, 32), colour).save(images[-1])
    train = _csv(d / "images.csv", ("image", "label"), [(str(p), ("red", "blue")[i % 2]) for i, p in enumerate(images)])
    runs = {"image": (_train(_config("image-classification", tiny_vit_dir, train, d / "image_run")), images)}
    clips = _tones(d / "wav", 4)
    train = _csv(d / "audio.csv", ("audio", "label"), [(str(p), ("low", "high")[i % 2]) for i, p in enumerate(clips)])
    runs["audio"] = (_train(_config("audio-classification", tiny_whisper_dir, train, d / "audio_run", {"max_audio_seconds": 0.5})), clips)
    try:
        asr_dir = request.getfixturevalue("tiny_whisper_asr_dir")
    except pytest.skip.Exception:
        asr_dir = None
    if asr_dir is not None:
        train = _csv(d / "asr.csv", ("audio", "text"), [(str(p), ("low tone", "high tone")[i % 2]) for i, p in enumerate(clips)])
        cfg = _config("speech-recognition", asr_dir, train, d / "asr_run", {"max_audio_seconds": 0.6, "max_target_length": 8},
                      model={"dropout": 0.0}, eval={"max_new_tokens": 4})
        runs["asr"] = (_train(cfg), clips)
    runs["text"] = (classifier_run, [])
    return runs


@pytest.fixture(scope="module")
def server(media, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("server_tmp")
    args = [f"{name}={run}" for name, (run, _) in media.items()]
    srv = start_server(
        [*args, "--max-upload-bytes", str(MAX_UPLOAD), "--max-body-bytes", "200000", "--max-inputs", "8"],
        tmp_path_factory.mktemp("server") / "serve.log", env={"TMPDIR": str(tmp), "OMP_NUM_THREADS": "1"},
    )
    srv.tmp = tmp
    yield srv
    srv.stop()


def post(server, body):
    return httpx.post(f"{server.url}/v1/predict", json=body, timeout=60)


def b64(path_or_bytes) -> str:
    data = path_or_bytes if isinstance(path_or_bytes, bytes) else Path(path_or_bytes).read_bytes()
    return base64.b64encode(data).decode()




def _uploads_left(server) -> list[str]:
    return [p.name for p in server.tmp.iterdir() if p.name.startswith("deltatune-upload-")]


@pytest.mark.parametrize("name", ["image", "audio", "asr"])
def test_uploads_predict_as_deltatune_predict_does_on_the_same_files(server, media, name):
    if name not in media:
        pytest.skip("whisper-tiny-en not available")
    run, files = media[name]
    kind = "image" if name == "image" else "audio"
    mime = "image/png" if kind == "image" else "audio/wav"
    # the three forms: bare base64, a data URL, {"image"|"audio": ...}; one input alone too
    inputs = [b64(files[0]), f"data:{mime};base64,{b64(files[1])}", {kind: b64(files[2])}, base64.urlsafe_b64encode(files[3].read_bytes()).decode().rstrip("=")]
    r = post(server, {"model": name, "inputs": inputs})
    assert r.status_code == 200, r.text
    expected = json.loads(json.dumps(deltatune.load(run, device="cpu").predict([str(f) for f in files]), default=float))
    assert predictions_close(r.json()["predictions"], expected), (r.json()["predictions"], expected)
    one = post(server, {"model": name, "inputs": b64(files[1])})
    assert one.status_code == 200 and predictions_close(one.json()["predictions"], expected[1:2]), one.text
    assert _uploads_left(server) == []


def test_speech_recognition_takes_generation_parameters(server, media):
    if "asr" not in media:
        pytest.skip("whisper-tiny-en not available")
    r = post(server, {"model": "asr", "inputs": b64(media["asr"][1][0]), "parameters": {"max_new_tokens": 1}})
    assert r.status_code == 200, r.text
    assert set(r.json()["predictions"][0]) == {"generated", "ended_with_eos"}


def _png() -> bytes:
    from io import BytesIO

    buf = BytesIO()
    Image.new("RGB", (32, 32), (1, 2, 3)).save(buf, format="PNG")
    return buf.getvalue()


def _wav(seconds: float) -> bytes:
    from io import BytesIO

    buf = BytesIO()
    sf.write(buf, np.zeros(int(8000 * seconds), np.float32), 8000, format="WAV")
    return buf.getvalue()


BAD = [
    # (model, input, param, words of the message)
    ("image", "%%% not base64 %%%", "inputs[0]", "not base64"),
    ("image", "", "inputs[0]", "empty"),
    ("image", "   ", "inputs[0]", "empty"),
    ("image", "data:image/png;base64,", "inputs[0]", "empty"),
    ("image", base64.b64encode(b"hello, not an image").decode(), "inputs[0]", "not an image Pillow can read"),
    ("image", base64.b64encode(_png()[:60]).decode(), "inputs[0]", "damaged image"),
    ("image", base64.b64encode(os.urandom(MAX_UPLOAD + 1)).decode(), "inputs[0]", "--max-upload-bytes"),
    ("image", "data:audio/wav;base64," + base64.b64encode(_wav(0.1)).decode(), "inputs[0]", "this run reads image files"),
    ("image", "data:image/png," + "rawdata", "inputs[0]", "not base64"),
    ("image", "https://example.com/photo.png", "inputs[0]", "looks like a URL; the server fetches nothing"),
    ("image", {"image": base64.b64encode(b"xyz").decode()}, "inputs[0].image", "not an image"),
    ("image", {"path": base64.b64encode(_png()).decode()}, "inputs[0]", '{"image": "<base64>"}'),
    ("image", {"audio": base64.b64encode(_png()).decode()}, "inputs[0]", '{"image": "<base64>"}'),
    ("audio", base64.b64encode(_png()).decode(), "inputs[0]", "not an audio file soundfile can read"),
    ("audio", {"image": base64.b64encode(_wav(0.1)).decode()}, "inputs[0]", '{"audio": "<base64>"}'),
    ("asr", base64.b64encode(_wav(1.0)).decode(), "inputs[0]", "longer than the 0.6 s clips"),
]


@pytest.mark.parametrize(("model", "item", "param", "words"), BAD, ids=[str(i) for i in range(len(BAD))])
def test_a_bad_upload_is_a_400_naming_the_input(server, media, model, item, param, words):
    if model not in media:
        pytest.skip("whisper-tiny-en not available")
    good = b64(media[model][1][0])
    r = post(server, {"model": model, "inputs": [item, good]})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and words in error["message"], error
    assert "deltatune-upload-" not in error["message"]  # the temporary file is not the client's business
    assert _uploads_left(server) == []  # removed on errors too
    # the input at fault is named where it stands
    r = post(server, {"model": model, "inputs": [good, item]})
    assert r.status_code == 400 and r.json()["error"]["param"] == param.replace("[0]", "[1]"), r.text


def test_an_object_with_extra_keys_or_a_nested_list_is_refused(server, media):
    good = b64(media["image"][1][0])
    extra = post(server, {"model": "image", "inputs": [{"image": good, "label": "red"}]})
    nested = post(server, {"model": "image", "inputs": [[good]]})
    for r in (extra, nested):
        assert r.status_code in (400, 422) and r.json()["error"]["param"].startswith("inputs[0]"), r.text


def test_a_path_on_the_server_is_refused_and_never_opened(server, media, tmp_path):
    image = media["image"][1][0]
    assert post(server, {"model": "image", "inputs": b64(image)}).status_code == 200  # the file itself is a good image
    for path in (str(image), f"file://{image}", "~/x.png", "C:\\photos\\x.jpg"):
        r = post(server, {"model": "image", "inputs": [path]})
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == "inputs[0]" and "file path" in r.json()["error"]["message"], r.text
    # a path made only of base64 letters decodes to bytes that are no image: still never opened
    folder = Path("/tmp") / f"dtpath{os.getpid()}"
    folder.mkdir(exist_ok=True)
    try:
        name = "image" + "A" * (-len(f"{folder}/image") % 4)  # a whole number of base64 quads
        shutil.copy(image, folder / name)
        path = str(folder / name)
        assert base64.b64decode(path, validate=True)
        r = post(server, {"model": "image", "inputs": path})
        assert r.status_code == 400 and "never opens a path" in r.json()["error"]["message"], r.text
        r = post(server, {"model": "audio", "inputs": {"audio": str(media["audio"][1][0])}})
        assert r.status_code == 400 and r.json()["error"]["param"] == "inputs.audio", r.text
    finally:
        shutil.rmtree(folder)


def test_text_runs_answer_as_before_next_to_media_runs(server):
    r = post(server, {"model": "text", "inputs": ["a good film", {"text": "a bad film"}]})
    assert r.status_code == 200, r.text
    assert all(set(p) == {"label", "probabilities"} for p in r.json()["predictions"])
    long = post(server, {"model": "text", "inputs": "x" * 30_000})  # the text limit still applies to text runs
    assert long.status_code == 400 and long.json()["error"]["param"] == "inputs"


def test_the_openapi_schema_shows_the_upload_forms(server):
    schema = httpx.get(f"{server.url}/openapi.json").json()
    parts = schema["components"]["schemas"]
    assert parts["ImageUpload"]["properties"]["image"]["contentEncoding"] == "base64"
    assert parts["AudioUpload"]["properties"]["audio"]["contentEncoding"] == "base64"
    text = json.dumps(parts)
    assert "data:image/png;base64" in text and "data:audio/wav;base64" in text


def test_the_request_folder_holds_the_uploads_and_goes_with_the_request(media):
    from deltatune.serving.http_errors import ApiError
    from deltatune.serving.inputs import request_rows
    from deltatune.serving.media_inputs import request_uploads, upload_row

    task = deltatune.load(media["image"][0], device="cpu").task
    image = media["image"][1][0]
    with pytest.raises(ApiError, match=r"inputs\[1\]: not base64"):
        with request_uploads(task, MAX_UPLOAD) as uploads:
            row = upload_row(b64(image), task, uploads, "inputs[0]")
            path = Path(row[task.config.data.image_column])
            assert path.parent == uploads.folder and path.read_bytes() == image.read_bytes()  # the same bytes, in the request's folder
            upload_row("%%", task, uploads, "inputs[1]")
    assert not uploads.folder.exists()
    # without a request folder (a caller that cannot hold files) the inputs are refused, never read as paths
    with pytest.raises(ApiError, match="take uploaded image files"):
        request_rows([str(image)], task, 8, 100)
    with request_uploads(deltatune.load(media["text"][0], device="cpu").task, MAX_UPLOAD) as none:
        assert none is None  # text runs get no folder


@pytest.mark.parametrize("item", [["what is this?", "/etc/hostname"], {"messages": [{"role": "user", "content": [
    {"type": "image", "path": "/etc/hostname"}, {"type": "text", "text": "what is this?"}]}], "id": 1}])
def test_a_vision_language_run_takes_no_file_paths_over_http(item, tmp_path):
    from deltatune.config import build_config
    from deltatune.serving.http_errors import ApiError
    from deltatune.serving.inputs import request_rows
    from deltatune.tasks import create_task

    task = create_task(build_config({"task": "vision-language", "output_dir": str(tmp_path / "run")}))
    with pytest.raises(ApiError, match=r"^inputs\[0\]: a vision-language run takes a text over HTTP") as e:
        request_rows([item], task, max_inputs=4, max_chars=1000)
    assert e.value.status == 400
    assert request_rows(["what is this?"], task, max_inputs=4, max_chars=1000)[0][1]["messages"][0]["content"][-1]["text"] == "what is this?"


def test_an_image_of_too_many_pixels_is_refused_before_it_is_decoded(media):
    """A small compressed file can decode to gigabytes: the header's size is checked first (serve --max-upload-pixels)."""
    from io import BytesIO

    from deltatune.serving.http_errors import ApiError
    from deltatune.serving.media_inputs import request_uploads, upload_row

    task = deltatune.load(media["image"][0], device="cpu").task
    buf = BytesIO()
    Image.new("1", (300, 200)).save(buf, format="PNG")  # 60,000 pixels in a few hundred bytes
    with request_uploads(task, MAX_UPLOAD, max_pixels=50_000) as uploads:
        with pytest.raises(ApiError, match=r"^inputs\[0\]: the uploaded image \(\d+ bytes\) has 300 x 200 pixels, more than the "
                           r"server's limit of 50000 \(serve --max-upload-pixels\)"):
            upload_row(base64.b64encode(buf.getvalue()).decode(), task, uploads, "inputs[0]")
    with request_uploads(task, MAX_UPLOAD, max_pixels=60_000) as uploads:  # at the limit: accepted
        assert upload_row(base64.b64encode(buf.getvalue()).decode(), task, uploads, "inputs[0]")
