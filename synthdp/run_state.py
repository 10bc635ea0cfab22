"""The operator-only state of a run that resumes by replay (a pipeline with `resumes_from_keys`: InvisibleInk,
private prediction): `<out>/.synthdp-run/state.json`, mode 0600 from its first byte, sealed by its sha256
(synthdp/workdir.py). Written once, right after the write-ahead; removed when the run commits or is abandoned.

It holds:
- the keys of the run's two random streams (256 bits each; none for a seeded run, whose streams come from the
  seed in config.toml). With the keys and the released texts, anyone could recompute the uniforms behind every
  sampled token and so learn about the records that shaped them: the keys are as sensitive as the data;
- fingerprints of the records as read, of the configuration, of the model and of the plan. A resumed run must
  replay the same mechanisms on the same data from the same streams, else it would spend again. The records'
  fingerprint is a hash of private data: it is never written anywhere else.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from synthdp.data import Record
from synthdp.errors import UserError
from synthdp.workdir import DamagedFile, check_private_dir, make_private_dir, private_dir, read_sealed, write_sealed

STATE_NAME = "state.json"
STATE_FORMAT = "synthdp-run-state/1"
ASPECTS = {  # fingerprint -> what changed, in the refusal's words
    "data": "the data (the records as read from the data file)",
    "config": "the configuration (config.toml: options, seed, sizes, labels, fields, device)",
    "model": "the model (its weights, configuration, tokenizer or precision)",
    "plan": "the privacy plan",
}


@dataclass(frozen=True)
class RunState:
    run_id: str
    keys: tuple[int, int] | None  # (public stream, noise stream); None: seeded
    fingerprints: dict[str, str]  # ASPECTS -> sha256


def write_state(out: Path, state: RunState) -> None:
    """Once per run, after the write-ahead: the folder 0700, the file 0600 (never widened)."""
    body = {"format": STATE_FORMAT, "run_id": state.run_id, "fingerprints": state.fingerprints,
            "keys": None if state.keys is None else [f"{key:064x}" for key in state.keys]}
    write_sealed(make_private_dir(out) / STATE_NAME, body)


def read_state(out: Path, run_id: str) -> RunState:
    """The state of run `run_id` in `out`; a UserError when it is missing, damaged or another run's."""
    path = private_dir(out) / STATE_NAME
    lost = ("Without it the run cannot replay its batches from the same noise; it stays charged. Start a new run "
            "with a new --out.")
    try:
        if path.parent.exists():
            check_private_dir(path.parent)
        body = read_sealed(path)
        keys = body["keys"]
        state = RunState(str(body["run_id"]), None if keys is None else (int(keys[0], 16), int(keys[1], 16)),
                         {str(k): str(v) for k, v in dict(body["fingerprints"]).items()})
        if body.get("format") != STATE_FORMAT:
            raise DamagedFile(f"{path} is not a {STATE_FORMAT} file")
    except FileNotFoundError:
        raise UserError(f"The run's key file {path} is missing (deleted, or the run started before it could be "
                        f"written). {lost}") from None
    except DamagedFile as err:
        raise UserError(f"The run's key file cannot be trusted: {err}. {lost}") from None
    except (KeyError, TypeError, ValueError, IndexError) as err:
        raise UserError(f"The run's key file {path} cannot be trusted ({type(err).__name__}: {err}). {lost}") from None
    if state.run_id != run_id:
        raise UserError(f"The key file {path} belongs to run {state.run_id}, not to the run {run_id} of its ledger. "
                        f"{lost}")
    return state


def check_same(state: RunState, now: dict[str, str], out: Path) -> None:
    """Refuse (UserError) a resume whose data, configuration, model or plan differ from the run's start."""
    changed = [ASPECTS[name] for name in ASPECTS if state.fingerprints.get(name) != now.get(name)]
    if changed:
        raise UserError(
            f"The run in {out} cannot be resumed: {'; '.join(changed)} differ from its start. A resumed run must "
            "replay the same mechanisms on the same data, else it would spend again. Restore what changed and "
            "resume, or start a new run with a new --out. Nothing was run or charged.")


def fingerprints(records: Iterable[Record], labels: Any, config: dict[str, Any], plan: dict[str, Any],
                 resources: Any) -> dict[str, str]:
    """sha256 of each aspect a resumed run must find unchanged (see ASPECTS)."""
    data = hashlib.sha256(_json(list(labels or ())).encode())
    for rec in records:
        fields = [rec.label, rec.text] if rec.user is None else [rec.label, rec.text, rec.user]  # user ids count
        data.update(_json(fields).encode("utf-8") + b"\n")
    return {"data": data.hexdigest(), "config": _sha(_json(config)), "model": model_fingerprint(resources),
            "plan": _sha(_json(plan))}


def model_fingerprint(resources: Any) -> str:
    """A digest of a local model as loaded: its name, configuration, tokenizer vocabulary and chat template, and
    for each parameter its name, shape, precision, device and first and last 64 values."""
    digest = hashlib.sha256(str(getattr(resources, "name", type(resources).__name__)).encode())
    model, tokenizer = getattr(resources, "model", None), getattr(resources, "tokenizer", None)
    if hasattr(model, "config") and hasattr(model.config, "to_json_string"):
        digest.update(model.config.to_json_string().encode())
    if hasattr(model, "named_parameters"):
        import torch

        with torch.no_grad():
            for name, param in model.named_parameters():
                flat = param.detach().reshape(-1)
                sample = torch.cat([flat[:64], flat[-64:]]).float().cpu().numpy().tobytes()
                digest.update(f"{name}|{tuple(param.shape)}|{param.dtype}|{param.device.type}|".encode() + sample)
    if hasattr(tokenizer, "get_vocab"):
        digest.update(_json(sorted(tokenizer.get_vocab().items())).encode())
        digest.update(str(getattr(tokenizer, "chat_template", None)).encode())
    return digest.hexdigest()


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
