"""Write examples/configs/<pipeline>.toml: every option of each built-in pipeline, with its help as a comment.

Rerun after changing a pipeline's options; tests/test_examples.py fails while a config is out of date.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import tomli_w

from synthdp.pipelines.base import available_pipelines, options_table

BUILT_IN = ("private-prediction", "private-evolution", "dp-finetune", "invisibleink")
RUN = {  # the [run] table: the embedded defaults at small settings
    "epsilon": (4.0, "target epsilon of this run (> 0)"),
    "delta": (1e-5, "target delta, below 1/(10 n): the bundled sample has 400 rows"),
    "num_samples": (8, "number of synthetic texts"),
    "labels": (["ham", "spam"], "the public label set (never read from the private data)"),
    "text_field": ("text", "field holding the text"),
    "label_field": ("label", "field holding the label"),
    "neighboring": ("add_remove", "add_remove or replace_one"),
    "public_data": (None, "text you declare public, read like data (prompt examples, Private Evolution's first "
                          "population, the default max_tokens); unset with the bundled sample: its own public examples"),
}
FROM_PUBLIC_DATA = {"max_tokens"}  # left commented: a value in the file would override the one from the public data


def value_line(name: str, value: Any, comment: str) -> str:
    if value is None:  # TOML has no null: leave the line commented, the default applies
        return f"# {name} = ...  # {comment} (default: unset)"
    if isinstance(value, list):  # an inline array on one line
        return f"{name} = [{', '.join(tomli_w.dumps({'v': v}).strip()[4:] for v in value)}]  # {comment}"
    return f"{tomli_w.dumps({name: value}).strip()}  # {comment}"


def config_text(pipeline: str) -> str:
    cls = available_pipelines()[pipeline]
    lines = [f"# {pipeline}: {cls.description}", "# Rerun with: synthdp generate --config THIS_FILE --out NEW_FOLDER",
             "# (data and model default to the embedded ones; add data = \"path\" and model = \"path\" under [run]).", "",
             "[run]", f'pipeline = "{pipeline}"']
    lines += [value_line(k, v, c) for k, (v, c) in RUN.items()]
    lines += ["", "[options]"]
    lines += [value_line(name, default, help_text) if name not in FROM_PUBLIC_DATA else
              "# " + value_line(name, default, f"{help_text} (unset here so that it comes from the public data)")
              for name, _, default, help_text in options_table(cls.options_class)]
    return "\n".join(lines) + "\n"


def main() -> None:
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "examples" / "configs"
    for pipeline in BUILT_IN:
        (folder / f"{pipeline}.toml").write_text(config_text(pipeline), encoding="utf-8")
        print(f"wrote {folder / f'{pipeline}.toml'}")


if __name__ == "__main__":
    main()
