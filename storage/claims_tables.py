"""The claims stage's table (docs/METHOD.md §10): one row per claim of one partition.

Partition columns (model, relation, shot, result_id) come from the store.
"""

from __future__ import annotations

import pyarrow as pa

from factrecall.tasks.stage_api import Rows

from .columns import encode_rows
from .columns import field as _f

SCHEMAS: dict[str, pa.Schema] = {
    "claims": pa.schema([
        _f("claim", pa.string()),  # tasks.claims.CLAIMS name, e.g. "final_layer_suppresses"
        _f("step", pa.int8()),  # the paper's step (1-4)
        _f("statistic", pa.string()),  # what value is
        _f("value", pa.float64()),
        _f("lo", pa.float64()),  # its interval (null: none, e.g. fewer than 2 prompts)
        _f("hi", pa.float64()),
        _f("n", pa.int32()),  # prompts (answered correctly) the statistic rests on
        _f("threshold", pa.float64()),  # the effect size the interval is compared with
        _f("null_value", pa.float64()),  # the stated null (0, 0.5, the shuffled-prompt R², the chance rate)
        _f("verdict", pa.string()),  # holds | does not | inconclusive | not tested
        _f("note", pa.string()),
        _f("value_all", pa.float64()),  # the same statistic over every prompt, kept beside (null: not defined)
        _f("lo_all", pa.float64()),
        _f("hi_all", pa.float64()),
        _f("n_all", pa.int32()),
        _f("rule", pa.string()),
        _f("source_stage", pa.string()),  # the stage whose result holds the statistic
        _f("source_result_id", pa.string()),  # exactly which result
    ]),
}


def encode(part: Rows) -> dict[str, pa.Table]:
    return encode_rows(SCHEMAS, part.tables)
