"""The head-analysis stage end to end (no Prefect): tables, skip reasons, reruns, and on smollm2-135m
the paper's claim that the task-specific heads matter more than random heads."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from factrecall.flows.runner import run_stage
from factrecall.storage.query import connect
from factrecall.tasks.capture import capture_batch
from factrecall.tasks.heads_stage import HeadsConfig, corrupted_means
from factrecall.tasks.path_patching import EndRunner, patch_set
from factrecall.tasks.prompts import build_prompts
from factrecall.tasks.relations import get_relation, load_generic_jsonl, paper_capital
from factrecall.tasks.tokenization import tokenize_prompts
from tiny_models import loaded_tiny_model

N = 12


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    root = tmp_path_factory.mktemp("heads")
    lm = loaded_tiny_model("gemma3")
    outcome = run_stage(root, "heads", lm, get_relation("paper.capital"), 0,
                        HeadsConfig(max_prompts=N, n_boot=50, batch_size=5), "t")
    return root, lm, outcome.summary


def test_tables_cover_every_prompt_head_and_layer(analysed):
    root, lm, summary = analysed
    L, H = lm.dims.n_layers, lm.dims.n_heads
    con = connect(root)
    assert con.sql("SELECT count(*) FROM head_prompts").fetchall()[0][0] == N * L * H
    assert con.sql("SELECT count(*) FROM mlp_patching").fetchall()[0][0] == N * L
    assert con.sql("SELECT count(*) FROM head_summary").fetchall()[0][0] == L * H
    # the summary's attention mean and the per-prompt rows agree; the per-prompt rows agree with capture
    diff = con.sql("""
        SELECT max(abs(s.mean_attn_to_s - p.m)) FROM head_summary s
        JOIN (SELECT layer, head, avg(attn_to_s) AS m FROM head_prompts GROUP BY ALL) p USING (layer, head)
    """).fetchall()[0][0]
    assert diff < 1e-6
    same = con.sql("""
        SELECT max(abs(p.attn_to_s - h.attn_to_s)) FROM head_prompts p
        JOIN heads h ON h.model = p.model AND h.relation = p.relation AND h.shot = p.shot
         AND h.prompt_id = p.prompt_id AND h.layer = p.layer AND h.head = p.head AND h.variant = 'clean'
    """).fetchall()[0][0]
    assert same < 1e-7


def test_head_set_row_matches_summary_flags(analysed):
    root, _, summary = analysed
    con = connect(root)
    heads, rule = con.sql("SELECT heads, rule FROM head_sets").fetchall()[0]
    flagged = con.sql("SELECT 'L' || layer || '.H' || head FROM head_summary WHERE in_head_set ORDER BY set_order").fetchall()
    assert [f[0] for f in flagged] == list(heads) == summary["head_set"]
    assert json.loads(rule)["coverage"] == 0.8
    plots = dict(con.sql("SELECT name, png FROM plots WHERE stage = 'heads'").fetchall())
    assert set(plots) == {"effect_heatmap", "attention_heatmap", "attention_vs_dla"}
    assert all(png[:8] == b"\x89PNG\r\n\x1a\n" for png in plots.values())


def test_rerun_with_another_batch_size_is_skipped(analysed):
    root, lm, _ = analysed
    again = run_stage(root, "heads", lm, get_relation("paper.capital"), 0,
                      HeadsConfig(max_prompts=N, n_boot=50, batch_size=7), "t2")
    assert again.status == "skipped"  # batch size changes speed, not results
    con = connect(root)
    assert con.sql("SELECT count(*) FROM head_sets").fetchall()[0][0] == 1


def test_relation_with_one_subject_is_skipped_with_the_reason_stored(tmp_path):
    path = tmp_path / "one.jsonl"
    path.write_text('{"subject": "France", "object": "Paris", "template": "The capital of {} is"}\n'
                    '{"subject": "France", "object": "Paris", "template": "{}\'s capital is"}\n')
    lm = loaded_tiny_model("gpt2")
    result = run_stage(tmp_path / "s", "heads", lm, load_generic_jsonl(path), 0, HeadsConfig(), "t")
    assert "at least 2" in result.summary["skipped_reason"]
    reason = connect(tmp_path / "s").sql("SELECT skipped_reason FROM head_sets").fetchall()[0][0]
    assert "1 distinct subject" in reason


@pytest.mark.integration
def test_smollm2_head_set_lowers_m_more_than_random_heads(smollm2, smollm2_heads):
    n_prompts = 60
    _, summary = smollm2_heads
    heads = [tuple(int(x) for x in name[1:].split(".H")) for name in summary["head_set"]]
    assert heads, "the head set must not be empty"

    def tok(variant):
        return tokenize_prompts(smollm2.tokenizer, build_prompts(paper_capital(), 0, 0, (variant,), n_prompts),
                                smollm2.max_length)

    clean = tok("clean")
    means = corrupted_means(smollm2, tok("subject_corrupt"), 16)
    cap = capture_batch(smollm2.model, smollm2.adapter, smollm2.dims, [list(p.input_ids) for p in clean],
                        smollm2.tokenizer.pad_token_id)
    answer = torch.tensor([p.answer_token_id for p in clean])
    runner = EndRunner(smollm2)
    m_clean = (cap.logits.gather(1, answer[:, None])[:, 0] - cap.logits.mean(1)).mean().item()
    drop = lambda hs: m_clean - patch_set(runner, cap, answer, means, hs).mean().item()  # noqa: E731
    set_drop = drop(heads)
    rng = np.random.default_rng(0)
    all_heads = [(l, h) for l in range(smollm2.dims.n_layers) for h in range(smollm2.dims.n_heads)]
    random_drops = [drop([all_heads[i] for i in rng.choice(len(all_heads), len(heads), replace=False)])
                    for _ in range(20)]
    print(f"head set {summary['head_set']}: M drop {set_drop:.3f}; random sets: max {max(random_drops):.3f}, "
          f"mean {np.mean(random_drops):.3f} (n={n_prompts} prompts, 20 random sets)")
    assert set_drop > max(random_drops)


def test_the_corrupted_prompts_and_sender_means_are_stored_and_re_derive_the_means(analysed):
    """The means path patching used can be recomputed from the stored corrupted prompts alone."""
    root, lm, _ = analysed
    con = connect(root)
    rows = con.sql("SELECT variant, prompt_id, text, input_ids FROM corrupt_prompts ORDER BY variant, prompt_id").pl()
    subject = rows.filter(rows["variant"] == "subject_corrupt")
    assert subject.height == N and subject["prompt_id"].to_list() == list(range(N))
    clean_texts = dict(con.sql("SELECT prompt_id, text FROM prompts WHERE variant = 'clean'").fetchall())
    assert all(t != clean_texts[i] for i, t in zip(subject["prompt_id"], subject["text"]))
    cap = capture_batch(lm.model, lm.adapter, lm.dims, [list(ids) for ids in subject["input_ids"]], lm.pad_id)
    L, H = lm.dims.n_layers, lm.dims.n_heads
    stored = con.sql("SELECT layer, head, n, mean FROM sender_means ORDER BY layer, head NULLS LAST").fetchall()
    assert len(stored) == L * (H + 1) and {r[2] for r in stored} == {N}
    for layer, head, _, mean in stored:
        want = cap.mlp_out[:, layer].mean(0) if head is None else cap.head_raw[:, layer, head].mean(0)
        np.testing.assert_allclose(np.array(mean), want.numpy(), atol=1e-5)


def test_prompts_whose_answer_is_a_subject_token_are_left_out_of_the_copy_statistics(tmp_path):
    """Issue 23, finding 10: Belarus -> " Belarus": copying the subject already scores as answering, so such prompts
    are flagged and the copy AUC (and the swap) leave them out; the per-prompt rows keep them, flagged."""
    from tiny_models import every_prompt_answered

    path = tmp_path / "demonyms.jsonl"
    facts = [("Belarus", "Belarus"), ("France", "French"), ("Spain", "Spanish"), ("Italy", "Italian"),
             ("Chile", "Chile"), ("Peru", "Peruvian")]
    path.write_text("".join(json.dumps({"subject": s, "object": o, "template": "People from {} are called"}) + "\n"
                            for s, o in facts))
    relation = load_generic_jsonl(path)
    lm = loaded_tiny_model("llama")
    clean = tokenize_prompts(lm.tokenizer, build_prompts(relation, 0, 0), lm.max_length)
    flagged = [p.prompt.subject for p in clean if p.answer_in_subject]
    assert flagged == ["Belarus", "Chile", "Peru"]  # " Peru" + "vian": the demonym starts with the subject
    with pytest.MonkeyPatch.context() as mp:
        every_prompt_answered(mp)
        run_stage(tmp_path / "s", "heads", lm, relation, 0, HeadsConfig(n_boot=20), "t")
    con = connect(tmp_path / "s")
    assert con.sql("SELECT n_correct, n_copy, n_answer_in_subject FROM head_sets").fetchall() == [(6, 3, 3)]
    assert {r[0] for r in con.sql("SELECT DISTINCT copy_n FROM head_summary").fetchall()} == {3}
    rows = con.sql("SELECT prompt_id, any_value(answer_in_subject) FROM head_prompts GROUP BY ALL "
                   "ORDER BY prompt_id").fetchall()
    assert [f for _, f in rows] == [p.answer_in_subject for p in clean]


def test_a_subject_that_is_position_0_alone_leaves_the_largest_target_rule_out_and_says_so(tmp_path):
    """Without BOS (GPT-2's tokenizer) a subject-first template at shot 0 puts a one-token subject at position 0,
    where the usual attention sink is: the rule cannot tell them apart there, so it is not applied (a head set is
    not emptied by an undecidable filter), and the row says why."""
    from tiny_models import every_prompt_answered

    path = tmp_path / "letters.jsonl"
    letters = "BCDFGHKLMNPR"
    path.write_text("".join(json.dumps({"subject": a, "object": b, "template": "{} comes before"}) + "\n"
                            for a, b in zip(letters, letters[1:] + "S")))
    relation = load_generic_jsonl(path)
    lm = loaded_tiny_model("gpt2")
    clean = tokenize_prompts(lm.tokenizer, build_prompts(relation, 0, 0), lm.max_length)
    assert not clean[0].bos and all(p.s_first_pos == p.s_pos == 0 for p in clean)
    with pytest.MonkeyPatch.context() as mp:
        every_prompt_answered(mp)
        run_stage(tmp_path / "s", "heads", lm, relation, 0, HeadsConfig(n_boot=20), "t")
    con = connect(tmp_path / "s")
    decidable, rule = con.sql("SELECT n_subject_top_decidable, subject_top_rule FROM head_sets").fetchall()[0]
    assert decidable == 0 and rule.startswith("not applied: the subject is position 0 alone")
    assert con.sql("SELECT count(*) FROM head_summary WHERE subject_top_share IS NOT NULL").fetchall()[0][0] == 0
