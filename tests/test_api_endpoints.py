"""Several OpenAI-compatible endpoints in one run (`--api-base` repeated): requests spread over them,
answers in request order, every endpoint checked before anything is spent, a failing endpoint's
requests retried on another, and `api_base` in config files (one string as before, or a list)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pe_helpers import FakeOpenAI, free_port
from typer.testing import CliRunner

from synthdp.cli import app
from synthdp.config import RunConfig, check_config
from synthdp.errors import ModelError, OptionError
from synthdp.models.api import ApiGenerator
from synthdp.models.generator import Request
from synthdp.privacy.budget import Budget
from synthdp.privacy.ledger import Ledger

runner = CliRunner()
FAST = {"retry_base": 0.01, "max_retries": 3}


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-secret")


@pytest.fixture()
def two():
    fakes = (FakeOpenAI(answer=lambda p: "A " + p), FakeOpenAI(answer=lambda p: "B " + p))
    yield fakes
    for fake in fakes:
        fake.close()


def connect(fakes: tuple[FakeOpenAI, ...], **kw: object) -> ApiGenerator:
    return ApiGenerator.connect("openai:tiny", [f.base_url for f in fakes], **{**FAST, **kw})  # type: ignore[arg-type]


def requests(n: int) -> list[Request]:
    return [Request(f"prompt {i}", max_tokens=4) for i in range(n)]


def test_requests_are_spread_over_two_endpoints_within_the_limit_per_endpoint(two: tuple[FakeOpenAI, ...]) -> None:
    a, b = two
    gen = connect(two, concurrency=2)
    assert a.answered == b.answered == 1  # the 1-token check, on each endpoint
    a.delay = b.delay = 0.05
    texts = gen.generate(requests(16))
    assert len(texts) == 16
    # least busy first, ties in turn: two equal servers share the work (each 8 give or take a few)
    assert a.answered - 1 >= 4 and b.answered - 1 >= 4 and a.answered + b.answered - 2 == 16
    assert a.max_in_flight == b.max_in_flight == 2  # `concurrency` is per endpoint
    summary = gen.summary()["api_answers_per_endpoint"]
    assert f"{a.base_url}: {a.answered - 1}" in summary and f"{b.base_url}: {b.answered - 1}" in summary


def test_answers_come_back_in_request_order_whichever_endpoint_answered(two: tuple[FakeOpenAI, ...]) -> None:
    a, b = two
    gen = connect(two, concurrency=3)
    a.delay = 0.15  # A answers late: answers arrive out of request order
    seen: dict[int, str] = {}
    texts = gen.generate(requests(12), on_answer=lambda i, t: seen.__setitem__(i, t))
    assert [t.split(" ", 1)[1] for t in texts] == [f"prompt {i}" for i in range(12)]
    assert {t[0] for t in texts} == {"A", "B"}  # both answered
    assert seen == dict(enumerate(texts))


def test_every_endpoint_is_checked_and_a_dead_one_is_named(two: tuple[FakeOpenAI, ...]) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(ModelError, match=rf"Cannot reach the model endpoint {dead} \(endpoint 2 of 2\)"):
        ApiGenerator.connect("openai:tiny", [two[0].base_url, dead], retry_base=0.01, check_retries=1)
    other = FakeOpenAI(models=("other",))
    try:
        with pytest.raises(ModelError, match=rf"{other.base_url} \(endpoint 2 of 2\) does not offer the model 'tiny'"):
            connect((two[0], other))
        other.list_models = False  # no model list: the 1-token request finds the wrong model
        with pytest.raises(ModelError, match=rf"{other.base_url} \(endpoint 2 of 2\) rejected the model 'tiny'"):
            connect((two[0], other))
    finally:
        other.close()


def test_an_endpoint_failing_mid_run_has_its_requests_retried_on_the_other(two: tuple[FakeOpenAI, ...]) -> None:
    a, b = two
    gen = connect(two, concurrency=2, max_retries=1)
    b.fail_after = 3  # the check and 2 requests, then every request fails with 500
    texts = gen.generate(requests(20))
    assert [t.split(" ", 1)[1] for t in texts] == [f"prompt {i}" for i in range(20)]
    assert b.chat_requests > b.answered == 3 and a.answered - 1 == 20 - 2
    assert gen.stats.retries == b.chat_requests - b.answered
    b.close()  # B is gone (connection refused): A answers everything, each request at most one retry
    texts = gen.generate(requests(6))
    assert all(t.startswith("A ") for t in texts)
    with pytest.raises(ModelError, match="--resume"):  # both gone: the run fails after the bounded retries
        a.close()
        gen.generate(requests(2))


def write_data(path: Path) -> Path:
    rows = [{"text": f"message number {i} about the cup final", "label": "spam" if i % 3 == 0 else "ham"}
            for i in range(18)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def pe_args(tmp_path: Path, out: Path, *api_base: str) -> list[str]:
    args = ["generate", "--data", str(write_data(tmp_path / "d.jsonl")), "--pipeline", "private-evolution",
            "-e", "2", "-d", "1e-5", "-n", "4", "--out", str(out), "--model", "openai:tiny", "--no-progress",
            "--set", "iterations=2", "--set", "variations=2", "--set", "retry_base=0.01", "--set", "probe=2",
            "--set", "concurrency=2"]
    for url in api_base:
        args += ["--api-base", url]
    return args


def test_cli_refuses_a_dead_second_endpoint_before_anything_is_spent(tmp_path: Path, two: tuple[FakeOpenAI, ...]) -> None:
    budget = tmp_path / "budget.json"
    assert runner.invoke(app, ["budget", "init", str(budget), "-e", "10", "-d", "1e-5"]).exit_code == 0
    dead = f"http://127.0.0.1:{free_port()}/v1"
    out = tmp_path / "o"
    result = runner.invoke(app, [*pe_args(tmp_path, out, two[0].base_url, dead), "--budget", str(budget)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert dead in result.output and "endpoint 2 of 2" in result.output
    assert not out.exists() and Budget.load(budget).runs == []
    assert two[0].answered <= 1  # at most the 1-token check: no probe, no RANDOM_API


def test_cli_runs_over_two_endpoints_and_names_the_model_once(tmp_path: Path, two: tuple[FakeOpenAI, ...]) -> None:
    a, b = two
    out = tmp_path / "release"
    result = runner.invoke(app, pe_args(tmp_path, out, f"{a.base_url},{b.base_url}"))  # a comma-separated list
    assert result.exit_code == 0, result.output
    assert a.answered > 2 and b.answered > 2
    assert "api answers per endpoint" in result.output
    records = [json.loads(line) for line in (out / "synthetic.jsonl").read_text().splitlines()]
    assert len(records) == 4
    named = [x for x in Ledger.read(out).public_assumptions if x.startswith("the model: ")]
    assert named == [f"the model: openai:tiny at {a.base_url}, {b.base_url}; embedder: {named[0].split('embedder: ')[1]}"]
    config = (out / "config.toml").read_text()
    assert f'api_base = [\n    "{a.base_url}",\n    "{b.base_url}",\n]' in config or \
        f'api_base = ["{a.base_url}", "{b.base_url}"]' in config
    assert "sk-test-not-a-secret" not in "".join(p.read_text(errors="ignore") for p in out.rglob("*") if p.is_file())


def check(api_base: object) -> RunConfig:
    cfg = RunConfig(out=Path("o"), epsilon=1.0, delta=1e-5, num_samples=1, api_base=api_base)  # type: ignore[arg-type]
    check_config(cfg)
    return cfg


def test_api_base_one_text_as_before_or_a_list() -> None:
    one = check("http://h:1/v1")
    assert one.api_base == "http://h:1/v1" and one.model_spec().api_base == ("http://h:1/v1",)
    assert check(None).model_spec().api_base is None
    for form in (["http://h:1/v1", "http://h:2/v1"], "http://h:1/v1, http://h:2/v1", ("http://h:1/v1,", "http://h:2/v1")):
        cfg = check(form)
        assert cfg.api_base == ["http://h:1/v1", "http://h:2/v1"]
        assert cfg.model_spec().api_base == ("http://h:1/v1", "http://h:2/v1")
    with pytest.raises(OptionError, match="`api_base` must name each endpoint once. Found http://h:1/v1 2 times"):
        check(["http://h:1/v1", "http://h:1/v1"])
    with pytest.raises(OptionError, match="`api_base` must be an endpoint URL, a list of them, or unset. Found 8001"):
        check(8001)
