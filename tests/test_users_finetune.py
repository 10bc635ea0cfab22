"""dp-finetune at user level (`--user-field`): users are Poisson-sampled whole (q = B / n_users), micro-batches and
ranks hold whole users, a user's gradient is the mean of its records' gradients clipped to C (one user moves the
clipped sum by at most C, where its records one by one would move it by up to k C), the plan is the record-level
plan with q counting users, and a user-level run completes and resumes with the user-level words in its ledger.
The DP-SGD step's user-level audit is tests/test_privacy_audit_users.py."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import fast_flags, write_jsonl
from typer.testing import CliRunner

from synthdp.cli import app
from synthdp.data import LoadedData, Record
from synthdp.distributed import World
from synthdp.mechanisms.dpsgd import PerExampleGrads, clip_factors, dp_step, poisson_batch
from synthdp.mechanisms.randomness import noise_generator
from synthdp.models.local import LocalLM
from synthdp.pipelines.base import Target, parse_options
from synthdp.pipelines.finetune import DPFinetune, FinetuneOptions
from synthdp.pipelines.finetune.encoding import encode_example, sampled_micro_batches, unit_offsets
from synthdp.pipelines.finetune.fsdp import user_factors
from synthdp.pipelines.finetune.lora import attach_lora
from synthdp.privacy.accounting import epsilon_report
from synthdp.privacy.budget import Budget
from synthdp.privacy.ledger import Ledger
from synthdp.privacy.unit import PrivacyUnit

runner = CliRunner()
USERS = 8  # users p0..p7 in ROWS; user u has 1 + u % 4 records


def user_rows() -> list[dict[str, object]]:
    """8 users with 1 to 4 records each, one label per user, and user p3 with one record under the other label."""
    rows: list[dict[str, object]] = [{"text": f"note {j} of patient {u} about the cup final", "label": "ab"[u % 2],
                                      "pid": f"p{u}"} for u in range(USERS) for j in range(1 + u % 4)]
    return rows + [{"text": "a stray note of patient 3", "label": "a", "pid": "p3"}]


def user_records(sizes: list[int]) -> list[Record]:
    """Bounded records as run receives them: user u's `sizes[u]` records contiguous."""
    return [Record(f"u{u} r{j}", "a", f"u{u}") for u, size in enumerate(sizes) for j in range(size)]


def generate_args(data: Path, out: Path, model: Path, *extra: str, **options: object) -> list[str]:
    return ["generate", "--data", str(data), "--pipeline", "dp-finetune", "--user-field", "pid",
            "--max-records-per-user", "3", "--epsilon", "40", "--delta", "1e-5", "--num-samples", "5", "--out",
            str(out), "--model", str(model), "--seed", "5",
            *fast_flags("dp-finetune", **({"label_sizes": USERS, "batch_size": 4} | options)), *extra]


# --------------------------------------------------------------------------- sampling by user


def test_users_are_sampled_whole_at_rate_q_and_micro_batches_and_ranks_hold_whole_users() -> None:
    sizes = [1, 3, 2, 4, 1, 2, 3, 1, 2, 4]
    records = user_records(sizes)
    offsets = unit_offsets(records, per_user=True)
    assert len(offsets) - 1 == len(sizes)  # one unit per user
    user_of = [u for u, size in enumerate(sizes) for _ in range(size)]
    examples = {i: ([i + 1], [i + 1]) for i in range(len(records))}  # row i holds id i + 1: which record it is
    lm = SimpleNamespace(pad_id=0, device=torch.device("cpu"))
    options = FinetuneOptions(micro_batch_size=2)
    q, seed = 0.4, 17
    mask, streams = noise_generator(seed), (noise_generator(seed), noise_generator(seed))  # each rank's copy
    for _ in range(50):
        expected = set(poisson_batch(len(sizes), q, mask).tolist())  # the users' mask: n_users uniforms against q
        shares = [sampled_micro_batches(examples, offsets, q, options, lm, streams[rank], World(rank, 2),
                                        per_user=True) for rank in (0, 1)]
        seen: set[int] = set()
        for rank, micro in enumerate(shares):
            for ids, _, groups in micro:
                rows = (ids[:, 0] - 1).tolist()
                users = [user_of[i] for i in rows]
                assert len(set(users)) <= options.micro_batch_size  # micro users per micro-batch, k rows each
                assert all(u % 2 == rank for u in users)  # user u on rank u mod 2, with all its records
                assert groups.tolist() == [sorted(set(users), key=users.index).index(u) for u in users]
                for u in set(users):
                    assert sorted(i for i in rows if user_of[i] == u) == list(range(offsets[u], offsets[u + 1]))
                assert not seen & set(users)  # a user is never split over micro-batches or ranks
                seen |= set(users)
        assert seen == expected


