"""`factrecall reproduce`, its drift verdicts and exit codes, `runs`, and the report (rendered in headless
Chromium) on a tiny model: whole Prefect flows, about 10 s of start-up for the first."""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from factrecall.cli import app
from factrecall.storage.query import connect
from factrecall.storage.report import write_report
from factrecall.tasks.claims import CLAIMS
from tiny_models import every_prompt_answered, save_tiny_model_dir, tiny_spec

pytestmark = pytest.mark.flow
runner = CliRunner()
N_PARTITIONS = 2


def _reproduce(spec, store, *extra):
    return runner.invoke(app, ["reproduce", spec, "--store", str(store), "--no-progress", "--no-report", *extra])


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory):
    """A store reproduced twice with the same spec: (root, spec path, first output, second output)."""
    tmp = tmp_path_factory.mktemp("reproduce")
    model_dir = save_tiny_model_dir("llama", tmp / "tiny-llama")
    spec = tiny_spec(tmp / "tiny.toml", model_dir)
    root = tmp / "store"
    with pytest.MonkeyPatch.context() as mp:
        every_prompt_answered(mp)  # random weights answer nothing: no claim would be tested (the reruns reuse these)
        first, second = _reproduce(spec, root), _reproduce(spec, root)
    return root, spec, model_dir, first, second


def _run_ids(root) -> list[str]:
    return [r[0] for r in connect(root).execute("SELECT run_id FROM reproductions ORDER BY started_at").fetchall()]


def test_reproduce_fills_claims_and_a_rerun_has_no_drift(reproduced):
    root, _, _, first, second = reproduced
    assert first.exit_code == 0, first.output
    assert "first reproduction of this spec" in first.output
    assert second.exit_code == 0, second.output
    assert "no drift since" in second.output
    con = connect(root)
    claims = con.sql("SELECT * FROM claims").pl()
    assert claims.height == N_PARTITIONS * len(CLAIMS)
    assert set(claims["claim"]) == {c.name for c in CLAIMS} and set(claims["domain"]) == {"factual"}
    runs = _run_ids(root)
    assert len(runs) == 2
    snap = con.sql(f"SELECT * FROM reproduction_claims WHERE run_id = '{runs[1]}'").pl()
    assert snap.height == N_PARTITIONS * len(CLAIMS)
    drift = con.sql(f"SELECT * FROM drift WHERE run_id = '{runs[1]}'").pl()
    assert drift.height == N_PARTITIONS * len(CLAIMS) and not drift["drifted"].any()
    assert (drift["compared_with"] == runs[0]).all()
    # The second reproduction reused every result: one of each stage per partition in the store.
    counts = dict(con.execute("SELECT stage, count(*) FROM results GROUP BY stage").fetchall())
    assert counts == {s: N_PARTITIONS for s in ("capture", "heads", "mlp", "final_layer", "claims")}
    # Each claim names the exact upstream result its statistic comes from.
    src = con.sql("SELECT c.claim, c.source_stage, r.stage FROM claims c JOIN results r "
                  "ON c.source_result_id = r.result_id").pl()
    assert src.height == claims.height and (src["source_stage"] == src["stage"]).all()
    listed = runner.invoke(app, ["runs", "--store", str(root)])
    assert listed.exit_code == 0 and runs[0] in listed.output and "no drift" in listed.output


def _baseline(root, tmp_path, planted: dict[tuple, float]):
    """The last reproduction's claims as a baseline file, with ``planted`` (claim, shot) -> value added."""
    run = _run_ids(root)[-1]
    df = connect(root).sql(f"SELECT model, relation, shot, claim, value, verdict FROM reproduction_claims "
                           f"WHERE run_id = '{run}'").pl()
    for (claim, shot), delta in planted.items():
        hit = (pl.col("claim") == claim) & (pl.col("shot") == shot)
        assert df.filter(hit)["value"].is_not_null().all(), (claim, shot)
        df = df.with_columns(pl.when(hit).then(pl.col("value") + delta).otherwise(pl.col("value")).alias("value"))
    path = tmp_path / "baseline.csv"
    df.write_csv(path)
    return path


