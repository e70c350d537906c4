"""Test session set-up: isolated state (Prefect home, stores) in a temporary directory; the
dequantised model cache shared with the project (`.factrecall/models`) so it is built only once."""

import atexit
import os
import pathlib
import shutil
import sys
import tempfile

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).parent))
REPO = pathlib.Path(__file__).resolve().parent.parent
os.environ.setdefault("FACTRECALL_MODEL_CACHE", str(REPO / ".factrecall" / "models"))
os.environ["FACTRECALL_HOME"] = tempfile.mkdtemp(prefix="factrecall-test-home-")
atexit.register(shutil.rmtree, os.environ["FACTRECALL_HOME"], ignore_errors=True)  # no temporary folder outlives the run
os.environ.pop("FACTRECALL_STORE", None)


@pytest.fixture(scope="session", autouse=True)
def _stop_prefects_temporary_server():
    """Tests that run a flow in this process start Prefect's temporary server, which Prefect stops at exit with a
    log line; by then pytest has closed the stream its handler writes to ("--- Logging error ---" ended every
    run's output). Stop it while the session's streams are open."""
    yield
    server = sys.modules.get("prefect.server.api.server")
    for instance in list(getattr(getattr(server, "SubprocessASGIServer", None), "_instances", {}).values()):
        instance.stop()


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory):
    """The packaged SmolLM2-135M (Llama family), loaded once per session on the CPU in float32.

    The dequantised weights go to FACTRECALL_MODEL_CACHE (the project's `.factrecall/models` unless
    set), so only the first session on a machine pays the ~40 s dequantisation.
    """
    from factrecall.tasks.models import load_model

    return load_model("smollm2-135m", dtype="float32", device="cpu")


@pytest.fixture(scope="session")
def smollm2_heads(smollm2, tmp_path_factory):
    """A store holding the head analysis of smollm2-135m on the capital task at shot 0 (60 prompts),
    shared by the integration tests of steps 1-3 so it runs once per session: (root, summary)."""
    from factrecall.flows.runner import run_stage
    from factrecall.tasks.heads_stage import HeadsConfig
    from factrecall.tasks.relations import paper_capital

    root = tmp_path_factory.mktemp("smollm2-heads")
    outcome = run_stage(root, "heads", smollm2, paper_capital(), 0, HeadsConfig(max_prompts=60, n_boot=100), "t")
    return root, outcome.summary
