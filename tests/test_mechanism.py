"""Steps 2-3 on tiny random models: edits at END against hook references, the argument swap with
X' = X, the stage's tables end to end (no Prefect), and on smollm2-135m the task-aware push."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from factrecall.flows.runner import ResultReader, run_stage
from factrecall.storage.query import connect, named_query, open_store, run_query
from factrecall.storage.store import Store
from factrecall.tasks.mlp_stage import (
    MlpConfig,
    StoreMismatchError,
    argument_swap,
    model_swap_plot,
    parse_head,
    stored_end_vectors,
)
from factrecall.tasks.capture import _first_tensor, capture_batch, right_pad
from factrecall.tasks.end_edits import end_logits_with_edits, logits_after_end, top1_after_end, z_after_end
from factrecall.tasks.mlp_regression import fit_per_prompt, task_component
from factrecall.tasks.prompts import build_prompts
from factrecall.tasks.relations import get_relation
from factrecall.tasks.tokenization import tokenize_prompts
from factrecall.storage.columns import vectors
from tiny_models import FAMILIES, every_prompt_answered, loaded_tiny_model

N = 12


def _rows(seed=5):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 1000, (n,), generator=gen).tolist() for n in (6, 9, 4)]


def _hooked_end_logits(lm, rows, layer, module_path, edit):
    """Reference: a hook that rewrites the module's output (or input) at END with `edit(view, rows, end)`."""
    ids, mask = right_pad(rows, 0, lm.device)
    end = mask.sum(1) - 1
    idx = torch.arange(len(rows))
    module = lm.adapter.layer_part(lm.adapter.layer_modules(lm.model)[layer], module_path)

    def pre(m, args):
        z = args[0].clone()
        edit(z, idx, end)
        return (z,) + tuple(args[1:])

    handle = module.register_forward_pre_hook(pre)
    try:
        with torch.inference_mode():
            out = lm.model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    finally:
        handle.remove()
    return out[idx, end].float()


@pytest.mark.parametrize("family", FAMILIES)
def test_no_edit_is_the_model_and_a_head_swap_equals_replacing_its_z(family):
    lm = loaded_tiny_model(family)
    rows, twin_rows = _rows(5), _rows(6)
    cap = capture_batch(lm.model, lm.adapter, lm.dims, rows, 0)
    twin = capture_batch(lm.model, lm.adapter, lm.dims, twin_rows, 0)
    torch.testing.assert_close(end_logits_with_edits(lm, rows, {}), cap.logits, atol=1e-5, rtol=1e-5)
    layer, head, dh = lm.dims.n_layers - 1, 1, lm.dims.d_head
    swapped = end_logits_with_edits(lm, rows, {("out_proj", layer): twin.head_raw[:, layer, head] - cap.head_raw[:, layer, head]})
    # reference: replace head's z at END with the twin's z (z recovered from the twin's own forward)
    store = {}
    out_proj = lm.adapter.layer_part(lm.adapter.layer_modules(lm.model)[layer], lm.adapter.out_proj)
    h = out_proj.register_forward_pre_hook(lambda m, a: store.__setitem__("z", a[0].detach().clone()))
    ids, mask = right_pad(twin_rows, 0, lm.device)
    with torch.inference_mode():
        lm.model(input_ids=ids, attention_mask=mask, use_cache=False)
    h.remove()
    twin_end = mask.sum(1) - 1
    z_twin = store["z"][torch.arange(3), twin_end, head * dh:(head + 1) * dh]

    def put(z, idx, end):
        z[idx, end, head * dh:(head + 1) * dh] = z_twin

    reference = _hooked_end_logits(lm, rows, layer, lm.adapter.out_proj, put)
    torch.testing.assert_close(swapped, reference, atol=2e-5, rtol=2e-5)
    assert (reference - cap.logits).abs().max() > 1e-4  # the swap really changes something


