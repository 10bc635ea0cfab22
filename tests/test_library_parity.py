"""The library does what the command line does: every option of `synthdp generate` has a twin argument of
`synthdp.generate`, and both give the same run configuration; every help text shows as written."""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

import synthdp
from synthdp.cli import app
from synthdp.privacy.budget import Budget

# CLI parameter name -> library argument, where they differ
TWINS = {"set_": "options", "progress": "show_progress"}


def command(*path: str) -> Any:
    found: Any = typer.main.get_command(app)
    for name in path:
        found = found.commands[name]
    return found


def commands(group: Any = None, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    group = group or typer.main.get_command(app)
    found = [path]
    for name, sub in getattr(group, "commands", {}).items():
        found += commands(sub, path + (name,))
    return found


def test_every_generate_option_has_a_library_twin() -> None:
    library = inspect.signature(synthdp.generate).parameters
    # typer builds the command from cli.generate's signature (its own copy of click's classes)
    options = [p.name for p in command("generate").params if p.param_type_name == "option"]
    assert "config" in options and "budget" in options  # the enumeration reads the real command
    missing = [name for name in options if TWINS.get(name, name) not in library]
    assert not missing, (f"`synthdp generate` options with no argument of synthdp.generate: {missing}. Add them to "
                         "synthdp/api.py (or name their twin in TWINS here).")


@pytest.mark.parametrize("path", commands(), ids=lambda p: " ".join(p) or "synthdp")
def test_every_help_text_shows_as_written(path: tuple[str, ...]) -> None:
    """Rich markup eats text in brackets: "A config.toml ([run] and [options])" showed as "( and )"."""
    out = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "1000"}).output
    shown = re.sub(r"[\s│╭╮╰╯─]+", " ", out)
    cmd = command(*path)
    texts = [p.help for p in cmd.params if getattr(p, "help", None)] + [cmd.help or ""]
    for text in texts:
        first = re.sub(r"\s+", " ", text.split("\n\n")[0]).strip()
        assert first in shown, f"{' '.join(path)} --help shows {first!r} otherwise"


class Captured(Exception):
    """Raised by the patched run functions with what they were given (nothing runs)."""


@pytest.fixture()
def capture(monkeypatch: pytest.MonkeyPatch) -> None:
    import synthdp.run as run

    def generate_run(cfg: Any, *, show_progress: bool = True, **_: Any) -> Any:
        raise Captured(cfg, show_progress)

    def resume_run(out: Path, *, show_progress: bool = True, **_: Any) -> Any:
        raise Captured(Path(out), show_progress)

    def plan_run(cfg: Any) -> Any:
        raise Captured(cfg, "dry run")

    monkeypatch.setattr(run, "generate_run", generate_run)
    monkeypatch.setattr(run, "plan_run", plan_run)
    monkeypatch.setattr(run, "resume_run", resume_run)


def examples(tmp_path: Path) -> dict[str, tuple[list[str], dict[str, Any]]]:
    """Per option of `synthdp generate`: its flags and the library arguments that mean the same."""
    config = tmp_path / "run.toml"
    config.write_text('[run]\npipeline = "dp-finetune"\ntext_field = "body"\n[options]\nepochs = 2\n', encoding="utf-8")
    budget = Budget.init(tmp_path / "data.budget", epsilon=9, delta=1e-7, neighboring="replace_one").path
    urls = ["http://127.0.0.1:1/v1", "http://127.0.0.1:2/v1"]
    return {
        "data": (["--data", "d.jsonl"], {"data": "d.jsonl"}),
        "public_data": (["--public-data", "p.jsonl"], {"public_data": "p.jsonl"}),
        "text_field": (["--text-field", "body"], {"text_field": "body"}),
        "label_field": (["--label-field", ""], {"label_field": ""}),
        "pipeline": (["--pipeline", "private-prediction"], {"pipeline": "private-prediction"}),
        "epsilon": (["--epsilon", "2"], {"epsilon": 2.0}),
        "delta": (["--delta", "1e-6"], {"delta": 1e-6}),
        "num_samples": (["--num-samples", "5"], {"num_samples": 5}),
        "out": (["--out", "elsewhere"], {"out": "elsewhere"}),
        "model": (["--model", "my-model"], {"model": "my-model"}),
        "labels": (["--labels", "ham, spam"], {"labels": ["ham", "spam"]}),
        "user_field": (["--user-field", "patient_id"], {"user_field": "patient_id"}),
        "max_records_per_user": (["--max-records-per-user", "3"], {"max_records_per_user": 3}),
        "config": (["--config", str(config)], {"config": config}),
        "set_": (["--set", "clip=2", "--set", "epochs=4"], {"options": {"clip": "2", "epochs": "4"}}),
        "budget": (["--budget", str(budget)], {"budget": budget}),  # delta from the budget
        "seed": (["--seed", "7"], {"seed": 7}),
        "neighboring": (["--neighboring", "replace_one"], {"neighboring": "replace_one"}),
        "api_base": (["--api-base", urls[0], "--api-base", urls[1]], {"api_base": urls}),
        "api_key_env": (["--api-key-env", "MY_KEY"], {"api_key_env": "MY_KEY"}),
        "device": (["--device", "cpu"], {"device": "cpu"}),
        "resume": (["--resume", str(tmp_path / "old")], {"resume": tmp_path / "old"}),
        "progress": (["--no-progress"], {"show_progress": False}),
        "dry_run": (["--dry-run"], {"dry_run": True}),
    }


