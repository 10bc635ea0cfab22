"""The one commit path of a release bundle, shared by `generate` (synthdp/run.py) and `sample`
(synthdp/pipelines/finetune/sample.py): corpus, Parquet copy, datasheet, dataset card, file digests,
and the ledger last, as the folder's commit point."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from synthdp.card import dataset_card
from synthdp.corpus import CorpusWriter, write_parquet, write_text_atomic
from synthdp.privacy.owner import record_failure
from synthdp.release import release_markdown
from synthdp.verify import file_digests

if TYPE_CHECKING:
    from synthdp.privacy.budget import Budget
    from synthdp.privacy.ledger import Ledger


@dataclass(frozen=True)
class BundleInfo:
    """What the datasheet and the dataset card say besides the ledger (all public)."""

    model_name: Any
    labels: tuple[str, ...]
    data_lines: list[str]  # the datasheet's "Data" section, one Markdown bullet each
    rerun: str  # the datasheet's line on how config.toml reruns the bundle


def write_bundle(out: Path, ledger: Ledger, records: Iterable[Any], info: BundleInfo,
                 budget: Budget | None = None) -> tuple[Path, int]:
    """Write `records` (objects with .text and .label) and the bundle around them into `out`; returns
    (corpus path, texts written). The ledger saying "complete" is written last, once the corpus, the
    datasheet and the dataset card are in place, with the sha256 of each (`synthdp ledger verify`). On
    any error the partial corpus is removed and the ledger (and budget) record the run as failed
    (see synthdp/privacy/owner.py); the error is raised again."""
    writer: CorpusWriter | None = None
    try:
        writer = CorpusWriter(out)
        for record in records:
            writer.write({"text": record.text, "label": record.label})
        corpus = writer.commit()
        write_parquet(corpus)
        ledger.status = "complete"
        ledger.finished = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        count = writer.count
        write_text_atomic(out / "RELEASE.md", release_markdown(ledger, count, info.model_name, info.labels,
                                                               info.data_lines, info.rerun))
        write_text_atomic(out / "README.md", dataset_card(ledger, model_name=info.model_name, count=count,
                                                          labels=info.labels))
        ledger.files = file_digests(out)
        ledger.write(out / "ledger.json")
    except BaseException as err:
        if writer is not None:
            writer.abort()
        record_failure(ledger, out, budget, err)
        raise
    return corpus, count