@pytest.mark.parametrize("family", FAMILIES)
def test_removing_the_whole_mlp_output_at_end_equals_zeroing_it(family):
    lm = loaded_tiny_model(family)
    rows = _rows(8)
    cap = capture_batch(lm.model, lm.adapter, lm.dims, rows, 0)
    layer = 0
    removed = end_logits_with_edits(lm, rows, {("mlp_out", layer): -cap.mlp_out[:, layer]})
    ids, mask = right_pad(rows, 0, lm.device)
    end = mask.sum(1) - 1
    idx = torch.arange(3)
    module = lm.adapter.layer_part(lm.adapter.layer_modules(lm.model)[layer], lm.adapter.mlp_out)

    def zero(m, args, output):
        out = _first_tensor(output)
        view = (out.reshape(3, ids.shape[1], -1) if lm.adapter.mlp_out_flat else out).clone()
        view[idx, end] = 0
        return view.reshape(out.shape)

    h = module.register_forward_hook(zero)
    with torch.inference_mode():
        reference = lm.model(input_ids=ids, attention_mask=mask, use_cache=False).logits[idx, end].float()
    h.remove()
    torch.testing.assert_close(removed, reference, atol=2e-5, rtol=2e-5)
    with pytest.raises(ValueError, match="outside the model"):
        end_logits_with_edits(lm, rows, {("mlp_out", 99): cap.mlp_out[:, 0]})


def test_argument_swap_with_the_same_subject_changes_nothing():
    lm = loaded_tiny_model("llama")
    relation = get_relation("paper.capital")
    clean = tokenize_prompts(lm.tokenizer, build_prompts(relation, 1, 0, max_prompts=6), lm.max_length)
    same = [type(p)(**{**p.__dict__, "prompt": type(p.prompt)(**{**p.prompt.__dict__,
                                                                  "query_subject": p.prompt.subject})}) for p in clean]
    heads = [(0, 0), (1, 2), (2, 1)]
    out = argument_swap(lm, relation, clean, same, heads, batch_size=4)
    assert out["top1_after"] == out["top1_before"] and all(len(t) == 1 for t in out["top1_before"])
    assert (out["decision"] == -1).all()  # X' = X: the same object, nothing to decide between
    assert out["swap_object_tokens"] == out["object_tokens"]


def _forced_outputs_reference(lm, rows, forced: dict[tuple[int, int], torch.Tensor], end=None, k: int = 0):
    """Reference for the swap by replacement: a whole forward pass whose output projection, at each row's END (and
    the k positions after it), has the chosen heads' outputs *forced* to given raw outputs `[B, d]` (`[B, k+1, d]`
    with k): the hook reads the module's own input z, computes each chosen head's current output through the
    projection weights and replaces it (an independent path from setting z). Logits at END (`[B, k+1, V]` with k)."""
    ids, mask = right_pad(rows, 0, lm.device)
    end = mask.sum(1) - 1 if end is None else torch.tensor(end)
    idx = torch.arange(len(rows))
    H, dh = lm.dims.n_heads, lm.dims.d_head
    handles = []
    for l, layer in enumerate(lm.adapter.layer_modules(lm.model)):
        chosen = {h: v for (layer_, h), v in forced.items() if layer_ == l}
        if not chosen:
            continue
        module = lm.adapter.layer_part(layer, lm.adapter.out_proj)
        w = lm.adapter.out_proj_weight(module, H, dh)  # [H, d_head, d]
        seen = {}

        def pre(m, args, seen=seen):
            seen["z"] = args[0].detach().clone()

        def post(m, args, output, seen=seen, chosen=chosen, w=w):
            out = output.clone()
            for j in range(k + 1):
                z = seen["z"][idx, end + j].reshape(len(rows), H, dh).float()
                for h, value in chosen.items():
                    current = z[:, h] @ w[h]
                    out[idx, end + j] += ((value[:, j] if k else value) - current).to(out.dtype)
            return out

        handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    try:
        with torch.inference_mode():
            logits = lm.model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    finally:
        for h in handles:
            h.remove()
    if k:
        return logits[idx[:, None], end[:, None] + torch.arange(k + 1)].float()
    return logits[idx, end].float()