def test_q_counts_users_and_the_plan_equals_the_record_level_plan_for_the_same_q() -> None:
    options = parse_options(FinetuneOptions, {"epochs": "2", "label_sizes": "40", "batch_size": "8", "noise": "1.5"})
    records = user_records([3] * 40)
    data = LoadedData(records, ("a",), False, {}, "test")
    users = DPFinetune().plan(options, Target(3.0, 1e-5, unit=PrivacyUnit("pid", 3)), data, None)
    rows = DPFinetune().plan(options, Target(3.0, 1e-5), data, None)
    assert users.sampling_rate == 8 / 40 and users.steps == 10  # n = 40 users from label_sizes, not 120 records
    assert users.published() == rows.published() and users.noise_multiplier == rows.noise_multiplier
    assert [e.event for e in users.events] == [e.event for e in rows.events]
    eps = epsilon_report([e.event for e in users.events], 1e-5).epsilon
    assert eps == epsilon_report([e.event for e in rows.events], 1e-5).epsilon and eps <= 3.0
    words = users.events[-1].description
    assert "each user is sampled with probability q = B/n_users = 0.2 (expected batch B = 8 users)" in words
    assert "the mean of its at most k = 3 records' gradients, clipped to L2 norm 1" in words
    assert "user" not in rows.events[-1].description and "per-example gradients clipped" in rows.events[-1].description
    assert "the number of users n = 40 given with label_sizes" in users.public_assumptions[0]


# --------------------------------------------------------------------------- one user moves the clipped sum by <= C


def test_a_whole_user_moves_the_clipped_gradient_sum_by_at_most_clip(tiny_model_dir: Path) -> None:
    lm = LocalLM.load(tiny_model_dir, device="cpu")
    options = FinetuneOptions(target_modules="q_proj,v_proj", micro_batch_size=2, max_record_tokens=24)
    model = attach_lora(lm, options)
    with torch.no_grad():  # lora_B starts at zero; give it values so every LoRA gradient is non-trivial
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    grads = PerExampleGrads(model, "opacus")
    params = {k: p for k, p in model.named_parameters() if p.requires_grad}
    clip, k = 1e-4, 4  # every gradient is far above C: each is clipped
    others = [Record(f"an ordinary message {u}", "a", f"o{u}") for u in range(3)]
    added = [Record("win a prize now call", "a", "x")] * k  # k records pushing the same way

    def clipped_sum(records: list[Record]) -> torch.Tensor:
        offsets = unit_offsets(records, per_user=True)
        examples = {i: encode_example(lm, options, r) for i, r in enumerate(records)}
        micro = sampled_micro_batches(examples, offsets, 1.0, options, lm, noise_generator(0), World(), per_user=True)
        total = dp_step(grads, micro, params, clip=clip, auto_clip=False, noise_multiplier=0.0, expected_batch=1.0,
                        rng=noise_generator(1))  # no noise, divided by 1: the clipped sum itself
        return torch.cat([t.flatten().double() for t in total.values()])

    try:
        move = float((clipped_sum(others[:2] + added + others[2:]) - clipped_sum(others)).norm())
    finally:
        grads.close()
    # the user's k records averaged into one term clipped to C (summed one by one they would move it by k C)
    assert 0.99 * clip <= move <= clip * (1 + 1e-3)


