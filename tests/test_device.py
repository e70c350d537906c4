"""Devices: `--device` values, the batch size that adapts to device memory, and the GPU path (the tests marked
`cuda` run where torch sees a CUDA device and are skipped, with that reason, elsewhere)."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from factrecall.cli import app
from factrecall.flows.runner import Runner, run_stage
from factrecall.stages import STAGES
from factrecall.storage.query import connect
from factrecall.storage.store import Store
from factrecall.tasks.models import DeviceMemoryError, ModelLoadError, resolve_device
from factrecall.tasks.relations import paper_capital
from tiny_models import FAMILIES, loaded_tiny_model, save_tiny_model_dir

HAS_CUDA = torch.cuda.is_available()
cuda = pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device here: the GPU path is tested where one is present")


def test_device_values(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(None) == torch.device("cuda" if HAS_CUDA else "cpu")
    for bad, message in (("mps", "runs on cpu or cuda"), ("gpu!", "is not a device")):
        with pytest.raises(ModelLoadError, match=message):
            resolve_device(bad)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a machine without a GPU
    with pytest.raises(ModelLoadError, match="torch sees no CUDA device"):
        resolve_device("cuda")


def test_device_cuda_without_a_gpu_is_one_line_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    model = save_tiny_model_dir("llama", tmp_path / "tiny-llama")
    result = CliRunner().invoke(app, ["capture", "--models", str(model), "--relations", "paper.capital", "--shots", "0",
                                      "--device", "cuda", "--store", str(tmp_path / "store"), "--no-progress"])
    assert result.exit_code == 2 and "no CUDA device" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "store").exists()


def _out_of_memory_above(limit: int, calls: list[int]):
    """The capture stage, failing like CUDA does whenever its batch size is above ``limit``: after its first batch
    has been written, so the failed try leaves files that must go."""
    real = STAGES["capture"]

    def compute(inp):
        calls.append(inp.config.batch_size)
        gen = real.compute(inp)
        if inp.config.batch_size > limit:
            yield next(gen)
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
        return (yield from gen)

    return dataclasses.replace(real, compute=compute)


def _table(root, table: str, shot: int) -> list[tuple]:
    from factrecall.storage.schema import SCHEMAS

    columns = ", ".join(SCHEMAS[table].names)  # the stored columns (the view adds the result's ids)
    return connect(root).execute(f"SELECT {columns} FROM {table} WHERE shot = {shot} ORDER BY ALL").fetchall()


def test_out_of_device_memory_halves_the_batch_until_it_fits(tmp_path, monkeypatch):
    from factrecall.flows.runner import ModelHandle

    lm = loaded_tiny_model("llama")
    config = STAGES["capture"].config(max_prompts=12, batch_size=16)
    calls: list[int] = []
    monkeypatch.setitem(STAGES, "capture", _out_of_memory_above(4, calls))
    store = Store(tmp_path / "adapted")
    runner = Runner(store, "r")
    handle = ModelHandle(lm.model_id, loaded=lm)
    with store.writing():
        outcome = runner.run("capture", config, handle, paper_capital(), 0)
        assert calls == [16, 8, 4] and outcome.status == "written"
        runner.run("capture", config, handle, paper_capital(), 1)  # the next partition starts at the size that fitted
    assert calls == [16, 8, 4, 4]
    assert [n for n in runner.notes if n.startswith("memory: ")] == [
        f"memory: {lm.model_id}/paper.capital/shot=0: capture ran out of device memory at batch size 16; computed at "
        "batch size 8 (same results)",
        f"memory: {lm.model_id}/paper.capital/shot=0: capture ran out of device memory at batch size 8; computed at "
        "batch size 4 (same results)"]
    monkeypatch.undo()
    run_stage(tmp_path / "direct", "capture", lm, paper_capital(), 0, dataclasses.replace(config, batch_size=4))
    for table in ("logits", "dla"):  # the same rows as a run at that batch size
        assert _table(store.root, table, 0) == _table(tmp_path / "direct", table, 0)
    written = {p.relative_to(store.root) for p in store.root.rglob("*.parquet") if p.parts[-1].startswith("part-")}
    committed = {p for p in written if not str(p).startswith("_")}
    assert len([p for p in committed if str(p).startswith("logits/")]) == 2  # one per partition: the tries' are gone


def test_out_of_device_memory_at_batch_size_one_is_an_error(tmp_path, monkeypatch):
    lm = loaded_tiny_model("llama")
    monkeypatch.setitem(STAGES, "capture", _out_of_memory_above(0, []))
    with pytest.raises(DeviceMemoryError, match="even at batch size 1"):
        run_stage(tmp_path / "s", "capture", lm, paper_capital(), 0, STAGES["capture"].config(max_prompts=4, batch_size=2))
    assert not list((tmp_path / "s").rglob("*.parquet"))  # every try's files deleted, no result recorded


# -- the GPU path (runs where CUDA is present) ----------------------------------------------------------------


def _on_gpu(lm):
    return dataclasses.replace(lm, model=copy.deepcopy(lm.model).to("cuda"), device=torch.device("cuda"))


@cuda
@pytest.mark.parametrize("family", FAMILIES)
def test_capture_and_heads_on_the_gpu_equal_the_cpu_and_the_ledger_holds(family, tmp_path):
    """The capture stage checks the ledger of every prompt in float32 (it refuses a model otherwise); the heads
    stage's path patching runs END-only on the GPU. Both agree with the CPU run."""
    cpu, gpu = loaded_tiny_model(family), _on_gpu(loaded_tiny_model(family))
    config = STAGES["heads"].config(max_prompts=12, n_boot=50)
    for lm, root in ((cpu, tmp_path / "cpu"), (gpu, tmp_path / "gpu")):
        run_stage(root, "heads", lm, paper_capital(), 0, config)
    for table, keys, value in (("logits", "prompt_id, variant", "answer_logit"),
                               ("dla", "prompt_id, variant, token_role, component, layer, head", "value"),
                               ("head_prompts", "prompt_id, layer, head", "effect_subject_pct")):
        query = f"SELECT {keys}, {value} FROM {table} ORDER BY {keys}"  # row by row, keyed
        a, b = (connect(tmp_path / d).execute(query).fetchall() for d in ("cpu", "gpu"))
        assert [r[:-1] for r in a] == [r[:-1] for r in b] and len(a) > 0
        np.testing.assert_allclose([r[-1] for r in b], [r[-1] for r in a], rtol=1e-3, atol=1e-3)