@pytest.mark.parametrize("family", FAMILIES)
def test_the_swap_replaces_the_heads_outputs_even_across_layers_and_the_additive_edit_does_not(family):
    """Issue 23, finding 1: with the set spanning two layers, a later set head recomputes after the earlier edit, so
    adding (twin - clean) leaves it off its twin value; replacement sets every set head to its twin-run output."""
    lm = loaded_tiny_model(family)
    rows, twin_rows = _rows(5), _rows(6)
    cap = capture_batch(lm.model, lm.adapter, lm.dims, rows, 0)
    twin = capture_batch(lm.model, lm.adapter, lm.dims, twin_rows, 0)
    L, H, dh = lm.dims.n_layers, lm.dims.n_heads, lm.dims.d_head
    heads = [(0, 1), (1, 0), (1, 2)]  # spans layers 0 and 1
    mask = torch.zeros(3, L, H, dtype=torch.bool)
    for l, h in heads:
        mask[:, l, h] = True
    z_twin = twin.z.reshape(3, L, H, dh)
    replaced = end_logits_with_edits(lm, rows, {}, replace={l: (z_twin[:, l], mask[:, l]) for l in (0, 1)})
    reference = _forced_outputs_reference(lm, rows, {(l, h): twin.head_raw[:, l, h] for l, h in heads})
    torch.testing.assert_close(replaced, reference, atol=5e-5, rtol=5e-5)
    additive = end_logits_with_edits(lm, rows, {("out_proj", l): sum(twin.head_raw[:, l, h] - cap.head_raw[:, l, h]
                                                                      for ll, h in heads if ll == l) for l in (0, 1)})
    err = (replaced - reference).abs().max().item()
    # the additive edit is not the replacement (on random weights the later head moves little, so relative to the
    # two implementations' agreement)
    assert (additive - reference).abs().max().item() > 20 * max(err, 1e-7)
    assert (replaced - cap.logits).abs().max() > 1e-3  # and the replacement changes something
    # the multi-position reader agrees with the END reader at END
    top = top1_after_end(lm, rows, [len(r) - 1 for r in rows],
                         replace={l: (z_twin[:, l], mask[:, l]) for l in (0, 1)})
    assert top[:, 0].tolist() == reference.argmax(-1).tolist()


@pytest.mark.parametrize("family", FAMILIES)
def test_the_swap_replaces_at_each_token_of_a_shared_object_prefix(family):
    """Objects that share their first token (" North America" / " North Africa") are decided at the second: the set
    heads are replaced at END and at the prefix token, by their outputs in the twin's run with the same prefix."""
    lm = loaded_tiny_model(family)
    rows, twin_rows = _rows(5), _rows(6)
    prefix = [17, 23]  # two shared object tokens fed after each prompt
    ext, twin_ext = [r + prefix for r in rows], [r + prefix for r in twin_rows]
    end, twin_end = [len(r) - 1 for r in rows], [len(r) - 1 for r in twin_rows]
    L, H, dh = lm.dims.n_layers, lm.dims.n_heads, lm.dims.d_head
    heads = [(0, 1), (1, 2)]
    k = len(prefix)
    # the twin's raw head outputs at END + j: the END of the twin truncated there (attention is causal)
    twin_raw = torch.stack([capture_batch(lm.model, lm.adapter, lm.dims, [r[: e + 1 + j] for r, e in
                                                                          zip(twin_ext, twin_end)], 0).head_raw
                            for j in range(k + 1)], 1)  # [B, k+1, L, H, d]
    z = z_after_end(lm, twin_ext, twin_end, k + 1).reshape(3, k + 1, L, H, dh)
    mask = torch.zeros(3, L, H, dtype=torch.bool)
    for l, h in heads:
        mask[:, l, h] = True
    logits, valid = logits_after_end(lm, ext, end, replace={l: (z[:, :, l], mask[:, l]) for l in (0, 1)})
    reference = _forced_outputs_reference(lm, ext, {(l, h): twin_raw[:, :, l, h] for l, h in heads}, end, k)
    assert valid.all()
    torch.testing.assert_close(logits, reference, atol=5e-5, rtol=5e-5)
    clean, _ = logits_after_end(lm, ext, end)
    assert (clean - reference).abs().max() > 1e-3
    # replacing at END alone is not the same at the later positions
    at_end, _ = logits_after_end(lm, ext, end, replace={l: (z[:, 0, l], mask[:, l]) for l in (0, 1)})
    assert (at_end[:, 1:] - reference[:, 1:]).abs().max() > 20 * (logits - reference).abs().max()