def test_the_sharded_path_clips_each_user_by_the_mean_of_its_rows_norms() -> None:
    gen = torch.Generator().manual_seed(3)
    direction = torch.randn(6, generator=gen)
    g = torch.cat([direction.repeat(4, 1) * 5.0, torch.randn(3, 6, generator=gen) * 5.0])  # user 0: 4 aligned rows
    groups = torch.tensor([0, 0, 0, 0, 1, 2, 2])
    clip = 1.0
    for auto_clip in (False, True):
        factors = user_factors(g.norm(dim=1), groups, clip, auto_clip)
        terms = torch.zeros(3, 6).index_add_(0, groups, factors[:, None] * g)  # each user's term in the clipped sum
        assert bool((terms.norm(dim=1) <= clip * (1 + 1e-6)).all())
        assert float(terms[0].norm()) >= 0.99 * clip  # aligned rows: the bound is tight, the user weighs C
        record_level = clip_factors(g.norm(dim=1), clip, auto_clip)[:4, None] * g[:4]
        assert float(record_level.sum(0).norm()) >= 3.9 * clip  # what record-level clipping would let it weigh


# --------------------------------------------------------------------------- runs through the CLI


@pytest.fixture()
def users_per_step(monkeypatch: pytest.MonkeyPatch) -> list[list[int]]:
    """The rows of each sampled user in each DP-SGD step the run takes (its micro-batches' user tensors), seen by
    wrapping the step the ddp strategy calls."""
    from synthdp.pipelines.finetune import replicated

    seen: list[list[int]] = []
    real = replicated.dp_step

    def spy(grad_fn, micro, *args, **kwargs):  # type: ignore[no-untyped-def]
        assert all(len(m) == 3 for m in micro), "a user-level micro-batch carries the user of each row"
        seen.append([int(n) for m in micro for n in torch.bincount(m[2])])
        return real(grad_fn, micro, *args, **kwargs)

    monkeypatch.setattr(replicated, "dp_step", spy)
    return seen


def test_a_user_level_run_completes_with_the_user_level_ledger(tmp_path: Path, tiny_model_dir: Path,
                                                               users_per_step: list[list[int]]) -> None:
    data, out = write_jsonl(tmp_path / "d.jsonl", user_rows()), tmp_path / "run"
    result = runner.invoke(app, generate_args(data, out, tiny_model_dir, label_counts="dp", epochs=4))
    assert result.exit_code == 0, result.output
    assert len(users_per_step) == 8  # T = 4 epochs x 8 users / B = 4
    sampled = [rows for step in users_per_step for rows in step]
    assert all(1 <= rows <= 3 for rows in sampled) and max(sampled) > 1  # users of up to k = 3 rows, whole
    assert len((out / "synthetic.jsonl").read_text().splitlines()) == 5
    ledger = Ledger.read(out)
    assert ledger.status == "complete" and ledger.unit == PrivacyUnit("pid", 3)
    written = json.loads((out / "ledger.json").read_text())
    assert written["unit"] == {"user_field": "pid", "max_records_per_user": 3}
    assert "one user" in written["unit_of_privacy"] and "add or remove one user" in written["neighboring_in_words"]
    histogram, sgd = ledger.events
    assert "users" in histogram.description
    assert ledger.parameters["sampling_rate"] == 4 / USERS and ledger.parameters["steps"] == 8
    assert "each user is sampled with probability q = B/n_users = 0.5" in sgd.description
    assert "at most k = 3 records' gradients, clipped to L2 norm 1" in sgd.description
    assert any("the number of users n = 8" in a for a in ledger.public_assumptions)
    assert "patient" not in (out / "ledger.json").read_text()
    more = tmp_path / "more"  # texts sampled later from the adapter keep its unit of privacy
    result = runner.invoke(app, ["sample", "--from", str(out), "--num-samples", "2", "--out", str(more)])
    assert result.exit_code == 0, result.output
    assert Ledger.read(more).unit == PrivacyUnit("pid", 3)
    assert "one user" in json.loads((more / "ledger.json").read_text())["unit_of_privacy"]