@cuda
@pytest.mark.parametrize("family", FAMILIES)
def test_end_only_patching_equals_full_forward_patching_on_the_gpu(family):
    from factrecall.tasks.capture import capture_batch
    from factrecall.tasks.path_patching import EndRunner, full_forward_patch, patch_end, sender_means

    lm = _on_gpu(loaded_tiny_model(family))
    gen = torch.Generator().manual_seed(7)
    clean = [torch.randint(3, 1000, (n,), generator=gen).tolist() for n in (5, 9, 7)]
    corrupt = [torch.randint(3, 1000, (n,), generator=gen).tolist() for n in (6, 8, 4)]
    cap = capture_batch(lm.model, lm.adapter, lm.dims, clean, 0)
    means = sender_means([capture_batch(lm.model, lm.adapter, lm.dims, corrupt, 0)])
    answer = torch.tensor([5, 17, 300], device="cuda")
    result = patch_end(EndRunner(lm), cap, answer, means)
    for layer in range(lm.dims.n_layers):
        for head in list(range(lm.dims.n_heads)) + [None]:
            reference = full_forward_patch(lm, clean, answer, sender=(layer, head), means=means)
            got = result.m_heads[:, layer, head] if head is not None else result.m_mlps[:, layer]
            torch.testing.assert_close(got, reference, atol=1e-4, rtol=1e-4)


@cuda
@pytest.mark.integration
def test_the_packaged_model_on_the_gpu_keeps_its_ledger_on_every_capital_prompt(tmp_path):
    from factrecall.tasks.models import load_model

    lm = load_model("smollm2-135m", dtype="float32", device="cuda")
    outcome = run_stage(tmp_path / "s", "capture", lm, paper_capital(), 0, STAGES["capture"].config())
    assert outcome.status == "written" and outcome.summary["n_prompts"] == 225