@pytest.mark.parametrize("family", ("gpt2", "gemma3"))
def test_a_batch_of_rows_with_different_shared_prefixes_is_swapped_row_by_row_right(family):
    """Rows whose objects share 0, 1 and 2 leading tokens in one batch: each row's replacement at its own positions
    equals the forced-output reference of that row alone (no position of one row leaks into another)."""
    lm = loaded_tiny_model(family)
    rows, twin_rows = _rows(5), _rows(6)
    prefixes = [[], [17], [17, 23]]
    ext = [r + p for r, p in zip(rows, prefixes)]
    twin_ext = [r + p for r, p in zip(twin_rows, prefixes)]
    end, twin_end = [len(r) - 1 for r in rows], [len(r) - 1 for r in twin_rows]
    L, H, dh = lm.dims.n_layers, lm.dims.n_heads, lm.dims.d_head
    K = 3
    z = z_after_end(lm, twin_ext, twin_end, K).reshape(3, K, L, H, dh)
    mask = torch.zeros(3, L, H, dtype=torch.bool)
    mask[:, 0, 1] = mask[:, 1, 2] = True
    logits, valid = logits_after_end(lm, ext, end, replace={l: (z[:, :, l], mask[:, l]) for l in (0, 1)})
    assert valid.tolist() == [[True, False, False], [True, True, False], [True, True, True]]
    for i, prefix in enumerate(prefixes):
        k = len(prefix)
        raw = torch.stack([capture_batch(lm.model, lm.adapter, lm.dims, [twin_ext[i][: twin_end[i] + 1 + j]], 0).head_raw
                           for j in range(k + 1)], 1)  # [1, k+1, L, H, d]
        forced = {(0, 1): raw[:, :, 0, 1], (1, 2): raw[:, :, 1, 2]}
        if k:
            ref = _forced_outputs_reference(lm, [ext[i]], forced, [end[i]], k)[0]
        else:
            ref = _forced_outputs_reference(lm, [ext[i]], {lh: v[:, 0] for lh, v in forced.items()}, [end[i]])
        torch.testing.assert_close(logits[i, : k + 1], ref.reshape(k + 1, -1), atol=5e-5, rtol=5e-5)


def test_swap_outcomes_judge_the_decision_token_and_leave_subject_copies_out():
    from factrecall.tasks.mlp_stage import swap_outcomes

    # prompt 0: "North America" [5, 7] vs "North Africa" [5, 9]: decided at the second token, a real swap
    # prompt 1: first tokens differ; the swap leaves X's object: no success
    # prompt 2: the same with X''s object already top-1 before: not eligible
    # prompt 3: X's object is a prefix of X''s ([5] vs [5, 9]): undecidable
    # prompt 4: a perfect swap, but X's answer token is a subject token: left out
    swap = {"decision": np.array([1, 0, 0, -1, 0]),
            "object_tokens": [[5, 7], [3], [3], [5], [4]], "swap_object_tokens": [[5, 9], [8], [8], [5, 9], [6]],
            "top1_before": [[5, 7], [3], [8], [5], [4]], "top1_after": [[5, 9], [3], [8], [5], [6]],
            "top1_random": [[5, 7], [8], [8], [5], [4]],
            "twin_answer_in_subject": np.array([False] * 5)}
    o = swap_outcomes(swap, np.array([False, False, False, False, True]))
    assert o["eligible"].tolist() == [True, True, False, False, False]
    assert o["success"].tolist() == [True, False, False, False, False]
    assert o["chance"].tolist() == [False, True, False, False, False]
    assert o["excluded"].tolist() == [False, False, False, False, True]
    # first-token scoring would have missed prompt 0's swap: X and X' share " North"
    assert swap["object_tokens"][0][0] == swap["swap_object_tokens"][0][0]


def test_argument_swap_reads_objects_that_share_a_first_token_at_their_decision_token(tmp_path):
    import json

    from factrecall.tasks.relations import load_generic_jsonl

    path = tmp_path / "continents.jsonl"
    facts = [("Canada", "North America"), ("Chad", "North Africa"), ("Peru", "South America"), ("Kenya", "East Africa"),
             ("Mali", "West Africa"), ("Laos", "Southeast Asia")]
    path.write_text("".join(json.dumps({"subject": a, "object": b, "template": "{} is a country in"}) + "\n"
                            for a, b in facts))
    relation = load_generic_jsonl(path)
    lm = loaded_tiny_model("llama")
    clean = tokenize_prompts(lm.tokenizer, build_prompts(relation, 0, 0), lm.max_length)
    twins = tokenize_prompts(lm.tokenizer, build_prompts(relation, 0, 0, ("subject_corrupt",)), lm.max_length)
    out = argument_swap(lm, relation, clean, twins, [(0, 0), (1, 2)], batch_size=4)
    swapped = dict(zip(out["swap_subject"], out["swap_object_tokens"]))
    for i, p in enumerate(clean):
        x, y = list(p.object_token_ids), out["swap_object_tokens"][i]
        k = next((j for j in range(min(len(x), len(y))) if x[j] != y[j]), -1)
        assert out["decision"][i] == k and out["object_tokens"][i] == x
        assert len(out["top1_before"][i]) == len(out["top1_after"][i]) == max(k, 0) + 1
    assert (out["decision"] > 0).any(), "no pair of objects shares a first token: the test would not exercise it"
    assert swapped


