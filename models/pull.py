"""`edge-agent models pull NAME`: download one variant of an onnx-community Florence-2
export with huggingface_hub (optional extra `[pull]`), with progress bars.

Only what the engine needs is fetched: the four graphs of the chosen variant (and their
external-data files if any), the root JSON files and the tokenizer files.
"""
from __future__ import annotations

import logging
import socket
from pathlib import Path

from edge_agent.errors import ConfigError, RuntimeFailure
from models.modeldir import PARTS, normalize_variant, open_model_dir

log = logging.getLogger(f"edge_agent.{__name__}")

REPOS = {
    "base": "onnx-community/Florence-2-base-ft",
    "large": "onnx-community/Florence-2-large-ft",
}
ALIASES = {"florence-2-base-ft": "base", "florence-2-large-ft": "large", "base-ft": "base", "large-ft": "large"}
DEFAULT_VARIANT = "_int8"  # modeldir.CPU_PREFERENCE's first choice
ROOT_PATTERNS = ("*.json", "merges.txt", "vocab.txt", "sentencepiece.bpe.model")
INSTALL_HINT = "pip install 'edge-agent[pull]'"


def repo_id(name: str) -> str:
    """'base' | 'large' | 'Florence-2-base-ft' | 'owner/repo' -> a Hub repository id."""
    key = name.strip().lower()
    key = ALIASES.get(key, ALIASES.get(key.removeprefix("onnx-community/"), key))
    if key in REPOS:
        return REPOS[key]
    if name.count("/") == 1 and all(name.split("/")):
        return name.strip()
    raise ConfigError(f"unknown model {name!r}: expected base, large or an owner/repo Hub id")


def allow_patterns(variant: str) -> list[str]:
    files = [f"onnx/{part}{variant}.onnx" for part in PARTS]
    return [*ROOT_PATTERNS, *files, *(f + "_data*" for f in files)]


def _hub():
    try:
        import huggingface_hub
    except ImportError:
        raise ConfigError(f"huggingface_hub is not installed: {INSTALL_HINT}") from None
    return huggingface_hub


def _network_error(hub, exc: Exception) -> RuntimeFailure:
    errors = hub.errors
    if isinstance(exc, (errors.RepositoryNotFoundError, errors.GatedRepoError)):
        return RuntimeFailure(f"{type(exc).__name__}: {str(exc).splitlines()[0]}")
    if isinstance(exc, errors.OfflineModeIsEnabled) or "offline" in str(exc).lower():
        reason = "offline mode is on (HF_HUB_OFFLINE=1) and the files are not in the cache"
    else:
        reason = f"the Hugging Face Hub is unreachable ({type(exc).__name__})"
    return RuntimeFailure(f"cannot download: {reason}")


def _is_network_error(hub, exc: Exception) -> bool:
    errors = hub.errors
    if isinstance(exc, (errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled, errors.HfHubHTTPError,
                        ConnectionError, TimeoutError, socket.gaierror)):
        return True
    return type(exc).__module__.split(".")[0] in ("httpx", "httpcore", "requests", "urllib3")


def pull(name: str, variant: str | None = DEFAULT_VARIANT, dest=None) -> Path:
    """Download `variant` of model `name` into `dest` (default ./<repo name>); returns dest."""
    repo = repo_id(name)
    v = normalize_variant(DEFAULT_VARIANT if variant is None else variant)
    dest = Path(dest).expanduser() if dest else Path.cwd() / repo.split("/")[1]
    if dest.exists() and not dest.is_dir():
        raise ConfigError(f"--dest {dest}: exists and is not a directory")
    hub = _hub()
    log.info("downloading %s (variant %s) into %s", repo, v.lstrip("_") or "fp32", dest)
    try:
        hub.snapshot_download(repo_id=repo, local_dir=str(dest), allow_patterns=allow_patterns(v))
    except Exception as exc:
        if _is_network_error(hub, exc):
            raise RuntimeFailure(f"{repo}: {_network_error(hub, exc).format_message()}") from None
        if isinstance(exc, OSError):  # local disk: permissions, full disk, read-only
            raise ConfigError(f"--dest {dest}: cannot write: {exc.strerror or exc}") from None
        raise
    open_model_dir(dest, v)  # ModelError naming the first missing file if the repo lacks this variant
    return dest
