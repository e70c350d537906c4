"""The `factrecall` command: run sweeps, query the store, list models and relations."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Column, Table

from factrecall.paths import configure_prefect, default_store

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
console = Console()
err = Console(stderr=True)

EXAMPLE_QUERY = "accuracy_by_shot"


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _shots(text: str) -> list[int]:
    try:
        shots = [int(s) for s in _split(text)]
    except ValueError:
        raise typer.BadParameter(f"shots must be comma-separated integers like 0,2; got {text!r}") from None
    if not shots or any(s < 0 for s in shots):
        raise typer.BadParameter(f"shots must be non-negative integers; got {text!r}")
    return shots


def _fail(message: str) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code=2)


@app.command()
def run(
    models: str = typer.Option("smollm2-135m", help="Comma-separated: packaged names, local dirs, .gguf files or hub names."),
    relations: str = typer.Option("paper.capital", help="Comma-separated relation names (see `factrecall relations`) or .jsonl files."),
    shots: str = typer.Option("0,2", help="Comma-separated k-shot settings."),
    seed: int = typer.Option(0, help="Seed for demonstrations and corruptions."),
    batch_size: int = typer.Option(16, min=1, help="Prompts per forward pass (bounds memory)."),
    dtype: str = typer.Option("float32", help="float32 (reference) | bfloat16 | float16."),
    device: Optional[str] = typer.Option(None, help="cpu | cuda (default: cuda when present)."),
    variants: str = typer.Option("clean", help="Prompt variants: clean,subject_corrupt,relation_corrupt."),
    max_prompts: Optional[int] = typer.Option(None, min=1, help="Use only the first N prompts of each relation."),
    store: Path = typer.Option(None, help="Store root (default: $FACTRECALL_STORE or .factrecall/store)."),
    example: bool = typer.Option(True, help="Print the answer of an example query at the end."),
    progress: bool = typer.Option(True, help="Show a progress display."),
) -> None:
    """Capture activations, ledgers and logits for every (model, relation, shot) into the store."""
    from factrecall.tasks.prompts import VARIANTS

    store_root = (store or default_store()).resolve()
    variant_list = _split(variants)
    unknown = [v for v in variant_list if v not in VARIANTS]
    if unknown:
        _fail(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    shot_list = _validate(models, relations, shots)
    configure_prefect()
    from factrecall.flows.sweep import sweep

    manifest = _guarded(lambda: sweep(
        models=_split(models), relations=_split(relations), shots=shot_list, store_root=str(store_root),
        seed=seed, batch_size=batch_size, dtype=dtype, device=device, variants=tuple(variant_list),
        max_prompts=max_prompts, show_progress=progress,
    ))
    _report(manifest, store_root, f"--named {EXAMPLE_QUERY}" if example else None)


# Options shared by the analysis commands (heads, mlp, final-layer): declared once.
Models = Annotated[str, typer.Option(help="Comma-separated model references (as for `run`).")]
Relations = Annotated[str, typer.Option(help="Comma-separated relation names or .jsonl files.")]
Shots = Annotated[str, typer.Option(help="Comma-separated k-shot settings.")]
Seed = Annotated[int, typer.Option(help="Seed for demonstrations, corruptions and splits.")]
BatchSize = Annotated[int, typer.Option(min=1, help="Prompts per forward pass.")]
Dtype = Annotated[str, typer.Option(help="float32 (reference) | bfloat16 | float16.")]
Device = Annotated[Optional[str], typer.Option(help="cpu | cuda (default: cuda when present).")]
MaxPrompts = Annotated[Optional[int], typer.Option(min=2, help="Use only the first N prompts of each relation.")]
NBoot = Annotated[int, typer.Option(min=10, help="Bootstrap resamples for intervals.")]
StoreRoot = Annotated[Optional[Path], typer.Option("--store", help="Store root (default: $FACTRECALL_STORE or .factrecall/store).")]
Progress = Annotated[bool, typer.Option(help="Show a progress display.")]


def _run_stage(flow_name: str, models: str, relations: str, shots: str, store: Path | None, line, hint: str,
               **settings) -> None:
    """Validate, run the named flow of `factrecall.flows.sweep`, print one `line(partition)` per written
    partition (or its skip reason), the run summary and a query `hint`."""
    store_root = (store or default_store()).resolve()
    shot_list = _validate(models, relations, shots)
    configure_prefect()
    from factrecall.flows import sweep

    flow = getattr(sweep, flow_name)
    manifest = _guarded(lambda: flow(models=_split(models), relations=_split(relations), shots=shot_list,
                                     store_root=str(store_root), **settings))
    for p in manifest["partitions"]:
        where = f"{p['model']} {p['relation']} shot={p['shot']}:"
        if p["status"] == "written":
            console.print(f"{where} {line(p)} ({p['seconds']:.0f} s)", highlight=False)
        elif p.get("reason"):
            console.print(f"{where} skipped — {p['reason']}", highlight=False)
    _report(manifest, store_root, None)
    if manifest["partitions"]:
        console.print(f"\n{hint}", highlight=False)


@app.command()
def heads(models: Models = "smollm2-135m", relations: Relations = "paper.capital", shots: Shots = "0",
          seed: Seed = 0, batch_size: BatchSize = 16, dtype: Dtype = "float32", device: Device = None,
          max_prompts: MaxPrompts = None, n_boot: NBoot = 1000,
          coverage: Annotated[float, typer.Option(min=0.01, max=1.0, help="Share of negative effect the head set covers.")] = 0.8,
          store: StoreRoot = None, progress: Progress = True) -> None:
    """Step 1: argument-passing heads — head statistics, exact path patching, head sets and plots."""
    first = _split(models)[0] if _split(models) else ""
    _run_stage(
        "analyze_heads", models, relations, shots, store,
        lambda p: f"head set {', '.join(p['head_set']) or '(empty)'} (patching {p['seconds_patching']:.0f} s)",
        f"factrecall query --named argument_heads --param model={first} "
        f"--param relation={_split(relations)[0] if _split(relations) else ''}",
        seed=seed, batch_size=batch_size, dtype=dtype, device=device, max_prompts=max_prompts, n_boot=n_boot,
        coverage=coverage, show_progress=progress)


@app.command()
def mlp(models: Models = "smollm2-135m", relations: Relations = "paper.capital", shots: Shots = "0",
        seed: Seed = 0, batch_size: BatchSize = 16, dtype: Dtype = "float32", device: Device = None,
        max_prompts: MaxPrompts = None, n_boot: NBoot = 1000, store: StoreRoot = None,
        progress: Progress = True) -> None:
    """Steps 2-3: the MLP as an activation over the heads (regressions) and the task-aware component."""
    _run_stage(
        "analyze_mechanism", models, relations, shots, store,
        lambda p: (f"strongest push at layer {p['best_layer']} ({_fmt(p['push'])}), removing it Δp "
                   f"{_fmt(p['removal_delta_p'])}, argument swap {_fmt(p['swap_success'])}"),
        "factrecall query --named mlp_head_effects; factrecall query --named answer_layer",
        seed=seed, batch_size=batch_size, dtype=dtype, device=device, max_prompts=max_prompts, n_boot=n_boot,
        show_progress=progress)


@app.command("final-layer")
def final_layer(models: Models = "smollm2-135m", relations: Relations = "paper.capital", shots: Shots = "0",
                seed: Seed = 0, batch_size: BatchSize = 16, dtype: Dtype = "float32", device: Device = None,
                max_prompts: MaxPrompts = None, n_boot: NBoot = 1000,
                calibration_share: Annotated[float, typer.Option(min=0.05, max=0.95, help="Share of prompts that choose the mitigation.")] = 0.5,
                control_prompts: Annotated[int, typer.Option(min=1, help="Prompts per control relation.")] = 8,
                store: StoreRoot = None, progress: Progress = True) -> None:
    """Step 4: does the last layer suppress the answer, which components do it, and what mitigating costs."""

    def line(p):
        gains = ", ".join(f"{v} {g:+.3f}" for v, g in p["held_out_delta_p"].items())
        return (f"last layer {p['verdict']} (Δp {p['delta_p']:+.3f} [{_fmt(p['delta_p_lo'])}, "
                f"{_fmt(p['delta_p_hi'])}]); held-out Δp: {gains}")

    _run_stage(
        "analyze_final_layer", models, relations, shots, store, line,
        "factrecall query --named final_layer_suppression; factrecall query --named mitigation_gain",
        seed=seed, batch_size=batch_size, dtype=dtype, device=device, max_prompts=max_prompts, n_boot=n_boot,
        calibration_share=calibration_share, control_prompts=control_prompts, show_progress=progress)


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:+.3f}"


def _validate(models: str, relations: str, shots: str) -> list[int]:
    """Check every input before Prefect starts or anything is written; returns the shots."""
    from factrecall.paths import model_cache_dir
    from factrecall.tasks.models import ModelLoadError, resolve
    from factrecall.tasks.relations import RelationError, get_relation

    shot_list = _shots(shots)
    try:
        for name in _split(relations):
            get_relation(name)
        for ref in _split(models):
            resolve(ref, model_cache_dir())
    except (ModelLoadError, RelationError) as exc:
        _fail(str(exc))
    return shot_list


def _guarded(call):
    """Run a flow, turning our input errors into one-line messages."""
    from factrecall.tasks.adapters import UnsupportedModelError
    from factrecall.tasks.models import ModelLoadError
    from factrecall.tasks.relations import RelationError
    from factrecall.tasks.tokenization import TokenizationError

    try:
        return call()
    except (ModelLoadError, UnsupportedModelError, RelationError, TokenizationError, ValueError) as exc:
        _fail(str(exc))


def _report(manifest: dict, store_root: Path, example: str | None) -> None:
    from factrecall.storage.query import named_query, run_query

    written = sum(p["status"] == "written" for p in manifest["partitions"])
    skipped = sum(p["status"] == "skipped" for p in manifest["partitions"])
    console.print(f"run {manifest['run_id']}: {written} partition(s) written, {skipped} unchanged (skipped)")
    console.print(f"store: {store_root}")
    for model, reason in manifest["refused"].items():
        err.print(f"[bold red]refused[/] {model}: {reason}", highlight=False)
    if example and written + skipped:
        console.print(f"\nexample query `factrecall query {example}`:")
        print(run_query(store_root, named_query(EXAMPLE_QUERY)))
    if manifest["refused"]:
        raise typer.Exit(code=1)


@app.command()
def query(
    sql: Optional[str] = typer.Argument(None, help="SQL over the store's views (see --list)."),
    named: Optional[str] = typer.Option(None, help="Run a named query from sql/queries instead."),
    fmt: str = typer.Option("table", "--format", help="table | csv | json | parquet."),
    out: Optional[Path] = typer.Option(None, help="Output file (required for parquet)."),
    store: Path = typer.Option(None, help="Store root (default: $FACTRECALL_STORE or .factrecall/store)."),
    list_: bool = typer.Option(False, "--list", help="List views and named queries."),
    param: list[str] = typer.Option([], "--param", help="Query parameter name=value (repeatable), e.g. --param model=smollm2-135m."),
) -> None:
    """Query the store with DuckDB SQL (read-only)."""
    from factrecall.storage.query import QueryError, list_named_queries, named_query, run_query, view_names

    if list_:
        console.print("views: " + ", ".join(view_names()))
        for name, description in list_named_queries().items():
            console.print(f"  --named {name}: {description}", highlight=False)
        return
    if (sql is None) == (named is None):
        _fail('give either SQL (factrecall query "SELECT ...") or --named NAME; `factrecall query --list` lists both')
    store_root = (store or default_store()).resolve()
    if not store_root.exists():
        _fail(f"no store at {store_root}; run `factrecall run` first or pass --store")
    try:
        text = named_query(named) if named else sql
        params = {}
        for item in param:
            name, sep, value = item.partition("=")
            if not sep or not name:
                _fail(f"--param needs name=value, got {item!r}")
            params[name.strip()] = value
        result = run_query(store_root, text, fmt=fmt, out=out, params=params or None)
    except (QueryError, ValueError) as exc:
        _fail(str(exc))
    if out is not None and fmt != "parquet":
        out.write_text(result)
        console.print(f"wrote {out}")
    else:
        sys.stdout.write(result if result.endswith("\n") else result + "\n")


@app.command()
def models() -> None:
    """List packaged models and supported architecture families."""
    from factrecall.tasks.adapters import ADAPTERS
    from factrecall.tasks.models import describe_models

    table = Table(Column("name", no_wrap=True), "installed", "default", "description")
    for row in describe_models():
        table.add_row(row["name"], "yes" if row["installed"] else "no", "*" if row["default"] else "", row["description"])
    console.print(table)
    families = Table("family", "HF model_type", "norm", "notes")
    for a in ADAPTERS:
        notes = []
        if a.attn_post_norm:
            notes.append("sandwich norms linearised")
        if a.gain_offset:
            notes.append(f"gain = {a.gain_offset:g} + w")
        if a.pos_embed:
            notes.append("learned positions")
        families.add_row(a.family, ", ".join(a.model_types), a.norm_kind, "; ".join(notes) or "-")
    console.print(families)
    console.print("Also accepted: a local HF model directory, a .gguf file, or a hub name (needs network).")


@app.command()
def relations(
    source: Optional[str] = typer.Option(None, help="Only this source: paper | lre | pararel | rome."),
    fmt: str = typer.Option("table", "--format", help="table | csv."),
) -> None:
    """List the built-in relations with their counts."""
    import polars as pl

    from factrecall.tasks.relations import list_relations

    df = list_relations()
    if source:
        df = df.filter(pl.col("source") == source)
    if fmt == "csv":
        sys.stdout.write(df.write_csv())
        return
    table = Table(*[Column(c, no_wrap=c == "name") for c in df.columns])
    for row in df.iter_rows():
        table.add_row(*[str(v) for v in row])
    console.print(table)
    console.print(f"{df.height} relations; a .jsonl file of {{subject, object, template}} lines is also accepted.")


if __name__ == "__main__":  # pragma: no cover
    app()