def test_head_names_are_checked_against_the_model():
    assert parse_head("L3.H2", 4, 4) == (3, 2)
    with pytest.raises(ValueError, match="outside the model"):
        parse_head("L4.H0", 4, 4)
    with pytest.raises(ValueError, match="bad head name"):
        parse_head("layer3", 4, 4)


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    """The mlp stage on a tiny random model. Random weights carry no significant head effect and answer nothing, so
    the heads stage's rule is relaxed here (every head with a negative effect is a candidate, no attention floor,
    no minimum effect) and every prompt counts as answered, to give the stage a head set to work on; the rule
    itself is tested in test_head_stats."""
    from factrecall.tasks import heads_stage

    real = heads_stage.select_head_set

    def unfiltered(effect, attention, rule, effect_hi=None, subject_top=None):
        return real(effect, attention, dataclasses.replace(rule, attention_floor=0.0, min_effect=0.0), None)

    root = tmp_path_factory.mktemp("mlp")
    lm = loaded_tiny_model("gemma3")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(heads_stage, "select_head_set", unfiltered)
        every_prompt_answered(mp)
        outcome = run_stage(root, "mlp", lm, get_relation("paper.capital"), 0,
                            MlpConfig(max_prompts=N, n_boot=50, batch_size=5), "t")
    return root, lm, outcome


def test_on_random_weights_the_rule_finds_no_argument_passing_heads_and_mlp_says_so(tmp_path):
    lm = loaded_tiny_model("gemma3")
    with pytest.MonkeyPatch.context() as mp:
        every_prompt_answered(mp)
        outcome = run_stage(tmp_path, "mlp", lm, get_relation("paper.capital"), 0,
                            MlpConfig(max_prompts=N, n_boot=50, batch_size=5), "t")
    assert outcome.summary["skipped_reason"].startswith("no argument-passing heads")
    con = connect(tmp_path)
    assert con.sql("SELECT skipped_reason FROM function_application").fetchall()[0][0].startswith(
        "no argument-passing heads")
    assert "regression_betas" in open_store(tmp_path).missing  # nothing was regressed on noise


def test_a_model_that_answers_nothing_has_no_head_set_and_no_claim_is_tested(tmp_path):
    """Issue 23, finding 8: claims are judged on the prompts the model answers correctly; at accuracy 0 every claim
    is "not tested" with the reason (before: random weights could "hold" claims about facts they do not know)."""
    from factrecall.tasks.claims_stage import ClaimsConfig

    lm = loaded_tiny_model("gemma3")
    outcome = run_stage(tmp_path, "claims", lm, get_relation("paper.capital"), 0,
                        ClaimsConfig(max_prompts=N, n_boot=50, batch_size=6), "t")
    assert set(outcome.summary["verdicts"].values()) == {"not tested"}
    con = connect(tmp_path)
    assert _one(con, "SELECT n_correct, no_heads_reason FROM head_sets")[0] == 0
    notes = dict(con.sql("SELECT claim, note FROM claims").fetchall())
    for claim in ("argument_heads", "heads_copy_subject"):
        assert f"answers 0 of {N} prompts correctly" in notes[claim], claim
    assert f"in 0 of {N} prompts" in notes["final_layer_suppresses"]
    for claim in ("mlp_linear", "task_push", "argument_swap"):
        assert "too few prompts answered correctly: 0 of 12" in notes[claim], claim
    assert "does not suppress" in notes["mitigation_raises_confidence"]


