"""`edge-agent models pull NAME`: download a variant mix of an onnx-community Florence-2 export
with huggingface_hub (optional extra `[pull]`), with its progress bars.

Only what the engine needs is fetched: one graph per part, as the mix says (models/variants.py;
`vision_encoder=fp32,int8` is fp32 vision with int8 text graphs), with their external-data
files, the root JSON files and the tokenizer files.  The repository's file list is read first:
a graph the repository lacks fails before anything is downloaded, naming the suffixes it does
have, and each graph's size and the total are printed before the download starts.
"""
from __future__ import annotations

import logging
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from edge_agent.models.errors import DownloadError, ModelDirError, ModelError, ModelSettingError
from edge_agent.models.modeldir import open_model_dir, read_mix
from edge_agent.models.variants import AUTO, PARTS, Mix, label

log = logging.getLogger(__name__)

REPOS = {
    "base": "onnx-community/Florence-2-base-ft",
    "large": "onnx-community/Florence-2-large-ft",
}
ALIASES = {"florence-2-base-ft": "base", "florence-2-large-ft": "large", "base-ft": "base", "large-ft": "large"}
# The fastest mix on CPU within 800 MB peak on a base-sized model (benchmarks/variants.py,
# docs/models.md): int8 everywhere was the only mix measured within 800 MB (744 MB); fp32 vision
# with int8 text was faster but peaked at 1085 MB, q4 vision with int8 text at 815 MB.
DEFAULT_VARIANT = "int8"
ROOT_FILES = ("config.json", "generation_config.json", "preprocessor_config.json", "tokenizer.json",
              "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.json", "merges.txt")
INSTALL_HINT = "pip install 'edge-agent[pull]'"


def repo_id(name: str) -> str:
    """'base' | 'large' | 'Florence-2-base-ft' | 'owner/repo' -> a Hub repository id."""
    key = name.strip().lower()
    key = ALIASES.get(key, ALIASES.get(key.removeprefix("onnx-community/"), key))
    if key in REPOS:
        return REPOS[key]
    if name.count("/") == 1 and all(name.split("/")):
        return name.strip()
    raise ModelSettingError(f"unknown model {name!r}: expected base, large or an owner/repo Hub id")


def pull_mix(variant) -> Mix:
    """The mix to download: parts left to `auto` take DEFAULT_VARIANT's choice."""
    mix, default = read_mix(variant), read_mix(DEFAULT_VARIANT)
    return mix.replace(**{p: default[p] for p, s in mix.items() if s == AUTO})


@dataclass(frozen=True)
class Plan:
    """What one pull fetches: files with their sizes (bytes, None when the Hub did not say)."""
    repo: str
    revision: str | None
    graphs: dict[str, list[tuple[str, int | None]]]  # part -> [(graph file, size), (its external data, size)...]
    root: list[str]

    @property
    def files(self) -> list[str]:
        return [*self.root, *(name for files in self.graphs.values() for name, _ in files)]

    def part_bytes(self, part: str) -> int:
        return sum(size or 0 for _, size in self.graphs[part])

    @property
    def total_bytes(self) -> int:
        return sum(self.part_bytes(p) for p in self.graphs)


def plan(repo: str, mix: Mix, listing: dict[str, int | None], revision: str | None = None,
         optimize: bool = False) -> Plan:
    """Which files of the repository (`listing`: path -> size) the mix needs (and, with optimize, the
    fp32 decoder_model_merged that `models optimize` reads); ModelDirError naming the first graph
    the repository lacks."""
    graphs = {}
    extra = optimize and mix["decoder_model_merged"] != ""
    wanted = list(mix.items()) + ([("decoder_model_merged (fp32, for optimize)", "")] if extra else [])
    for key, s in wanted:
        part = key.split()[0]
        name = f"onnx/{part}{s}.onnx"
        if name not in listing:
            have = sorted((label(f[len(f"onnx/{part}"):-len(".onnx")]) for f in listing
                           if f.startswith(f"onnx/{part}") and f.endswith(".onnx")
                           and _suffix_of(f, part) is not None), key=str)
            raise ModelDirError(f"{repo} has no {name} (variant {mix.spelling}); its {part} variants: "
                                f"{', '.join(have) or 'none'}")
        data = sorted(f for f in listing if f.startswith(name + "_data"))
        graphs[key] = [(name, listing[name]), *((f, listing[f]) for f in data)]
    root = [f for f in ROOT_FILES if f in listing]
    return Plan(repo, revision, graphs, root)