BASE = {"epsilon": "3", "delta": "1e-5", "num_samples": "4", "out": "release"}


def captured(call: Any) -> tuple[Any, bool]:
    """What the run function got (a checked RunConfig, or the folder to resume) and show_progress."""
    from synthdp.config import RunConfig, check_config

    with pytest.raises(Captured) as info:
        call()
    what, show_progress = info.value.args
    if isinstance(what, RunConfig):
        check_config(what)  # the checked form: paths as text, labels as a list
    return what, show_progress


def test_each_option_and_its_library_twin_give_the_same_run(tmp_path: Path, capture: None) -> None:
    table = examples(tmp_path)
    options = [p.name for p in command("generate").params if p.param_type_name == "option"]
    assert not set(options) - set(table), f"add an example of {sorted(set(options) - set(table))} to examples()"
    for name in options:
        flags, kwargs = table[name]
        # the base settings, less those the option under test should supply (a budget: delta, neighbouring)
        base = {} if name == "resume" else {k: v for k, v in BASE.items() if not (name == "budget" and k == "delta")}
        base_flags = [x for k, v in base.items() for x in ("--" + k.replace("_", "-"), v)]

        def cli() -> None:
            result = CliRunner().invoke(app, ["generate", *base_flags, *flags])
            raise result.exception if isinstance(result.exception, Captured) else AssertionError(result.output)

        from_cli = captured(cli)
        from_library = captured(lambda: synthdp.generate(**({k: float(v) if k in ("epsilon", "delta") else
                                                              int(v) if k == "num_samples" else v
                                                              for k, v in base.items()} | kwargs)))
        assert from_cli[0] == from_library[0], name
        assert (from_cli[1] == "dry run") is (from_library[1] == "dry run") is (name == "dry_run"), name
        if name == "progress":  # the library is quiet by default, the command shows a bar
            assert from_cli[1] is from_library[1] is False
    budget_run = captured(lambda: synthdp.generate(num_samples=4, epsilon=3.0, out="x", budget=table["budget"][1]["budget"]))
    assert (budget_run[0].delta, budget_run[0].neighboring) == (1e-7, "add_remove")  # the relation is never implied


def test_an_unlabelled_run_config_reads_back_unlabelled(tmp_path: Path) -> None:
    """config.toml cannot hold None: an unlabelled run writes label_field = '' (a missing key meant "label")."""
    from synthdp.config import RunConfig, check_config, load_config_file
    from synthdp.corpus import write_config
    from synthdp.pipelines.base import get_pipeline, parse_options

    cfg = RunConfig(out=tmp_path / "out", epsilon=3.0, delta=1e-5, num_samples=2, label_field=None)
    write_config(tmp_path / "config.toml", cfg.to_toml_dict(parse_options(get_pipeline("invisibleink").options_class, {})))
    again = RunConfig(**load_config_file(tmp_path / "config.toml"))
    check_config(again)
    assert again.label_field is None


def test_a_run_charged_to_a_budget_takes_its_delta(tmp_path: Path, data_file: Path, tiny_model_dir: Path) -> None:
    from conftest import fast_flags

    budget = Budget.init(tmp_path / "data.budget", epsilon=60, delta=1e-6).path
    result = CliRunner().invoke(app, ["generate", "--pipeline", "private-prediction", "--data", str(data_file),
                                      "--epsilon", "3", "--num-samples", "2", "--model", str(tiny_model_dir),
                                      "--out", str(tmp_path / "out"), "--budget", str(budget),
                                      *fast_flags("private-prediction")])
    assert result.exit_code == 0, result.output
    from synthdp.privacy.ledger import Ledger

    assert Ledger.read(tmp_path / "out").delta == 1e-6 and len(Budget.load(budget).runs) == 1
