"""A tripwire for stage versions: each stage's result identity holds its explicit ``version``, not a hash of
the code, so that refactors do not invalidate the store. This test fails when the code of a stage (its
``code`` modules) changes, until someone decides: if results change, bump the stage's version in
factrecall/stages.py; either way record the new digest with `python tests/test_stage_versions.py --update`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from factrecall.flows.runner import code_digest
from factrecall.stages import STAGES

RECORD = Path(__file__).with_name("stage_versions.json")


def current() -> dict:
    return {name: {"version": s.version, "digest": code_digest(s)} for name, s in STAGES.items()}


def test_stage_code_changes_come_with_a_version_decision():
    recorded = json.loads(RECORD.read_text())
    now = current()
    assert set(recorded) == set(now), "a stage was added or removed: record it with --update"
    changed = [f"{name}: recorded v{recorded[name]['version']} digest {recorded[name]['digest']}, now "
               f"v{now[name]['version']} digest {now[name]['digest']}" for name in now if recorded[name] != now[name]]
    assert not changed, ("the code of a stage changed. If its results change, bump its version in "
                         "factrecall/stages.py. Then run `python tests/test_stage_versions.py --update`.\n"
                         + "\n".join(changed))


if __name__ == "__main__" and sys.argv[1:] == ["--update"]:
    RECORD.write_text(json.dumps(current(), indent=1, sort_keys=True) + "\n")
    print(f"recorded {RECORD}")