def _suffix_of(file: str, part: str) -> str | None:
    from edge_agent.models.variants import SUFFIXES

    s = file[len(f"onnx/{part}"):-len(".onnx")]
    return s if s in SUFFIXES else None


def describe(p: Plan, mix: Mix) -> list[str]:
    """One line per graph with its size, then the total."""
    lines = [f"{p.repo}: variant {mix.spelling}"]
    for part, files in p.graphs.items():
        lines.append(f"  {files[0][0]:42s} {_mb(p.part_bytes(part))}")
    lines.append(f"  {'total (graphs)':42s} {_mb(p.total_bytes)}")
    return lines


def _mb(n: int) -> str:
    return f"{n / 1e6:9.1f} MB"


def _hub():
    try:
        import huggingface_hub
    except ImportError:
        raise ModelError(f"huggingface_hub is not installed: {INSTALL_HINT}") from None
    return huggingface_hub


def network_failure(hub, repo: str, exc: Exception) -> DownloadError:
    """One line for a download that could not reach the Hub (the CLI exits 1)."""
    errors = hub.errors
    if isinstance(exc, (errors.RepositoryNotFoundError, errors.GatedRepoError)):
        return DownloadError(f"{repo}: {type(exc).__name__}: {str(exc).splitlines()[0]}")
    if isinstance(exc, errors.OfflineModeIsEnabled) or "offline" in str(exc).lower():
        reason = "offline mode is on (HF_HUB_OFFLINE=1) and the files are not in the cache"
    else:
        reason = f"the Hugging Face Hub is unreachable ({type(exc).__name__})"
    return DownloadError(f"{repo}: cannot download: {reason}")


def is_network_error(hub, exc: Exception) -> bool:
    errors = hub.errors
    if isinstance(exc, (errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled, errors.HfHubHTTPError,
                        ConnectionError, TimeoutError, socket.gaierror)):
        return True
    return type(exc).__module__.split(".")[0].rstrip("0123456789") in ("httpx", "httpcore", "requests", "urllib3")


def _listing(hub, repo: str) -> tuple[dict[str, int | None], str | None]:
    info = hub.HfApi().model_info(repo, files_metadata=True)
    return {s.rfilename: getattr(s, "size", None) for s in (info.siblings or [])}, getattr(info, "sha", None)


def pull(name: str, variant=None, dest=None, optimize: bool = False, echo: Callable[[str], None] = log.info) -> Path:
    """Download the mix `variant` (default DEFAULT_VARIANT) of model `name` into `dest` (default
    ./<repo name>); returns dest.  optimize: also fetch the fp32 decoder_model_merged and build
    edge-agent's fast decoder from it (models/optimize.py; its int8 too when the folder has an
    int8 decoder)."""
    repo = repo_id(name)
    mix = pull_mix(variant)
    dest = Path(dest).expanduser() if dest else Path.cwd() / repo.split("/")[1]
    if dest.exists() and not dest.is_dir():
        raise ModelSettingError(f"--dest {dest}: exists and is not a directory")
    hub = _hub()
    try:
        listing, revision = _listing(hub, repo)
        p = plan(repo, mix, listing, revision, optimize)
        for line in describe(p, mix):
            echo(line)
        hub.snapshot_download(repo_id=repo, revision=revision, local_dir=str(dest), allow_patterns=p.files)
    except ModelError:
        raise
    except Exception as exc:
        if is_network_error(hub, exc):
            raise network_failure(hub, repo, exc) from None
        if isinstance(exc, OSError):  # local disk: permissions, full disk, read-only
            raise ModelError(f"--dest {dest}: cannot write: {exc.strerror or exc}") from None
        raise
    open_model_dir(dest, mix)  # ModelError naming the first missing or truncated file
    if optimize:
        from edge_agent.models.optimize import optimize_dir

        optimize_dir(dest)
    return dest
