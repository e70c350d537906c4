"""Parquet writer options shared by every table of the store."""

from __future__ import annotations

import pyarrow as pa

_COMPRESSION = "zstd"


def parquet_options(schema: pa.Schema) -> dict:
    """Writer options: dictionary-encode only strings (floats never repeat), byte-stream-split floats
    (activations compress better), fast zstd. Halves write time on activation tables."""
    strings, floats = [], []
    for f in schema:
        t, leaf = f.type, f.name
        if pa.types.is_list(t) or pa.types.is_fixed_size_list(t) or pa.types.is_large_list(t):
            t, leaf = t.value_type, f"{f.name}.list.{t.value_field.name}"
        if pa.types.is_string(t) or pa.types.is_large_string(t):
            strings.append(leaf)
        elif pa.types.is_floating(t):
            floats.append(leaf)
    return dict(compression=_COMPRESSION, compression_level=1, use_dictionary=strings or False,
                use_byte_stream_split=floats or False)
