"""A GGUF model file de-quantised into a Hugging Face folder (for `models/local.py`), in a process of its own.

Converting leaves the converting process larger once it is done (the de-quantised model, the tokenizer's
conversion: memory the allocator keeps). A child process gives it all back to the OS when it ends, and
its error (a file that is no GGUF model) becomes one line of a ModelError instead of a traceback.

    python -m synthdp.models.convert GGUF TARGET
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from synthdp.errors import ModelError

log = logging.getLogger(__name__)

FAILED = "conversion failed: "  # the child's last line of stdout on an error


def convert_in_child(gguf: Path, target: Path) -> None:
    """De-quantise `gguf` into the HF folder `target` in a child process (its progress bar on this stderr)."""
    package_root = str(Path(__file__).resolve().parents[2])  # the same synthdp in the child
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-m", "synthdp.models.convert", str(gguf), str(target)],
                          stdout=subprocess.PIPE, text=True, env=env, check=False)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not (target / "config.json").is_file():
        why = lines[-1].removeprefix(FAILED).rstrip(".") if lines and lines[-1].startswith(FAILED) else \
            f"exit code {done.returncode}"
        raise ModelError(f"Cannot convert the GGUF model {gguf}: {why}. Pass a GGUF file of a causal language "
                         "model, or a Hugging Face model folder.")


def convert_gguf(gguf: Path, target: Path) -> None:
    """De-quantise a GGUF file once with transformers and save it as a plain HF directory."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("Converting %s (first use; cached in %s)", gguf, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # transformers refuses to save a model loaded from GGUF ("not serializable" quantizer); the
    # weights are already de-quantised, so drop the quantizer record before saving.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            os.replace(tmp, target)
        except OSError:  # another process converted it first: keep theirs
            if not (target / "config.json").is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def main(argv: list[str]) -> int:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # as in the parent (LocalLM.load)
    try:
        convert_gguf(Path(argv[0]), Path(argv[1]))
    except Exception as err:  # any failure to read the file: one line for the parent's error message
        print(f"{FAILED}{type(err).__name__}: {err}".replace("\n", " "), flush=True)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