def _capture(root, lm) -> ResultReader:
    store = Store(root)
    return ResultReader(store, store.catalog().selected((lm.model_id, "paper.capital", 0), "capture"))


def _one(con, sql):
    return con.sql(sql).fetchall()[0]


def test_the_stage_ran_the_head_analysis_and_regressed_from_the_first_head_layer(analysed):
    root, lm, outcome = analysed
    assert outcome.status == "written"
    con = connect(root)
    heads = _one(con, "SELECT heads FROM head_sets")[0]
    assert heads, "the tiny model's head set is empty: the test would not exercise the stage"
    first = min(int(h.split(".")[0][1:]) for h in heads)
    L, H = lm.dims.n_layers, lm.dims.n_heads
    layers = _one(con, "SELECT layers, head_set FROM function_application")
    assert list(layers[0]) == list(range(first, L)) and list(layers[1]) == list(heads)
    assert _one(con, "SELECT count(*) FROM regression_betas")[0] == N * (L - first) * H
    flagged = sorted(r[0] for r in con.sql("SELECT DISTINCT 'L' || layer || '.H' || head FROM regression_betas "
                                           "WHERE in_head_set").fetchall())
    assert flagged == sorted(heads)


def test_c_plus_sum_beta_o_reproduces_the_mlp_output_from_the_stored_vectors(analysed):
    root, lm, _ = analysed
    L, H, d = lm.dims.n_layers, lm.dims.n_heads, lm.dims.d_model
    vec = stored_end_vectors(_capture(root, lm), N, 0, L, H, d)
    for k in range(L):
        fit = fit_per_prompt(vec.heads[:, k], vec.mlp[:, k])
        c = task_component(vec.heads[:, k], vec.mlp[:, k], fit.beta)
        rebuilt = c + np.einsum("nh,nhd->nd", fit.beta, vec.heads[:, k].astype(np.float64))
        np.testing.assert_allclose(rebuilt, vec.mlp[:, k], rtol=0, atol=1e-9)


def test_inconsistent_stored_vectors_are_refused(analysed, monkeypatch):
    root, lm, _ = analysed
    capture = _capture(root, lm)
    real = capture.read

    def tampered(table, columns=None, filters=None):
        t = real(table, columns, filters)
        if table == "layers":
            col = t["mlp_out"].combine_chunks()
            values = col.flatten().to_numpy().copy()
            values[0] += 1.0
            t = t.set_column(t.schema.get_field_index("mlp_out"), "mlp_out", vectors(values, lm.dims.d_model))
        return t

    monkeypatch.setattr(capture, "read", tampered)
    with pytest.raises(StoreMismatchError, match="do not add up"):
        stored_end_vectors(capture, N, 0, lm.dims.n_layers, lm.dims.n_heads, lm.dims.d_model)


