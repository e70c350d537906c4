"""Exact path patching: END-only re-runs against a whole forward pass with frozen q/k/v, on every family."""

from __future__ import annotations

import pytest
import torch

from factrecall.tasks.capture import capture_batch
from factrecall.tasks.path_patching import (
    EndRunner,
    SenderMeans,
    full_forward_patch,
    patch_end,
    patch_one,
    sender_means,
)
from tiny_models import FAMILIES, loaded_tiny_model


def _setup(family: str):
    lm = loaded_tiny_model(family)
    gen = torch.Generator().manual_seed(7)
    clean = [torch.randint(3, 1000, (n,), generator=gen).tolist() for n in (5, 9, 7)]
    corrupt = [torch.randint(3, 1000, (n,), generator=gen).tolist() for n in (6, 8, 4)]
    cap = capture_batch(lm.model, lm.adapter, lm.dims, clean, 0)
    means = sender_means([capture_batch(lm.model, lm.adapter, lm.dims, corrupt, 0)])
    answer = torch.tensor([5, 17, 300])
    return lm, clean, cap, means, answer


def _model_metric(cap, answer):
    return cap.logits.gather(1, answer[:, None])[:, 0] - cap.logits.mean(1)


@pytest.mark.parametrize("family", FAMILIES)
def test_frozen_qkv_without_sender_reproduces_clean_logits(family):
    lm, clean, cap, _, answer = _setup(family)
    frozen = full_forward_patch(lm, clean, answer, sender=None, means=None)
    torch.testing.assert_close(frozen, _model_metric(cap, answer), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_sender_set_to_its_clean_value_changes_nothing(family):
    lm, _, cap, _, answer = _setup(family)
    # "means" equal to each prompt's own clean outputs: one prompt at a time so the mean is that prompt
    for b in range(len(answer)):
        one = type(cap)(**{k: (v[b : b + 1] if isinstance(v, torch.Tensor) else v) for k, v in cap.__dict__.items()})
        own = SenderMeans(one.head_raw[0], one.mlp_out[0])
        result = patch_end(EndRunner(lm), one, answer[b : b + 1], own)
        eff_heads, eff_mlps = result.effect_pct()
        assert eff_heads.abs().max() < 1e-3 and eff_mlps.abs().max() < 1e-3


@pytest.mark.parametrize("family", FAMILIES)
def test_end_only_patching_equals_full_forward_patching(family):
    lm, clean, cap, means, answer = _setup(family)
    result = patch_end(EndRunner(lm), cap, answer, means)
    torch.testing.assert_close(result.m_clean, _model_metric(cap, answer), atol=1e-5, rtol=1e-5)
    moved = 0.0
    for layer in range(lm.dims.n_layers):
        for head in list(range(lm.dims.n_heads)) + [None]:
            reference = full_forward_patch(lm, clean, answer, sender=(layer, head), means=means)
            got = result.m_heads[:, layer, head] if head is not None else result.m_mlps[:, layer]
            torch.testing.assert_close(got, reference, atol=2e-5, rtol=2e-5)
            moved = max(moved, (reference - result.m_clean).abs().max().item())
    assert moved > 1e-3  # the patches really change M, so agreement is not between unchanged values


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_senders_equal_one_sender_at_a_time(family):
    lm, _, cap, means, answer = _setup(family)
    runner = EndRunner(lm)
    result = patch_end(runner, cap, answer, means)
    for layer in range(lm.dims.n_layers):
        torch.testing.assert_close(patch_one(runner, cap, answer, means, layer, None), result.m_mlps[:, layer],
                                   atol=1e-5, rtol=1e-5)
        for head in range(lm.dims.n_heads):
            torch.testing.assert_close(patch_one(runner, cap, answer, means, layer, head),
                                       result.m_heads[:, layer, head], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_patching_a_set_composes_single_head_patches(family):
    from factrecall.tasks.path_patching import patch_set

    lm, clean, cap, means, answer = _setup(family)
    runner = EndRunner(lm)
    result = patch_end(runner, cap, answer, means)
    torch.testing.assert_close(patch_set(runner, cap, answer, means, []), result.m_clean)
    torch.testing.assert_close(patch_set(runner, cap, answer, means, [(1, 2)]), result.m_heads[:, 1, 2],
                               atol=1e-5, rtol=1e-5)
    both = patch_set(runner, cap, answer, means, [(0, 1), (2, 3)])
    assert (both - result.m_clean).abs().max() > 1e-4  # two senders really move M
