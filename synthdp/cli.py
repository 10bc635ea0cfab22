"""`synthdp` command line (typer). Thin: parse, resolve the config, call the run.

User errors (`synthdp.UserError`) print one message and exit with code 2; bugs keep their traceback.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Callable, Optional, TypeVar

import typer

from synthdp.errors import UserError

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Differentially private synthetic text with a privacy ledger.")
ledger_app = typer.Typer(no_args_is_help=True, help="Read a run's privacy ledger.")
budget_app = typer.Typer(no_args_is_help=True, help="A dataset's total privacy budget across runs.")
app.add_typer(ledger_app, name="ledger")
app.add_typer(budget_app, name="budget")

F = TypeVar("F", bound=Callable[..., Any])


def user_errors(func: F) -> F:
    """Map `UserError` to one line on stderr and exit code 2."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except UserError as err:
            from synthdp.distributed import launched

            if not launched() or os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 says it once
                typer.echo(f"Error: {err}", err=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


EpsilonOpt = Annotated[Optional[float], typer.Option("--epsilon", "-e", help="Target epsilon (> 0).")]
DeltaOpt = Annotated[Optional[float], typer.Option("--delta", "-d", help="Target delta, in (0, 1); typically <= 1/(10 n).")]
BudgetDeltaOpt = Annotated[Optional[float], typer.Option("--delta", "-d", help="Target delta, in (0, 1); typically <= 1/(10 n). Default with --budget: the budget's delta.")]
GENERATE_EXAMPLE = "synthdp generate --epsilon 3 --delta 1e-5 --num-samples 8 --out release/"


@app.command()
@user_errors
def generate(
    data: Annotated[Optional[str], typer.Option(help="Private data: .jsonl, .json, .csv, .tsv, .parquet or a saved `datasets` folder. Default: the bundled SMS Spam sample.")] = None,
    public_data: Annotated[Optional[str], typer.Option(help="Text you declare public, same formats and fields as --data (e.g. public reviews of the same kind): prompt examples, Private Evolution's first population, the default length. Never checked against --data; the ledger names it as public. Default: none (the bundled sample: its own public examples).")] = None,
    text_field: Annotated[Optional[str], typer.Option(help="Field holding the text. Default: text.")] = None,
    label_field: Annotated[Optional[str], typer.Option(help="Field holding the label; '' for unlabelled data. Default: label.")] = None,
    pipeline: Annotated[Optional[str], typer.Option(help="Pipeline name (see `synthdp pipelines`). Default: private-evolution with --public-data (not under torchrun), else invisibleink.")] = None,
    epsilon: EpsilonOpt = None,
    delta: BudgetDeltaOpt = None,
    num_samples: Annotated[Optional[int], typer.Option("--num-samples", "-n", help="Number of synthetic texts.")] = None,
    out: Annotated[Optional[str], typer.Option("--out", "-o", help="Folder for the release bundle (must not hold a run).")] = None,
    model: Annotated[Optional[str], typer.Option(help="Local model folder or .gguf file. Default: embedded SmolLM2-135M-Instruct.")] = None,
    labels: Annotated[Optional[str], typer.Option(help="The public label set, comma-separated. Default: read from the data (the ledger says so).")] = None,
    user_field: Annotated[Optional[str], typer.Option(help="Field holding a user id: the unit of privacy becomes one user, all records with the same id (add/remove neighbours).")] = None,
    max_records_per_user: Annotated[Optional[int], typer.Option(help="With --user-field: records used per user, chosen by a keyed hash of the user's own records. Default: 8.")] = None,
    # No [brackets] in help texts: typer reads them as rich markup and drops them.
    config: Annotated[Optional[Path], typer.Option(help="A config.toml: a run table and an options table, as in examples/configs/; flags override it.")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Pipeline option KEY=VALUE (repeatable).")] = None,
    budget: Annotated[Optional[Path], typer.Option(help="Budget file to charge (see `synthdp budget init`); its delta is the run's default.")] = None,
    seed: Annotated[Optional[int], typer.Option(min=0, help="Fixed seed for debugging: the run is then NOT fit for release.")] = None,
    neighboring: Annotated[Optional[str], typer.Option(help="add_remove (default) or replace_one.")] = None,
    api_base: Annotated[Optional[list[str]], typer.Option(help="OpenAI-compatible endpoint for --model openai:NAME. Repeat it (or separate with commas) to spread requests over several servers of the same model.")] = None,
    api_key_env: Annotated[Optional[str], typer.Option(help="Environment variable holding the API key. Default: OPENAI_API_KEY.")] = None,
    device: Annotated[Optional[str], typer.Option(help="cuda or cpu. Default: CUDA when present.")] = None,
    resume: Annotated[Optional[Path], typer.Option(help="Continue an interrupted run in this folder (pipelines that support it); spends nothing again.")] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the privacy plan and the memory plan, then stop: no record is read, nothing is written or charged (labelled data needs --labels).")] = False,
) -> None:
    """Turn a private text dataset into a DP synthetic corpus with a privacy ledger."""
    from synthdp.pipelines.base import parse_set_pairs
    from synthdp.config import load_config_file, resolve_config
    from synthdp.run import generate_run, plan_run, resume_run

    if resume is not None:
        if dry_run:
            raise UserError("--dry-run plans a new run; it cannot be combined with --resume. Drop one of them.")
        _report(resume_run(resume, show_progress=progress))
        return
    values: dict[str, Any] = load_config_file(config) if config else {"options": {}}
    flags = {
        "data": data, "public_data": public_data, "text_field": text_field, "label_field": label_field,
        "pipeline": pipeline, "epsilon": epsilon,
        "delta": delta, "num_samples": num_samples, "out": out, "model": model,
        "budget": None if budget is None else str(budget), "seed": seed, "neighboring": neighboring,
        "api_base": api_base or None, "api_key_env": api_key_env, "device": device,
        "labels": None if labels is None else [x.strip() for x in labels.split(",")],
        "user_field": user_field, "max_records_per_user": max_records_per_user,
    }
    values.update({k: v for k, v in flags.items() if v is not None})
    values["options"].update(parse_set_pairs(set_ or []))
    cfg = resolve_config(values, lambda name: "--" + name.replace("_", "-"), GENERATE_EXAMPLE)
    if cfg.pipeline_note:
        typer.echo(cfg.pipeline_note, err=True)
    if dry_run:
        planned = plan_run(cfg)
        for line in planned.lines():
            typer.echo(line)
        if not planned.fits:  # the real run would be refused: exit as it would
            raise typer.Exit(2)
        return
    _report(generate_run(cfg, show_progress=progress))


def _report(result: Any) -> None:
    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 reports the run
        return
    s = result.summary
    typer.echo(
        f"Wrote {result.num_records} synthetic texts (asked for {s['requested']}) to {result.corpus_path}.\n"
        f"Privacy: ({result.epsilon:.4g}, {result.delta:.3g})-DP by dp_accounting ({result.ledger.report.accountant.upper()}); "
        f"ledger: {result.out / 'ledger.json'}; datasheet: {result.out / 'RELEASE.md'}."
    )
    if s.get("dropped_texts"):
        typer.echo(f"{s['dropped_texts']} generated text(s) came out empty and were not released (the pipeline "
                   "tried again where it could; the count above is what the corpus holds).")
    extra = {k: v for k, v in s.items() if k not in ("records", "requested", "dropped_texts") and not k.startswith("_")}
    if extra:
        typer.echo("Run summary (public or DP-derived values): " + "; ".join(f"{k.replace('_', ' ')}: {v}" for k, v in extra.items()))
    exact = getattr(result, "operator_only_not_dp", None)
    if exact:
        typer.echo("Exact statistics of the private data (NOT DP, do not publish): "
                   + "; ".join(f"{k.replace('_', ' ')}: {v}" for k, v in exact.items()), err=True)
    if not result.ledger.release_ready:
        typer.echo("NOT fit for release: " + "; ".join(result.ledger.not_release_ready_reasons) + ".", err=True)


@app.command()
def pipelines() -> None:
    """List the installed pipelines with their options and defaults."""
    from synthdp.pipelines.base import available_pipelines, options_table

    for name, cls in available_pipelines().items():
        typer.echo(f"{name}: {cls.description}")
        for opt, kind, default, help_text in options_table(cls.options_class):
            typer.echo(f"    {opt} ({kind}, default {default!r}): {help_text}")
        for old, new in getattr(cls.options_class, "DEPRECATED", {}).items():
            typer.echo(f"    {old}: deprecated name of {new} (works until the next release)")


@ledger_app.command("show")
@user_errors
def ledger_show(path: Annotated[Path, typer.Argument(help="ledger.json or a run folder.")]) -> None:
    """Show a ledger's events, its epsilon at delta (recomputed) and its assumptions, in words."""
    from synthdp.privacy.ledger import Ledger

    typer.echo(Ledger.read(path).describe())


@ledger_app.command("verify")
@user_errors
def ledger_verify(
    path: Annotated[Path, typer.Argument(help="A run folder (or its ledger.json).")],
    budget: Annotated[Optional[Path], typer.Option(help="Also check that the run is charged to this budget file with the same events.")] = None,
) -> None:
    """Check a bundle: epsilon recomputed from the events, every file against its recorded sha256, the budget entry."""
    from synthdp.verify import events_fingerprint, verify_run

    ledger, problems = verify_run(path, budget)
    if problems:
        typer.echo(f"FAILED: {path} does not match its ledger (run {ledger.run_id}):", err=True)
        for problem in problems:
            typer.echo(f"  - {problem}", err=True)
        raise typer.Exit(1)
    typer.echo(
        f"OK: run {ledger.run_id} ({ledger.pipeline}), ({ledger.epsilon:.4g}, {ledger.delta:.3g})-DP recomputed from "
        f"{len(ledger.events)} event(s) [{events_fingerprint(ledger)}], {len(ledger.files)} file(s) match their sha256"
        + (f", charged to {budget} with the same events." if budget else ".")
    )


@ledger_app.command("abandon")
@user_errors
def ledger_abandon(path: Annotated[Path, typer.Argument(help="The folder of an interrupted run.")]) -> None:
    """Give up an interrupted run: recorded as failed (it stays charged); its secret keys and checkpoint are deleted,
    so it can no longer be resumed."""
    from synthdp.run import abandon_run

    ledger = abandon_run(path)
    typer.echo(f"Run {ledger.run_id} is recorded as failed and stays charged ({ledger.epsilon:.4g}); its keys and "
               "checkpoint are deleted.")


@budget_app.command("init")
@user_errors
def budget_init(
    file: Annotated[Path, typer.Argument(help="Budget file to create.")],
    epsilon: EpsilonOpt = None,
    delta: DeltaOpt = None,
    neighboring: Annotated[str, typer.Option(help="The neighbouring relation of every run charged to it: add_remove or replace_one.")] = "add_remove",
    description: Annotated[str, typer.Option(help="Which dataset this budget protects.")] = "",
    user_field: Annotated[Optional[str], typer.Option(help="The unit of privacy of every run charged to it is one user, by this field (runs pass the same --user-field). Default: one record.")] = None,
) -> None:
    """Create a budget file holding a dataset's total (epsilon, delta), neighbouring relation and unit of privacy."""
    from synthdp.privacy.budget import Budget

    if epsilon is None or delta is None:
        raise UserError("`synthdp budget init FILE` needs --epsilon and --delta, e.g. --epsilon 8 --delta 1e-6.")
    budget = Budget.init(file, epsilon=epsilon, delta=delta, neighboring=neighboring, description=description,
                         user_field=user_field)
    unit = f" --user-field {user_field}," if user_field else ""
    typer.echo(f"Created {budget.path}: total ({budget.epsilon:g}, {budget.delta:g})-DP for runs under the "
               f"{budget.neighboring} relation (every run charged to it must use --neighboring {budget.neighboring},"
               f"{unit} and --delta {budget.delta:g}); nothing spent.")


@budget_app.command("show")
@user_errors
def budget_show(file: Annotated[Path, typer.Argument(help="Budget file.")]) -> None:
    """Show a budget: total, spent (composed over runs by dp_accounting), and each run."""
    from synthdp.privacy.budget import Budget

    typer.echo(Budget.load(file).describe())


@app.command()
@user_errors
def evaluate(
    synthetic: Annotated[Path, typer.Option(help="A run folder (its synthetic.jsonl) or a synthetic data file.")],
    real: Annotated[Path, typer.Option(help="Real held-out data: the classifiers' test set and the similarity reference.")],
    private: Annotated[Path, typer.Option(help="The private data the corpus was generated from (the canaried copy if any).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for report.json, report.html and its plots.")],
    text_field: Annotated[str, typer.Option(help="Text field of --real and --private.")] = "text",
    label_field: Annotated[str, typer.Option(help="Label field of --real and --private; '' for unlabelled data.")] = "label",
    synthetic_text_field: Annotated[str, typer.Option(help="Text field of the synthetic file.")] = "text",
    synthetic_label_field: Annotated[str, typer.Option(help="Label field of the synthetic file.")] = "label",
    canaries: Annotated[Optional[Path], typer.Option(help="Canaries file from `synthdp canaries insert`: count how many come back.")] = None,
    ngram: Annotated[int, typer.Option(min=1, help="n of the private n-gram overlap check.")] = 8,
) -> None:
    """Utility and leakage report of a synthetic corpus: train-on-synthetic accuracy, similarity, copying checks."""
    from synthdp.evaluate import evaluate as run_evaluation

    result = run_evaluation(
        synthetic=synthetic, real=real, private=private, out=out, text_field=text_field,
        label_field=label_field or None, synthetic_text_field=synthetic_text_field,
        synthetic_label_field=synthetic_label_field or None, canaries=canaries, ngram=ngram,
    )
    r = result.report
    utility = r["utility"]
    if "skipped" not in utility:
        for clf, arms in utility.items():
            scores = ", ".join(f"{arm} acc {s['accuracy']:.3f} F1 {s['macro_f1']:.3f}" for arm, s in arms.items())
            typer.echo(f"{clf}: {scores}")
    leak = r["leakage"]
    frechet = r["similarity"]["frechet_distance"]["synthetic_vs_real"]
    typer.echo(f"Fréchet distance to real: {'n/a' if frechet is None else format(frechet, '.4g')}; "
               f"private {leak['ngram_n']}-gram in {leak['fraction_with_private_ngram']:.1%} of synthetic texts; "
               f"exact copies: {leak['exact_copies']}"
               + (f"; canaries found: {leak['canaries']['found']} of {leak['canaries']['inserted']}" if leak["canaries"] else ""))
    typer.echo(f"Report: {result.report_html} (confidential: computed from the private data without DP).")


canaries_app = typer.Typer(no_args_is_help=True, help="Canaries: unique strings planted in the private data to test for copying.")
app.add_typer(canaries_app, name="canaries")


@canaries_app.command("insert")
@user_errors
def canaries_insert(
    data: Annotated[Path, typer.Argument(help="The private data file.")],
    out: Annotated[Path, typer.Argument(help="The canaried copy to write (.jsonl or .csv); generate from this file.")],
    k: Annotated[int, typer.Option("--k", min=1, help="Number of unique canaries.")] = 10,
    repeats: Annotated[int, typer.Option(min=1, help="Copies of each canary.")] = 1,
    text_field: Annotated[str, typer.Option(help="Text field.")] = "text",
    label_field: Annotated[str, typer.Option(help="Label field; '' for unlabelled data.")] = "label",
) -> None:
    """Write a copy of the private data with K canary records, and the canaries to OUT.canaries.json."""
    import json

    from synthdp.evaluate import insert_canaries

    planted = insert_canaries(data, out, k, text_field, label_field or None, repeats=repeats)
    saved = out.with_name(out.name + ".canaries.json")
    saved.write_text(json.dumps(planted, indent=1) + "\n", encoding="utf-8")
    typer.echo(f"Wrote {out} with {k} canaries x {repeats}; canaries in {saved} (pass it to `synthdp evaluate --canaries`).")


@app.command()
@user_errors
def sample(
    from_: Annotated[Path, typer.Option("--from", help="Folder of a complete dp-finetune run (holds its DP adapter).")],
    num_samples: Annotated[int, typer.Option("--num-samples", "-n", min=1, help="Number of synthetic texts.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="New folder for the corpus and its ledger.")],
    seed: Annotated[Optional[int], typer.Option(min=0, help="Fixed seed for debugging.")] = None,
    device: Annotated[Optional[str], typer.Option(help="cuda or cpu. Default: as in the run.")] = None,
) -> None:
    """Sample more texts from a dp-finetune run's DP adapter: post-processing, no privacy spent."""
    from synthdp.pipelines.finetune.sample import sample_from_run

    corpus, count = sample_from_run(from_, num_samples, out, seed=seed, device=device)
    typer.echo(f"Wrote {count} synthetic texts to {corpus} (post-processing of {from_}: no new privacy spent).")


def main() -> None:  # console-script entry point
    from synthdp import distributed

    if not distributed.launched():
        app(prog_name="synthdp")
        return
    code = 0
    try:  # a torchrun rank ends without interpreter finalization (see distributed.exit_process)
        app(prog_name="synthdp")
    except SystemExit as stop:
        code = _exit_code(stop.code)
    except BaseException:
        sys.excepthook(*sys.exc_info())
        code = 1
    distributed.exit_process(code)


def _exit_code(code: object) -> int:
    """The process exit status `sys.exit(code)` gives: None is 0, an int itself, anything else printed and 1."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