def test_summaries_agree_with_the_per_prompt_rows(analysed):
    root, _, _ = analysed
    con = connect(root)
    worst = _one(con, """
        SELECT max(abs(h.mean_beta - b.m)) FROM regression_heads h
        JOIN (SELECT layer, head, avg(beta) AS m FROM regression_betas WHERE NOT isnan(beta) GROUP BY ALL) b
        USING (layer, head)""")[0]
    assert worst < 1e-9
    # each half chooses its layer on its own fit; the other half's out-of-fold pushes are judged there
    best, best_b, push, n = _one(con, "SELECT best_layer, best_layer_b, push, push_n FROM function_application")
    layers = con.sql("SELECT layer, push_in_a, push_in_b, best_layer, best_layer_b FROM regression_layers "
                     "ORDER BY layer").fetchall()
    top_a = max((r for r in layers if r[1] is not None), key=lambda r: r[1])
    top_b = max((r for r in layers if r[2] is not None), key=lambda r: r[2])
    assert (top_a[0], top_b[0]) == (best, best_b) and top_a[3] and top_b[4]
    assert sum(r[3] for r in layers) == 1 and sum(r[4] for r in layers) == 1
    judged = _one(con, f"""SELECT avg(c_push - c_push_null), count(*) FROM regression_prompts
                          WHERE (split = 'b' AND layer = {best}) OR (split = 'a' AND layer = {best_b})""")
    halves = dict(con.sql("SELECT split, count(DISTINCT prompt_id) FROM regression_prompts GROUP BY split").fetchall())
    assert push == pytest.approx(judged[0]) and n == judged[1] == N and halves == {"a": N - N // 2, "b": N // 2}
    n, success = _one(con, "SELECT swap_n, swap_success FROM function_application")
    direct = _one(con, "SELECT count(*), avg(success::INTEGER) FROM argument_swap WHERE eligible")
    assert n == direct[0] and (success is None if n == 0 else success == pytest.approx(direct[1]))


def test_queries_answer_the_issue_questions_and_rerun_is_skipped(analysed):
    root, lm, _ = analysed
    for name in ("mlp_head_effects", "answer_layer", "mechanism_claims"):
        out = run_query(root, named_query(name), fmt="csv")
        assert out.count("\n") >= 2, name
    again = run_stage(root, "mlp", lm, get_relation("paper.capital"), 0,
                      MlpConfig(max_prompts=N, n_boot=50, batch_size=7), "t2")
    assert again.status == "skipped"
    plots = dict(connect(root).sql("SELECT name, png FROM plots WHERE stage = 'mlp'").fetchall())
    assert set(plots) == {"beta_by_head", "r2_by_layer", "push_by_layer"}
    assert all(png[:4] == b"\x89PNG" for png in plots.values())
    # a random model never ranks the answer first, so no prompt is eligible for the swap: no plot
    view = open_store(root)
    assert view.sql("SELECT swap_n, swap_success FROM function_application").fetchall() == [(0, None)]
    assert model_swap_plot(view.con, lm.model_id) is None
    import duckdb  # the per-model plot over swap rates, drawn from a hand-made function_application table

    con = duckdb.connect()
    con.execute("""CREATE TABLE function_application AS SELECT * FROM (VALUES
        ('m', 'r1', 0, 0.5, 0.3, 0.7), ('m', 'r2', 0, 0.2, 0.1, 0.4), ('m', 'r1', 1, 0.6, 0.4, 0.8))
        AS t(model, relation, shot, swap_success, swap_success_lo, swap_success_hi)""")
    assert model_swap_plot(con, "m")[:4] == b"\x89PNG"
    assert model_swap_plot(con, "no-such-model") is None


@pytest.mark.integration
def test_smollm2_task_component_pushes_the_answer_over_other_capitals(smollm2, smollm2_heads):
    root, heads = smollm2_heads
    summary = run_stage(root, "mlp", smollm2, get_relation("paper.capital"), 0,
                        MlpConfig(max_prompts=60, n_boot=100), "t").summary
    con = connect(root)
    assert list(_one(con, "SELECT head_set FROM function_application")[0]) == heads["head_set"]
    best, push, lo, hi, n, n_correct = _one(con, "SELECT best_layer, push, push_lo, push_hi, push_n, n_correct "
                                                 "FROM function_application")
    print(f"\nsmollm2 paper.capital shot 0: best layer {best}, cross-fitted push {push:.3f} [{lo:.3f}, {hi:.3f}] over "
          f"n = {n} of {n_correct} answered")
    assert summary["best_layer"] == best and n == n_correct and n_correct >= 20
    # over every answered prompt, some layer's component favours the right capital over the other 14 beyond the
    # push it gives the other prompts' capitals (its null)
    layers = con.sql("SELECT layer, push_lo FROM regression_layers WHERE push_lo > 0").fetchall()
    assert layers, "no layer's task-aware component pushes the answer beyond its null"


def test_mechanism_claims_pool_the_rows(analysed):
    root, _, _ = analysed
    con = connect(root)
    row = con.sql(named_query("mechanism_claims")).pl().row(0, named=True)
    r2 = [r[0] for r in con.sql("SELECT pooled_r2 FROM regression_layers WHERE holds_head_set_head").fetchall()]
    assert row["n_head_layer_mlps"] == len(r2)
    assert row["share_head_layer_mlps_r2_ge_half"] == pytest.approx(sum(m >= 0.5 for m in r2) / len(r2))
    labels = [r[0] for r in con.sql("SELECT pooled_label FROM regression_heads WHERE in_head_set").fetchall()]
    assert row["share_amplified"] == pytest.approx(labels.count("amplified") / len(labels))
    n, success = _one(con, "SELECT count(*), avg(success::INTEGER) FROM argument_swap WHERE eligible")
    assert row["n_swap"] == n and row["swap_success"] == pytest.approx(success)