def test_a_user_level_run_resumes_from_its_checkpoint_charged_once(tmp_path: Path, tiny_model_dir: Path,
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  users_per_step: list[list[int]]) -> None:
    from synthdp.run import resume_run

    data, out, budget = write_jsonl(tmp_path / "d.jsonl", user_rows()), tmp_path / "run", tmp_path / "b.budget"
    init = ["budget", "init", str(budget), "--epsilon", "50", "--delta", "1e-5", "--user-field", "pid"]
    assert runner.invoke(app, init).exit_code == 0
    steps: list[int] = []

    def crash_at_3(self: DPFinetune, step: int) -> None:
        steps.append(step)
        if step == 3:
            raise KeyboardInterrupt("simulated crash")

    monkeypatch.setattr(DPFinetune, "after_step", crash_at_3)
    args = generate_args(data, out, tiny_model_dir, "--budget", str(budget), epochs=3, checkpoint_every=2, noise=1.0)
    result = runner.invoke(app, args)
    assert result.exit_code != 0 and steps == [1, 2, 3]
    assert Ledger.read(out).status == "failed" and (out / "checkpoint" / "state.pt").is_file()
    monkeypatch.setattr(DPFinetune, "after_step", lambda self, step: steps.append(step))
    done = resume_run(out, show_progress=False)
    assert steps == [1, 2, 3, 3, 4, 5, 6]  # T = ceil(3 x 8 users / 4): continued from the checkpoint at step 2
    assert len(users_per_step) == 7 and max(rows for step in users_per_step for rows in step) > 1  # whole users
    assert done.ledger.status == "complete" and done.num_records == 5 and done.ledger.unit == PrivacyUnit("pid", 3)
    assert "each user is sampled" in done.ledger.events[-1].description
    b = Budget.load(budget)
    assert len(b.runs) == 1 and b.runs[0]["status"] == "complete" and b.unit == "user:pid"



def test_a_two_rank_user_level_run_gives_the_one_rank_corpus_ledger_and_adapter(tmp_path: Path,
                                                                               tiny_model_dir: Path) -> None:
    # a user's records split over the ranks would be averaged and clipped as two half-users: another adapter
    from test_distributed_finetune import adapter, torchrun

    data = write_jsonl(tmp_path / "d.jsonl", user_rows())
    one, two = tmp_path / "one", tmp_path / "two"
    result = runner.invoke(app, generate_args(data, one, tiny_model_dir, epochs=2))
    assert result.exit_code == 0, result.output
    done = torchrun(*generate_args(data, two, tiny_model_dir, epochs=2))
    assert done.returncode == 0, done.stderr[-3000:]
    assert (two / "synthetic.jsonl").read_text() == (one / "synthetic.jsonl").read_text()
    a, b = Ledger.read(one), Ledger.read(two)
    assert b.status == "complete" and [e.to_json() for e in b.events] == [e.to_json() for e in a.events]
    wa, wb = adapter(one), adapter(two)
    assert any(w.abs().max() > 1e-3 for w in wb.values())
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-4, atol=1e-6)


def test_a_batch_of_more_users_than_the_public_number_of_users_is_refused_with_nothing_written(
        tmp_path: Path, tiny_model_dir: Path) -> None:
    data, out = write_jsonl(tmp_path / "d.jsonl", user_rows()), tmp_path / "run"
    result = runner.invoke(app, generate_args(data, out, tiny_model_dir, batch_size=12))  # 21 records, 8 users
    assert result.exit_code == 2, result.output
    assert "larger than the public number of users n = 8" in result.output and not out.exists()
