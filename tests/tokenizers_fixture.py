"""Small real tokenizers built offline (no hub) for tests.

- make_bpe_tokenizer(): GPT-2 style byte-level BPE, no BOS (vocab <= 1000).
- make_metaspace_tokenizer(): SentencePiece style (Metaspace pre-tokenizer, BPE) that prepends "<bos>".
- make_unsplit_bpe_tokenizer(): byte-level BPE *without* word pre-splitting, so merges cross spaces
  (e.g. "s P" in "is Paris"): a real tokenizer whose prompt tokens can change when the object follows.
All are trained on the texts of the paper task and a few LRE relations, and cached.
"""

from __future__ import annotations

import functools

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from factrecall.tasks.prompts import build_prompts, demo_text
from factrecall.tasks.relations import get_relation, paper_capital, paper_capital_possessive

VOCAB_SIZE = 800


@functools.cache
def training_corpus() -> tuple[str, ...]:
    texts: list[str] = []
    for rel in (paper_capital(), paper_capital_possessive(), get_relation("lre.country_capital_city"),
                get_relation("lre.city_in_country"), get_relation("lre.country_language")):
        for p in build_prompts(rel, shot=1, seed=0):
            texts.append(p.text + " " + p.object + ".")
        texts.extend(demo_text(rel.demo_template, f) for f in rel.facts)
    return tuple(texts)


def _wrap(tok: Tokenizer, **special) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(tokenizer_object=tok, **special)


@functools.cache
def make_bpe_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE like GPT-2: no BOS, offsets include the leading space of a word."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(training_corpus(), trainer=trainer)
    return _wrap(tok, eos_token="<|endoftext|>")


@functools.cache
def make_metaspace_tokenizer() -> PreTrainedTokenizerFast:
    """SentencePiece-style BPE with Metaspace ("▁") and a post-processor that prepends <bos>."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=["<unk>", "<bos>", "<eos>"],
                                  show_progress=False)
    tok.train_from_iterator(training_corpus(), trainer=trainer)
    bos_id = tok.token_to_id("<bos>")
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", bos_id)])
    return _wrap(tok, bos_token="<bos>", eos_token="<eos>", unk_token="<unk>")


@functools.cache
def make_unsplit_bpe_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE without the word-splitting regex: merges may span a space."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(training_corpus(), trainer=trainer)
    return _wrap(tok)
