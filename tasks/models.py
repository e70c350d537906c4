"""Loading models by packaged name, HF hub name, local directory or GGUF file.

GGUF checkpoints are dequantised once and cached as safetensors under
`<state>/models/<sha256 of the GGUF file>/`, so later loads skip the slow dequantisation.
Every loaded model uses eager attention (capture reads attention weights) and is checked against
its family adapter before use.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import struct
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from .adapters import FamilyAdapter, ModelDims, UnsupportedModelError, adapter_for_config
from .packaged import DEFAULT_MODEL, PACKAGED, PackagedModelError, describe_models


class ModelLoadError(ValueError):
    """A model reference that cannot be resolved or a checkpoint that cannot be read."""


class DeviceMemoryError(ModelLoadError):
    """A stage that does not fit in the device's memory even one prompt at a time."""




@dataclass
class LoadedModel:
    model_id: str  # partition value: see `model_key`
    source: str  # what was asked for, resolved (file path, directory or hub name)
    file_sha256: str | None  # sha256 of the GGUF or weights file when known
    model: torch.nn.Module
    tokenizer: object
    adapter: FamilyAdapter
    dims: ModelDims
    dtype: torch.dtype
    device: torch.device

    @property
    def pad_id(self) -> int:
        """Token id used for right padding (padding never reaches a real token: attention is causal)."""
        return self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

    @property
    def max_length(self) -> int | None:
        n = getattr(self.model.config, "max_position_embeddings", None) or getattr(self.model.config, "n_positions", None)
        return int(n) if n else None


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def sanitize_id(text: str) -> str:
    """A Hive-safe partition value: `[A-Za-z0-9_.-]+`."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "model"


def sha256_file(path: Path, cache_dir: Path | None = None) -> str:
    """sha256 of a file, memoised by (path, size, mtime) in `<cache_dir>/sha256.json`."""
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    memo_path = cache_dir / "sha256.json" if cache_dir else None
    memo = {}
    if memo_path and memo_path.exists():
        try:
            memo = json.loads(memo_path.read_text())
        except json.JSONDecodeError:
            memo = {}
    if key in memo:
        return memo[key]
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    value = digest.hexdigest()
    if memo_path:
        memo[key] = value
        memo_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo_path.with_suffix(f".{uuid.uuid4().hex}.tmp")
        tmp.write_text(json.dumps(memo))
        os.replace(tmp, memo_path)
    return value


def _validate_gguf(path: Path) -> None:
    from gguf import GGUFReader

    try:
        GGUFReader(str(path))
    except Exception as exc:  # the reader raises many types for a damaged file
        raise ModelLoadError(
            f"GGUF file {path} is corrupt or truncated ({type(exc).__name__}: {exc}); "
            "reinstall the package or download the file again"
        ) from exc


def _dequantise_to_cache(gguf_path: Path, target: Path) -> None:
    """Dequantise a GGUF checkpoint once and save it as safetensors + tokenizer at `target` (atomic)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    _validate_gguf(gguf_path)
    kwargs = dict(gguf_file=gguf_path.name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), **kwargs)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf_path.parent), dtype=torch.float32, quantization_config=GgufConfig(dequantize=True), **kwargs
        )
    except (ValueError, KeyError, RuntimeError, OSError) as exc:
        raise ModelLoadError(f"transformers cannot load GGUF {gguf_path}: {exc}") from exc
    adapter_for_config(model.config)  # refuse unsupported architectures before caching
    tmp = target.parent / f".{target.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp"  # pid: see remove_stale_temporaries
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "factrecall-source.json").write_text(json.dumps({"gguf": str(gguf_path)}))
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)


DTYPE_SUFFIX = {"float32": "", "bfloat16": ".bf16", "float16": ".fp16"}


def model_key(model_id: str, dtype: str) -> str:
    """The model's partition value: its id, with ".bf16"/".fp16" for a dtype other than the float32
    reference (a model read in another dtype is another model: its numbers are never pooled with float32's)."""
    return model_id + DTYPE_SUFFIX[dtype]


def _file_id(name: str, digest: str | None) -> str:
    """A file or directory model's id: its sanitised name and the first 8 hex digits of its sha256, so two
    different files with the same name never share an id."""
    return sanitize_id(name) + (f"-{digest[:8]}" if digest else "")