def test_a_planted_change_is_exactly_the_drift_and_exits_1(reproduced, tmp_path):
    root, spec, _, _, _ = reproduced
    baseline = _baseline(root, tmp_path, {("argument_heads", 1): 3.0})
    result = _reproduce(spec, root, "--baseline", str(baseline))
    assert result.exit_code == 1, result.output
    assert "DRIFT in 1 statistic(s)" in result.output and "argument_heads" in result.output
    run = _run_ids(root)[-1]
    drifted = connect(root).sql(f"SELECT claim, shot, difference, reason FROM drift WHERE run_id = '{run}' AND drifted").pl()
    assert drifted.select("claim", "shot").rows() == [("argument_heads", 1)]
    assert drifted["difference"][0] == pytest.approx(-3.0)
    assert connect(root).execute(f"SELECT verdict, n_drifted FROM reproductions WHERE run_id = '{run}'").fetchall() \
        == [("drift", 1)]
    # The flow itself ends Failed (so a scheduled run shows it in Prefect), carrying the reproduction.
    from factrecall.flows.reproduce import reproduce_flow

    state = reproduce_flow(spec, str(root), str(baseline), show_progress=False, return_state=True)
    assert state.is_failed() and "DRIFT in 1 statistic(s)" in state.message
    assert state.result(raise_on_failure=False)["verdict"] == "drift"


def test_a_tighter_tolerance_turns_a_small_change_into_drift(reproduced, tmp_path):
    root, _, model_dir, _, _ = reproduced
    baseline = _baseline(root, tmp_path, {("final_layer_suppresses", 0): 0.005})
    loose = tiny_spec(tmp_path / "loose.toml", model_dir, "[tolerance]\ndefault = 0.01\n")
    assert _reproduce(loose, root, "--baseline", str(baseline)).exit_code == 0
    tight = tiny_spec(tmp_path / "tight.toml", model_dir, "[tolerance]\ndefault = 0.01\nfinal_layer_suppresses = 0.001\n")
    result = _reproduce(tight, root, "--baseline", str(baseline))
    assert result.exit_code == 1, result.output
    run = _run_ids(root)[-1]
    drifted = connect(root).sql(f"SELECT claim, shot, tolerance FROM drift WHERE run_id = '{run}' AND drifted").pl()
    assert drifted.rows() == [("final_layer_suppresses", 0, 0.001)]


def test_a_bad_spec_or_baseline_writes_nothing(reproduced, tmp_path):
    root, spec, _, _, _ = reproduced
    before = _run_ids(root)

    def counts():
        con = connect(root)
        return [con.execute(f"SELECT count(*) FROM {t}").fetchall()[0][0]
                for t in ("runs", "_relations", "reproduction_claims", "drift", "results")]

    written = counts()
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\nmodels = ["smollm2-135m"]\nshots = [0]\n[[relations]]\nname = "paper.capitol"\n')
    result = _reproduce(str(bad), root)
    assert result.exit_code == 2 and "paper.capitol" in result.output
    missing = _reproduce(spec, root, "--baseline", str(tmp_path / "none.csv"))
    assert missing.exit_code == 2 and "none.csv" in missing.output
    malformed = tmp_path / "malformed.csv"
    malformed.write_text("model,relation,shot,claim,value,verdict\nm,r,0,argument_heads,lots,holds\n")
    result = _reproduce(spec, root, "--baseline", str(malformed))
    assert result.exit_code == 2 and "value must be numbers" in result.output
    incomplete = tmp_path / "incomplete.csv"
    incomplete.write_text("model,relation,shot,claim\nm,r,0,argument_heads\n")
    result = _reproduce(spec, root, "--baseline", str(incomplete))
    assert result.exit_code == 2 and "missing column(s) value, verdict" in result.output
    assert _run_ids(root) == before and counts() == written


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if found is None:
        pytest.skip("no Chromium: `apt-get install chromium` (CI installs it; .ci/run fails without it)")
    return found


