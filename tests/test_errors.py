"""The error contract, through the CLI as a user meets it: every expected failure is one line on stderr
and exit code 2, before anything is written (the store unchanged byte for byte); no process the command
started outlives it; transformers' progress bars stay silent with --no-progress."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tiny_models import save_tiny_model_dir

pytestmark = pytest.mark.flow


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model_dir("gpt2", tmp_path_factory.mktemp("models") / "tiny")


def factrecall(*args, env=None, home=None, timeout=300) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    if home is not None:
        full_env["FACTRECALL_HOME"] = str(home)
    full_env.pop("FACTRECALL_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "factrecall.cli", *map(str, args)], capture_output=True, text=True,
                          env=full_env, timeout=timeout)


def fingerprint(root: Path) -> dict | None:
    if not root.exists():
        return None
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


def one_line_error(result: subprocess.CompletedProcess, *words: str) -> str:
    lines = result.stderr.splitlines()
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
    assert "Traceback" not in result.stderr + result.stdout
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def store(tmp_path_factory, model_dir):
    """A store holding one capture (each test checks it is left unchanged)."""
    root = tmp_path_factory.mktemp("errors") / "store"
    done = factrecall("capture", "--models", model_dir, "--max-prompts", "3", "--store", root, "--no-progress",
                      "--no-example", home=root.parent / "home")
    assert done.returncode == 0, done.stderr
    return root


def _bad_model(tmp_path: Path, kind: str) -> Path:
    if kind == "random-bytes.gguf":
        path = tmp_path / "random.gguf"
        path.write_bytes(os.urandom(4096))
    elif kind == "truncated.gguf":
        from factrecall.tasks.models import PACKAGED

        real = PACKAGED["smollm2-135m"].locate(tmp_path)
        path = tmp_path / "truncated.gguf"
        with open(real, "rb") as f:
            path.write_bytes(f.read(200_000))
    elif kind == "config-only directory":
        path = tmp_path / "config-only"
        path.mkdir()
        (path / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 2, "n_head": 2, "n_embd": 8}))
    else:  # "{} config"
        path = tmp_path / "empty-config"
        path.mkdir()
        (path / "config.json").write_text("{}")
        (path / "model.safetensors").write_bytes(b"\0" * 16)
    return path


@pytest.mark.parametrize("kind,words", [
    ("random-bytes.gguf", ["corrupt"]),
    ("truncated.gguf", ["corrupt"]),
    ("config-only directory", ["no weights"]),
    ("{} config", ["config"]),
])
def test_an_unusable_model_is_one_line_before_anything_is_written(store, tmp_path, kind, words):
    before = fingerprint(store)
    started = time.perf_counter()
    result = factrecall("capture", "--models", _bad_model(tmp_path, kind), "--store", store, "--no-progress",
                        home=tmp_path / "home")
    one_line_error(result, *words)
    assert fingerprint(store) == before
    assert time.perf_counter() - started < 60


@pytest.mark.parametrize("args,words", [
    (["--dtype", "float64"], ["float64", "float32"]),
    (["--models", "factrecall-test/no-such-model"], ["factrecall-test/no-such-model"]),
    (["--shots", "0,100"], ["shot 100"]),
    (["--relations", ","], ["--relations", "no relation"]),
    (["--models", ","], ["--models", "no model"]),
    (["--variants", "clean,nope"], ["nope"]),
])
def test_bad_arguments_are_one_line_before_anything_is_written(store, tmp_path, model_dir, args, words):
    before = fingerprint(store)
    base = ["capture", "--models", model_dir, "--store", store, "--no-progress"]
    result = factrecall(*base, *args, home=tmp_path / "home")
    one_line_error(result, *words)
    assert fingerprint(store) == before


def test_relation_file_problems_are_one_line(store, tmp_path, model_dir):
    before = fingerprint(store)
    bad_utf8 = tmp_path / "latin1.jsonl"
    bad_utf8.write_bytes(b'{"subject": "France", "object": "Paris", "template": "The capital of {} is"}\n'
                         b'{"subject": "M\xfcnchen", "object": "Bayern", "template": "{} is in"}\n')
    one_line_error(factrecall("capture", "--models", model_dir, "--relations", bad_utf8, "--store", store,
                              home=tmp_path / "home"), f"{bad_utf8}:2", "UTF-8")
    contradicting = tmp_path / "contradicting.jsonl"
    contradicting.write_text('{"subject": "France", "object": "Paris", "template": "The capital of {} is"}\n'
                             '{"subject": "Spain", "object": "Madrid", "template": "The capital of {} is"}\n'
                             '{"subject": "France", "object": "Lyon", "template": "The capital of {} is"}\n')
    one_line_error(factrecall("capture", "--models", model_dir, "--relations", contradicting, "--store", store,
                              home=tmp_path / "home"), f"{contradicting}:3", "'Lyon'", "'Paris'", "line 1")
    assert fingerprint(store) == before


def test_repairs_of_a_relation_file_are_reported_and_recorded(tmp_path, model_dir):
    path = tmp_path / "facts.jsonl"
    line = {"subject": "France", "object": "Paris", "template": "The capital of {} is"}
    path.write_text("\n".join([json.dumps(line), json.dumps(line), json.dumps({**line, "subject": " Spain ",
                                                                                 "object": "Madrid"})]) + "\n")
    store = tmp_path / "store"
    done = factrecall("capture", "--models", model_dir, "--relations", path, "--store", store, "--no-progress",
                      "--no-example", home=tmp_path / "home")
    assert done.returncode == 0, done.stderr
    (summary,) = [x for x in done.stdout.splitlines() if x.startswith(f"relation {path}")]
    assert "stripped" in summary and "dropped 1 duplicate line" in summary
    from factrecall.storage.query import connect

    repairs = json.loads(connect(store).execute("SELECT relation_repairs FROM runs").fetchall()[0][0])
    assert list(repairs.values()) == [["stripped leading/trailing whitespace from 1 subject/object string(s)",
                                       "dropped 1 duplicate line(s)"]]


def test_an_object_whose_first_token_is_not_a_character_is_warned_about(tmp_path, model_dir):
    path = tmp_path / "emoji.jsonl"
    path.write_text('{"subject": "a party", "object": "\\ud83c\\udf89", "template": "The symbol of {} is"}\n'
                    '{"subject": "a win", "object": "Trophy", "template": "The symbol of {} is"}\n')
    done = factrecall("capture", "--models", model_dir, "--relations", path, "--store", tmp_path / "s",
                      "--no-progress", "--no-example", home=tmp_path / "home")
    assert done.returncode == 0, done.stderr
    (warning,) = [x for x in done.stderr.splitlines() if x.startswith("warning:")]
    assert "not a whole character" in warning and "🎉" in warning


def test_a_read_only_store_is_one_line_even_when_nothing_needs_computing(store, tmp_path, model_dir):
    """As root a chmod would not stop writes, so the command is told the store is read-only the way the
    operating system would tell an ordinary user (os.access), through a sitecustomize hook."""
    before = fingerprint(store)
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import os\n_real = os.access\n"
        f"def access(path, mode, *a, **k):\n    if str(path).startswith({str(store)!r}) and mode & os.W_OK:\n"
        "        return False\n    return _real(path, mode, *a, **k)\nos.access = access\n")
    env = {"PYTHONPATH": f"{hook}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    result = factrecall("capture", "--models", model_dir, "--max-prompts", "3", "--store", store, "--no-progress",
                        env=env, home=tmp_path / "home")
    one_line_error(result, str(store), "not writable")
    assert fingerprint(store) == before


def test_a_state_folder_that_is_a_file_is_one_line(tmp_path, model_dir):
    home = tmp_path / "home-file"
    home.write_text("not a folder")
    result = factrecall("capture", "--models", model_dir, "--no-progress", home=home)
    one_line_error(result, str(home), "FACTRECALL_HOME")
    assert home.read_text() == "not a folder"


def test_querying_an_empty_store_is_one_line(tmp_path):
    (tmp_path / "s").mkdir()
    result = factrecall("query", "--store", tmp_path / "s", "SELECT * FROM logits")
    one_line_error(result, "table logits is empty", "factrecall capture")


def test_query_output_shows_leading_spaces(tmp_path):
    (tmp_path / "s").mkdir()
    result = factrecall("query", "--store", tmp_path / "s", "SELECT ' Paris' AS token, 'Paris' AS plain")
    assert result.returncode == 0, result.stderr
    assert "' Paris'" in result.stdout and " Paris " in result.stdout.replace("' Paris'", "")


def test_no_progress_silences_every_progress_bar(tmp_path, model_dir):
    done = factrecall("capture", "--models", model_dir, "--max-prompts", "3", "--store", tmp_path / "s",
                      "--no-progress", "--no-example", "--threads", "1", home=tmp_path / "home")
    assert done.returncode == 0 and done.stderr == "", done.stderr
    from factrecall.storage.query import connect

    config = json.loads(connect(tmp_path / "s").execute("SELECT config FROM runs").fetchall()[0][0])
    assert config["threads"] == 1


def test_a_killed_command_leaves_no_process_behind(tmp_path, model_dir):
    """kill -9 of factrecall while its Prefect server runs: the server is gone within a few seconds."""
    cmd = [sys.executable, "-m", "factrecall.cli", "capture", "--models", model_dir, "--max-prompts", "200",
           "--batch-size", "1", "--store", str(tmp_path / "s"), "--no-progress", "--no-example"]
    proc = subprocess.Popen(cmd, env={**os.environ, "FACTRECALL_HOME": str(tmp_path / "home")},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    parent = psutil.Process(proc.pid)
    deadline = time.time() + 120
    children = []
    while time.time() < deadline and not children:  # wait for Prefect's server to be up
        assert proc.poll() is None, proc.stderr.read().decode()
        children = [c for c in parent.children(recursive=True) if "uvicorn" in " ".join(c.cmdline())]
        time.sleep(0.2)
    assert children, "the command should have started Prefect's server"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    gone, alive = psutil.wait_procs(children, timeout=5)
    assert not alive, [c.cmdline() for c in alive]


def test_a_stale_temporary_folder_in_the_model_cache_is_removed(tmp_path):
    """A kill during a dequantisation leaves `.<sha>.<pid>.<uuid>.tmp`; the next start deletes it."""
    from factrecall.tasks.models import remove_stale_temporaries

    cache = tmp_path / "cache"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = cache / f".{'a' * 64}.{dead.pid}.{'b' * 32}.tmp"
    live = cache / f".{'c' * 64}.{os.getpid()}.{'d' * 32}.tmp"
    for folder in (stale, live):
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(b"x" * 100)
    assert remove_stale_temporaries(cache) == [stale]
    assert not stale.exists() and live.exists()


def test_a_prompt_longer_than_the_model_is_one_line_before_anything_is_written(store, tmp_path, model_dir):
    before = fingerprint(store)
    path = tmp_path / "long.jsonl"
    template = "Once upon a time " * 80 + "the capital of {} is"
    path.write_text(json.dumps({"subject": "France", "object": "Paris", "template": template}) + "\n")
    result = factrecall("capture", "--models", model_dir, "--relations", path, "--store", store, "--no-progress",
                        home=tmp_path / "home")
    one_line_error(result, "tokens, more than max_length=256")
    assert fingerprint(store) == before