def resolve(ref: str, cache_dir: Path) -> tuple[str, str, Path | str, str | None]:
    """(model_id, kind, location, sha256) for a model reference; kind is gguf | dir | hub.

    Ids: a packaged model's name; "<file stem>-<sha256[:8]>" for a .gguf file; "<folder>-<sha256[:8]>" of
    its first weights file for a directory; "org--name" for a hub name."""
    if ref in PACKAGED:
        packaged = PACKAGED[ref]
        try:
            path = packaged.locate(cache_dir)
        except PackagedModelError as exc:
            raise ModelLoadError(str(exc)) from None
        digest = sha256_file(path, cache_dir)
        if packaged.sha256 and digest != packaged.sha256:
            raise ModelLoadError(f"{path} has sha256 {digest[:16]}…, not {packaged.name}'s {packaged.sha256[:16]}…; "
                                 f"delete it and rerun (it is joined again from {', '.join(packaged.package_names)})")
        return ref, "gguf", path, digest
    path = Path(ref).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"GGUF file {path} does not exist")
        digest = sha256_file(path, cache_dir)
        return _file_id(path.stem, digest), "gguf", path.resolve(), digest
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelLoadError(f"{path} is a directory without config.json; give a saved HF model directory")
        weights = sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin"))
        digest = sha256_file(weights[0], cache_dir) if weights else None
        return _file_id(path.name, digest), "dir", path.resolve(), digest
    if re.fullmatch(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+", ref):
        return sanitize_id(ref.replace("/", "--")), "hub", ref, None
    raise ModelLoadError(
        f"unknown model {ref!r}: packaged models are {', '.join(PACKAGED)}; otherwise give a local HF "
        "model directory, a .gguf file, or a hub name of the form 'org/name' such as "
        "'openai-community/gpt2' (needs network). "
        "`factrecall models` lists them"
    )


@dataclass(frozen=True)
class PreparedModel:
    """A model reference resolved, its files local and its config checked, weights not loaded yet."""

    ref: str
    model_id: str  # with the dtype suffix (`model_key`)
    kind: str  # gguf | dir | hub
    location: str  # the file, directory or hub name asked for
    load_from: str  # what transformers loads (the dequantised cache for a GGUF file)
    file_sha256: str | None
    dtype: str
    max_length: int | None  # the model's context length (positions), from its config


def prepare_model(ref: str, dtype: str = "float32", cache_dir: Path | None = None) -> PreparedModel:
    """Resolve ``ref``, dequantise a GGUF file into the cache once, and check that transformers can read
    its config and that its family is supported: every failure here is a ``ModelLoadError`` or an
    ``UnsupportedModelError`` with one line to say, before any weights are loaded."""
    from transformers import AutoConfig

    from factrecall.paths import model_cache_dir

    if dtype not in DTYPES:
        raise ModelLoadError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    cache_dir = Path(cache_dir) if cache_dir else model_cache_dir()
    remove_stale_temporaries(cache_dir)
    model_id, kind, location, digest = resolve(ref, cache_dir)
    load_from = str(location)
    if kind == "hub":
        _check_hub_reachable(ref)
    if kind == "gguf":
        directory = cache_dir / digest
        if not (directory / "config.json").exists():
            _dequantise_to_cache(Path(location), directory)
        load_from = str(directory)
    try:
        config = AutoConfig.from_pretrained(load_from)
    except (OSError, ValueError, KeyError) as exc:
        hint = (" (the hub is unreachable offline: use a packaged model or a local directory)" if kind == "hub"
                else "; give a saved HF model directory (config.json and weights)")
        raise ModelLoadError(f"cannot read the config of {ref!r}: {str(exc).splitlines()[0]}{hint}") from None
    adapter_for_config(config)
    if kind == "dir" and digest is None:
        raise ModelLoadError(f"{location} has a config but no weights (*.safetensors or *.bin); give a saved HF "
                             "model directory with its weights")
    n = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    return PreparedModel(ref, model_key(model_id, dtype), kind, str(location), load_from, digest, dtype,
                         int(n) if n else None)


def parameter_count(directory: str | Path) -> int | None:
    """Parameters of a saved HF model: the sum of the tensor sizes in its ``*.safetensors`` headers (no
    weights read; a tied unembedding is saved once). None for a hub name or a folder without safetensors."""
    import math

    files = sorted(Path(directory).glob("*.safetensors")) if Path(directory).is_dir() else []
    if not files:
        return None
    total = 0
    for f in files:
        with f.open("rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        total += sum(math.prod(v["shape"]) for k, v in header.items() if k != "__metadata__")
    return total


def loaded_model_record(lm: LoadedModel, ref: str) -> dict:
    """The ``models`` record of a loaded model (parameters counted in memory, a shared tensor once)."""
    n_params = sum(p.numel() for p in lm.model.parameters())
    return describe_model(lm.model_id, ref, str(lm.dtype).removeprefix("torch."), lm.file_sha256, lm.model.config,
                          n_params)


def prepared_model_record(prepared: PreparedModel) -> dict:
    """The ``models`` record of a prepared model, without loading its weights (config and safetensors headers);
    an unreadable header leaves the count unknown rather than failing the run."""
    from transformers import AutoConfig

    try:
        n_params = parameter_count(prepared.load_from)
    except (OSError, ValueError, KeyError, struct.error):
        n_params = None
    return describe_model(prepared.model_id, prepared.ref, prepared.dtype, prepared.file_sha256,
                          AutoConfig.from_pretrained(prepared.load_from), n_params)


def describe_model(model_id: str, ref: str, dtype: str, file_sha256: str | None, config,
                   n_params: int | None) -> dict:
    """The ``models`` record of a model (storage/records.py): family, sizes and parameter counts."""
    adapter = adapter_for_config(config)
    dims = adapter.dims(config)
    packaged = PACKAGED.get(ref)
    return {"model": model_id, "ref": ref, "family": adapter.family, "n_params": n_params,
            "n_params_nominal": packaged.params if packaged else None, "n_layers": dims.n_layers,
            "n_heads": dims.n_heads, "n_kv_heads": int(getattr(config, "num_key_value_heads", None) or dims.n_heads),
            "d_model": dims.d_model, "vocab_size": int(config.vocab_size), "dtype": dtype,
            "file_sha256": file_sha256}


def load_tokenizer(prepared: PreparedModel):
    """The model's tokenizer (its pad token set to EOS where it has none)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(prepared.load_from)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load the tokenizer of {prepared.ref!r}: {str(exc).splitlines()[0]}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def resolve_device(device: str | None) -> torch.device:
    """The device a ``--device`` value names: None (auto) is the first CUDA device when one is present, else the
    CPU; "cuda" (or "cuda:N") where torch sees no such device is a one-line ``ModelLoadError``."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except (RuntimeError, ValueError):
        raise ModelLoadError(f"--device {device!r} is not a device; use cpu or cuda (or cuda:N)") from None
    if chosen.type not in ("cpu", "cuda"):
        raise ModelLoadError(f"--device {device!r}: factrecall runs on cpu or cuda")
    if chosen.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            build = "a CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}, but no device"
            raise ModelLoadError(f"--device {device}: torch sees no CUDA device here (torch {torch.__version__}, "
                                 f"{build}); use --device cpu, or run where a GPU is present")
        if chosen.index is not None and chosen.index >= count:
            raise ModelLoadError(f"--device {device}: there are {count} CUDA device(s) (cuda:0..cuda:{count - 1})")
    return chosen


def load_model(ref: str | PreparedModel, dtype: str = "float32", device: str | None = None,
               cache_dir: Path | None = None, tokenizer=None) -> LoadedModel:
    """Load a model and tokenizer ready for capture (eval mode, eager attention)."""
    from transformers import AutoModelForCausalLM

    prepared = ref if isinstance(ref, PreparedModel) else prepare_model(ref, dtype, cache_dir)
    torch_device = resolve_device(device)
    try:  # the tokenizer loads in a thread while the weights load (most of both is I/O and parsing)
        with ThreadPoolExecutor(max_workers=1) as pool:
            tokenizer_future = pool.submit(load_tokenizer, prepared) if tokenizer is None else None
            model = AutoModelForCausalLM.from_pretrained(prepared.load_from, dtype=DTYPES[prepared.dtype],
                                                         attn_implementation="eager")
            tokenizer = tokenizer if tokenizer_future is None else tokenizer_future.result()
    except OSError as exc:
        hint = " (the hub is unreachable offline: use a packaged model or a local directory)" if prepared.kind == "hub" else ""
        raise ModelLoadError(f"cannot load {prepared.ref!r}: {str(exc).splitlines()[0]}{hint}") from None
    adapter = adapter_for_config(model.config)
    model = model.to(torch_device).eval()
    return LoadedModel(
        model_id=prepared.model_id,
        source=prepared.location,
        file_sha256=prepared.file_sha256,
        model=model,
        tokenizer=tokenizer,
        adapter=adapter,
        dims=adapter.dims(model.config),
        dtype=DTYPES[prepared.dtype],
        device=torch_device,
    )


def _check_hub_reachable(ref: str, timeout: float = 3.0) -> None:
    """A hub model must be in the local HF cache or the hub must answer (else transformers retries for ~30 s)."""
    import socket

    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(ref, "config.json"), str):
        return
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
    except OSError as exc:
        raise ModelLoadError(f"cannot load {ref!r}: it is not in the local Hugging Face cache and the hub cannot be "
                             f"reached ({exc.strerror or exc}); use a packaged model, a local directory or a .gguf "
                             "file") from None


def remove_stale_temporaries(cache_dir: Path) -> list[Path]:
    """Delete the temporary files and folders of the model cache whose writing process is gone (a kill
    during a dequantisation or an assembly leaves ``.<name>.<pid>.<uuid>.tmp`` behind); returns them."""
    removed = []
    if not cache_dir.is_dir():
        return removed
    for path in [*cache_dir.glob(".*.tmp"), *cache_dir.glob("gguf/*.tmp")]:
        parts = path.name.split(".")
        pid = next((int(p) for p in parts if p.isdigit()), None)
        if pid is not None and _alive(pid):
            continue
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


__all__ = [
    "DEFAULT_MODEL", "DeviceMemoryError", "LoadedModel", "ModelLoadError", "PACKAGED", "PreparedModel", "UnsupportedModelError",
    "describe_model", "describe_models", "load_model", "loaded_model_record", "parameter_count",
    "prepared_model_record", "load_tokenizer", "model_key", "prepare_model", "remove_stale_temporaries",
    "resolve", "resolve_device", "sanitize_id",
]
