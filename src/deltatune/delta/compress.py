"""Compressed full-model deltas: Δθ = θ_ft − θ_pre stored as truncated SVD factors.

For each weight matrix W (2-D), ΔW ≈ U_r diag(S_r) V_rᵀ with the smallest rank r whose
singular values keep ``energy`` of ‖ΔW‖²_F (Eckart–Young: the best rank-r approximation in
Frobenius norm), or a fixed ``rank``. The factors are stored as ``A = U_r diag(S_r)`` (m×r)
and ``B = V_rᵀ`` (r×n) in fp16, or in int8 with one fp32 scale per row (symmetric absmax
quantization, Jacob et al. 2018, arXiv:1712.05877). When the factors would not be smaller than
the dense matrix, ΔW is stored densely (fp16). Vectors (biases, norms) are stored densely;
parameters absent from the base (a new task head) are stored whole.

Storage keys in the safetensors file: ``<name>.a``, ``<name>.b`` (+ ``.a_scale``,
``.b_scale`` for int8), ``<name>.dense`` or ``<name>.full``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class CompressionStats:
    """What compression kept: matrices factored, mean rank, bytes stored vs dense fp32 model."""

    factored: int = 0
    dense: int = 0
    rank_sum: int = 0
    stored_bytes: int = 0
    full_bytes: int = 0

    @property
    def mean_rank(self) -> float:
        return self.rank_sum / self.factored if self.factored else 0.0


def _rank_for_energy(s: torch.Tensor, energy: float) -> int:
    e = s.double() ** 2
    cum = torch.cumsum(e, 0) / e.sum().clamp(min=1e-30)
    return int(torch.searchsorted(cum, torch.tensor(energy, dtype=cum.dtype)).item()) + 1


def _quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    scale = x.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127.0
    q = torch.round(x / scale).clamp(-127, 127).to(torch.int8)
    return q, scale.float()


def compress_delta(
    base: dict[str, torch.Tensor],
    tuned: dict[str, torch.Tensor],
    energy: float = 0.9,
    rank: int | None = None,
    int8: bool = False,
) -> tuple[dict[str, torch.Tensor], CompressionStats]:
    """Encode ``tuned − base`` compactly.

    Args:
        base, tuned: state dicts (name -> tensor); ``tuned`` names absent from ``base`` are new.
        energy: share of ‖ΔW‖²_F to keep per matrix, in (0, 1]; ignored when ``rank`` is set.
        rank: fixed rank per matrix (clipped to min(m, n)).
        int8: quantize the factors to int8 with per-row scales.

    Returns:
        (tensors to save, :class:`CompressionStats`).
    """
    out: dict[str, torch.Tensor] = {}
    st = CompressionStats()
    for name, w in tuned.items():
        w = w.detach().float().cpu()
        st.full_bytes += w.numel() * 4
        if name not in base:
            out[f"{name}.full"] = w.contiguous()
            st.stored_bytes += w.numel() * 4
            continue
        d = w - base[name].detach().float().cpu()
        if d.ndim != 2:
            if torch.count_nonzero(d) == 0:
                continue
            out[f"{name}.dense"] = d.half().contiguous()
            st.stored_bytes += d.numel() * 2
            continue
        if torch.count_nonzero(d) == 0:
            continue
        m, n = d.shape
        u, s, vh = torch.linalg.svd(d, full_matrices=False)
        r = min(rank, len(s)) if rank else _rank_for_energy(s, energy)
        bytes_per = 1 if int8 else 2
        factored_bytes = r * (m + n) * bytes_per + (4 * (m + r) if int8 else 0)
        if factored_bytes >= m * n * 2:
            out[f"{name}.dense"] = d.half().contiguous()
            st.dense += 1
            st.stored_bytes += m * n * 2
            continue
        a = (u[:, :r] * s[:r]).contiguous()
        b = vh[:r].contiguous()
        if int8:
            qa, sa = _quantize_rows(a)
            qb, sb = _quantize_rows(b)
            out.update({f"{name}.a": qa, f"{name}.a_scale": sa, f"{name}.b": qb, f"{name}.b_scale": sb})
        else:
            out.update({f"{name}.a": a.half(), f"{name}.b": b.half()})
        st.factored += 1
        st.rank_sum += r
        st.stored_bytes += factored_bytes
    return out, st


def reconstruct(base: dict[str, torch.Tensor], stored: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """θ_ft ≈ θ_pre + decoded Δθ, for every parameter the delta touches (fp32 tensors)."""
    names = {k.rsplit(".", 1)[0] for k in stored}
    out: dict[str, torch.Tensor] = {}
    for name in names:
        if f"{name}.full" in stored:
            out[name] = stored[f"{name}.full"].float()
            continue
        if f"{name}.dense" in stored:
            d = stored[f"{name}.dense"].float()
        else:
            a, b = stored[f"{name}.a"].float(), stored[f"{name}.b"].float()
            if f"{name}.a_scale" in stored:
                a = a * stored[f"{name}.a_scale"]
                b = b * stored[f"{name}.b_scale"]
            d = a @ b
        out[name] = base[name].float() + d
    return out
