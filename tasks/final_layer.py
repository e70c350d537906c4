"""Step 4: the last layer's components at END and mitigating its suppression (METHOD.md §7). Pure torch.

Components of the last layer at END: each head's output o[h] (linearised at the sandwich norm's real
scale for Gemma, as in the ledger), the output-projection bias b_O and the MLP output m. Their DLA onto a
token freezes the final norm at its real scale, so they are the same terms the ledger sums.

Mitigation: two interventions on the last layer, applied at every position. Positions before END reach
END only through the keys and values of the layers they feed, and the last layer feeds none, so for the
END prediction this equals intervening at END alone.
- heads: each head h in the suppressor set is scaled, z_h -> alpha z_h before the output projection
  (b_O is kept), i.e. its raw projection o_h -> alpha o_h.
- mlp along a token w: m -> m - (1 - alpha) (m.u / u.u) u with u = center(g * W_U[:, w]).
  Proof that this scales the MLP's DLA onto w by exactly alpha: with the final scale sigma frozen,
  DLA(m, w) = center(m) . (g * W_U[:, w]) / sigma = m . u / sigma (centring is a symmetric projection),
  and (m - (1 - alpha)(m.u / u.u) u) . u = alpha m.u. w is the answer (oracle: it needs the label) or
  the model's own top-1 token at that position (deployable).
Fast path (`mitigated_end_resid`): only the last layer is recomputed at END from its cached inputs, for
many (alpha, variant) rows per prompt at once. Reference (`mitigation_hooks`): the same interventions as
hooks in a whole forward pass (tests check both agree, and that alpha = 1 changes nothing).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, fields

import numpy as np
import torch

from .capture import EndCapture, _first_tensor
from .ledger import ComponentLabel, center, direct_logit_attribution, norm_scale
from .models import LoadedModel
from .readout import FinalNorm
from .path_patching import EndRunner


@dataclass
class LastLayerInputs:
    """What the last layer needs to be recomputed at END: `[B, d]`, heads `[B, H, d]` (raw projections)."""

    resid_pre: torch.Tensor
    head_raw: torch.Tensor
    proj_out: torch.Tensor
    attn_out: torch.Tensor

    @classmethod
    def from_capture(cls, cap: EndCapture) -> "LastLayerInputs":
        return cls(cap.resid_pre[:, -1], cap.head_raw[:, -1], cap.proj_out[:, -1], cap.attn_out[:, -1])

    @classmethod
    def cat(cls, parts: list["LastLayerInputs"]) -> "LastLayerInputs":
        return cls(*(torch.cat([getattr(p, f.name) for p in parts]) for f in fields(cls)))

    def take(self, rows) -> "LastLayerInputs":
        return LastLayerInputs(*(getattr(self, f.name)[rows] for f in fields(self)))

    def __len__(self) -> int:
        return self.resid_pre.shape[0]


def final_layer_labels(n_layers: int, n_heads: int) -> list[ComponentLabel]:
    """Labels of `final_layer_dla`'s columns: every head, then b_O, then the MLP."""
    last = n_layers - 1
    return ([ComponentLabel(f"L{last}.H{h}", last, h) for h in range(n_heads)]
            + [ComponentLabel(f"L{last}.attn_bias", last, None), ComponentLabel(f"L{last}.mlp", last, None)])


def final_layer_dla(cap: EndCapture, norm: FinalNorm, w_u: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """DLA `[B, H + 2]` of the last layer's heads, b_O and MLP onto `token_ids [B]` (frozen final scale)."""
    vectors = torch.cat([cap.head_out[:, -1], cap.attn_bias[:, -1, None], cap.mlp_out[:, -1, None]], dim=1)
    sigma = norm_scale(cap.final_resid, norm.kind, norm.eps)
    return direct_logit_attribution(vectors, w_u[token_ids].float(), norm.gain, sigma, norm.kind)


def token_directions(w_u: torch.Tensor, token_ids: torch.Tensor, norm: FinalNorm) -> torch.Tensor:
    """u = center(g * W_U[:, w]) `[..., d]` for `token_ids [...]`: the residual direction of logit(w)."""
    return center(w_u[token_ids].float() * norm.gain, norm.kind)


def scale_along(m: torch.Tensor, u: torch.Tensor, alpha: torch.Tensor | float) -> torch.Tensor:
    """m - (1 - alpha) (m.u / u.u) u, broadcasting over leading dims (`alpha` `[...]` or a number)."""
    alpha = torch.as_tensor(alpha, dtype=m.dtype, device=m.device)
    if alpha.dim():
        alpha = alpha[..., None]
    coef = (m * u).sum(-1, keepdim=True) / (u * u).sum(-1, keepdim=True)
    return m - (1 - alpha) * coef * u


@torch.inference_mode()
def mitigated_end_resid(runner: EndRunner, inp: LastLayerInputs, head_scale: torch.Tensor,
                        mlp_alpha: torch.Tensor, mlp_dirs: torch.Tensor | None) -> torch.Tensor:
    """Final residual at END `[B, K, d]` for K intervention rows per prompt.

    `head_scale [B, K, H]` multiplies each head's raw projection; `mlp_alpha [B, K]` scales the MLP
    output's part along `mlp_dirs [B, K, d]` (ignored when None). All ones = the clean residual.
    """
    layer = len(runner.layers) - 1
    delta = torch.einsum("bkh,bhd->bkd", head_scale.to(inp.head_raw) - 1, inp.head_raw)
    x = inp.resid_pre[:, None] + runner.attn_contribution(layer, inp.proj_out, inp.attn_out, delta)
    m = runner.mlp(layer, x)
    if mlp_dirs is not None:
        m = scale_along(m, mlp_dirs, mlp_alpha.to(m))
    return x + m


@contextmanager
def mitigation_hooks(lm: LoadedModel, head_scale: torch.Tensor | None = None, mlp_alpha: float = 1.0,
                     mlp_dirs: torch.Tensor | None = None):
    """Within the block, every forward of `lm.model` runs the mitigated last layer at every position.

    `head_scale [H]` multiplies each head's z; `mlp_dirs [B, T, d]` (the batch's shape) gives the
    direction per position along which the MLP output is scaled by `mlp_alpha`.
    """
    adapter, dims = lm.adapter, lm.dims
    layer = adapter.layer_modules(lm.model)[-1]
    handles = []
    if head_scale is not None:
        scale = head_scale.to(lm.device, lm.dtype).repeat_interleave(dims.d_head)

        def scale_heads(module, args):
            return (args[0] * scale,) + tuple(args[1:])

        handles.append(adapter.layer_part(layer, adapter.out_proj).register_forward_pre_hook(scale_heads))
    if mlp_dirs is not None and mlp_alpha != 1.0:

        def scale_mlp(module, args, output):
            out = _first_tensor(output)
            new = scale_along(out.float(), mlp_dirs.reshape(out.shape).float(), mlp_alpha).to(out.dtype)
            return (new,) + tuple(output[1:]) if isinstance(output, tuple) else new

        handles.append(adapter.layer_part(layer, adapter.mlp_out).register_forward_hook(scale_mlp))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def calibration_split(n: int, seed: int, share: float = 0.5) -> np.ndarray:
    """Boolean `[n]`: True = calibration, False = held out; a seeded permutation, round(share * n) calibration."""
    if n < 2:
        raise ValueError(f"a calibration/held-out split needs at least 2 prompts, got {n}")
    k = min(n - 1, max(1, round(share * n)))
    mask = np.zeros(n, dtype=bool)
    mask[np.random.default_rng(seed).permutation(n)[:k]] = True
    return mask
