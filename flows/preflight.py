"""Everything a command can check before it writes anything (the error contract in the README): the
store is writable; every relation loads and every (relation, shot) yields its prompts; every model
resolves, its files are readable, its config is supported and its tokenizer tokenizes every prompt.
A failure is one ``PreflightError`` line naming what is wrong; nothing has been written.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from factrecall.storage.location import is_object_store, store_location
from factrecall.tasks.prompts import build_prompts
from factrecall.tasks.tokenization import TokenizationError, tokenize_prompts

__all__ = ["PreflightError", "check_store_writable", "preflight"]


class PreflightError(ValueError):
    """A command cannot start: the message says what is wrong and what to do."""


def check_store_writable(root) -> None:
    """The store folder exists and is writable, or can be created; an object store takes a probe object (written
    and deleted) under its prefix."""
    root = store_location(root)
    if is_object_store(root):
        root.exists()  # a store that does not answer is StoreAccessError, not "not writable"
        probe = root / f"_probe-{uuid.uuid4().hex}"
        try:
            with root.fs.open_output_stream(probe.key) as out:
                out.write(b"")
            probe.unlink(missing_ok=True)
        except OSError as exc:
            raise PreflightError(f"the store {root} is not writable ({' '.join(str(exc).split())[:160]}); check the "
                                 "bucket and the credentials (AWS_* variables for s3://), or pass another --store") from None
        return
    probe = root
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise PreflightError(f"the store {root} cannot be created: {probe} is a file, not a folder; "
                             "pass another --store (or set FACTRECALL_STORE / FACTRECALL_HOME)")
    if not os.access(probe, os.W_OK | os.X_OK):
        what = "is not writable" if probe == root else f"cannot be created ({probe} is not writable)"
        raise PreflightError(f"the store {root} {what}; pass a writable --store, or query it with "
                             "`factrecall query` (which only reads)")
    if probe == root:
        for sub in (p for p in root.iterdir() if p.is_dir()):
            if not os.access(sub, os.W_OK | os.X_OK):
                raise PreflightError(f"the store {root} is not writable ({sub} is not); pass a writable --store")


def preflight(stage, config, handles, relations, shots: list[int], store_root: Path) -> list[str]:
    """Check everything before the first write (see module docstring); returns warnings to print."""
    check_store_writable(store_root)
    variants = tuple(getattr(config, "variants", ("clean",)))
    prompts = {}
    for relation in relations:
        for shot in shots:
            try:
                prompts[(relation.name, shot)] = build_prompts(relation, shot, config.seed, variants=variants,
                                                               max_prompts=config.max_prompts)
            except ValueError as exc:
                raise PreflightError(f"{relation.name} at shot {shot}: {exc}") from None
    warnings = []
    for handle in handles:
        tokenizer = handle.tokenizer()
        max_length = handle.prepare().max_length if handle.prepare() is not None else None
        odd: set[str] = set()
        for (relation, shot), built in prompts.items():
            try:
                tokenized = tokenize_prompts(tokenizer, built, max_length)
            except TokenizationError as exc:
                raise PreflightError(f"{handle.model_id}, {relation} at shot {shot}: {exc}") from None
            odd |= {f"{p.prompt.object!r} (first token {p.answer_token!r})" for p in tokenized
                    if "\ufffd" in p.answer_token or not p.answer_token.strip()}
        if odd:
            shown = ", ".join(sorted(odd)[:3]) + (f" and {len(odd) - 3} more" if len(odd) > 3 else "")
            warnings.append(f"warning: {handle.model_id}: the first token of {len(odd)} object(s) is not a whole "
                            f"character, so the answer token is a byte fragment: {shown}")
    return warnings