def test_report_sections_images_matrix_and_a_real_browser(reproduced, tmp_path):
    root, _, _, _, _ = reproduced
    out, md = write_report(root, tmp_path / "report.html", "tiny")
    page = out.read_text()
    for section in ("verdict", "claim-matrix", "domains", "drift", "figures", "provenance"):
        assert f'<section id="{section}">' in page, section
    # Self-contained: every image is embedded, nothing is fetched.
    assert re.findall(r"<img[^>]*src='([^']*)'", page) and \
        all(src.startswith("data:image/png;base64,") for src in re.findall(r"<img[^>]*src='([^']*)'", page))
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", page)
    # The claim matrix: one cell per (partition, claim), with the verdict the store holds.
    run = _run_ids(root)[-1]
    stored = connect(root).execute(f"SELECT shot, claim, verdict FROM reproduction_claims WHERE run_id = '{run}' "
                                   "ORDER BY shot").fetchall()
    order = {c.name: i for i, c in enumerate(CLAIMS)}
    expected = [(c, v) for _, c, v in sorted(stored, key=lambda r: (r[0], order[r[1]]))]  # rows by shot, claims in order
    cells = re.findall(r"data-claim='([a-z_]+)' data-verdict='([a-z ]+)'", page)
    assert cells == expected and len(cells) == N_PARTITIONS * len(CLAIMS)
    assert "| model | relation | shot |" in md.read_text()
    # How often each claim holds, per setting: counted in SQL, checked here against the stored verdicts.
    lines = [line for line in md.read_text().splitlines() if " · zero-shot |" in line or " · few-shot |" in line]
    assert len(lines) == len({s for s, _, _ in stored} & {0}) + bool({s for s, _, _ in stored} - {0})
    for line in lines:
        setting = "zero-shot" if " · zero-shot |" in line else "few-shot"
        cells = [c.strip() for c in line.strip("|").split("|")[1:]]
        for claim, cell in zip(CLAIMS, cells):
            mine = [v for s, c, v in stored if c == claim.name and (s == 0) == (setting == "zero-shot")]
            tested = [v for v in mine if v != "not tested"]
            assert cell == (f"{tested.count('holds')}/{len(tested)}" if tested else ""), (setting, claim.name, cell)
    # Rendered by headless Chromium: the screenshot is a real page, not blank.
    shot = tmp_path / "report.png"
    subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--screenshot={shot}", "--window-size=1280,900", out.as_uri()],
                   check=True, capture_output=True, timeout=120)
    import matplotlib.image as mpimg

    pixels = mpimg.imread(shot)[..., :3]
    assert pixels.shape[:2] == (900, 1280)
    assert pixels.std() > 0.05  # text, colours and figures, not a uniform page
    colours = {tuple(np.round(p, 2)) for p in pixels.reshape(-1, 3)[::97]}
    assert len(colours) > 20


def test_a_spec_gives_one_model_its_own_dtype(tmp_path):
    """``[model_dtypes]``: the named model runs in bfloat16 (stored under its own id), the others in the spec's dtype."""
    llama, qwen = save_tiny_model_dir("llama", tmp_path / "tiny-llama"), save_tiny_model_dir("qwen2", tmp_path / "tiny-qwen2")
    spec = tmp_path / "mixed.toml"
    spec.write_text(f"""name = "mixed"
models = ["{llama}", "{qwen}"]
shots = [0]
dtype = "float32"
[model_dtypes]
"{qwen}" = "bfloat16"
[settings]
max_prompts = 8
n_boot = 20
batch_size = 4
[[relations]]
name = "paper.capital"
""")
    root = tmp_path / "store"
    result = _reproduce(str(spec), root)
    assert result.exit_code == 0, result.output
    con = connect(root)
    dtypes = dict(con.execute("SELECT DISTINCT r.model, r.dtype FROM results r").fetchall())
    assert sorted(dtypes.values()) == ["bfloat16", "float32"] and len(dtypes) == 2
    (bf16_model,) = [m for m, d in dtypes.items() if d == "bfloat16"]
    assert bf16_model.endswith(".bf16") and "qwen2" in bf16_model
    recorded = dict(con.execute("SELECT model, dtype FROM models").fetchall())
    assert recorded == dtypes
    assert con.execute("SELECT count(DISTINCT model) FROM claims").fetchall()[0][0] == 2
