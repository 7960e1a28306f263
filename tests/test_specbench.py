"""eval.specbench reads Spec-Bench questions, runs multi-turn conversations and writes answer files whose speedups,
read the way Spec-Bench's evaluation/speed.py reads them, are the ones its table reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eval import specbench


def spec_bench_speed(method_file: Path, base_file: Path, categories: set[str] | None) -> float:
    """Spec-Bench's rule, written independently: per question sum(new_tokens) / sum(wall_time), mean over
    questions, method over baseline."""

    def mean_rate(path: Path) -> float:
        rates = []
        for line in path.read_text().splitlines():
            item = json.loads(line)
            if categories is None or item["category"] in categories:
                choice = item["choices"][0]
                rates.append(sum(choice["new_tokens"]) / sum(choice["wall_time"]))
        return sum(rates) / len(rates)

    return mean_rate(method_file) / mean_rate(base_file)


def test_questions_load_and_subtasks_cover_spec_bench() -> None:
    questions = specbench.load_questions(specbench.SAMPLE)
    assert {q.subtask for q in questions} == set(specbench.SUBTASKS)
    assert all(len(q.turns) == 2 for q in questions if q.subtask == "mt_bench")
    check = specbench.load_questions(specbench.SAMPLE.with_name("specbench_check.jsonl"))
    assert not {q.turns for q in check} & {q.turns for q in questions}, "the check set shares no question"


def test_bad_question_file_is_one_error(tmp_path: Path) -> None:
    bad = tmp_path / "q.jsonl"
    bad.write_text('{"question_id": 1, "turns": ["hi"]}\n')
    with pytest.raises(ValueError, match="need question_id, category, turns"):
        specbench.load_questions(bad)


def test_specbench_answer_files_give_the_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sb.json"
    answers = tmp_path / "answers"
    code = specbench.main(
        ["--categories", "writing,qa", "--limit", "2", "--max-new-tokens", "12", "--drafts", "ngram",
         "--trees", "ar,dynamic", "--answer-dir", str(answers), "--out", str(out)]
    )  # fmt: skip
    assert code == 0
    files = sorted(p.name for p in answers.glob("*.jsonl"))
    assert files == ["hf_generate.jsonl", "specvlm-ar[ngram].jsonl", "specvlm-dynamic[ngram].jsonl"]
    first = json.loads((answers / "hf_generate.jsonl").read_text().splitlines()[0])
    choice = first["choices"][0]
    assert set(first) == {"question_id", "category", "model_id", "choices", "tstamp"}
    assert first["category"] == "writing" and len(choice["turns"]) == 2, "an MT-bench question runs both turns"
    assert len(choice["new_tokens"]) == len(choice["wall_time"]) == len(choice["decoding_steps"]) == 2
    assert sum(choice["accept_lengths"]) == sum(choice["new_tokens"])
    summary = json.loads(out.read_text())
    rows = {r["method"]: r for r in summary["rows"]}
    for method in ("specvlm-ar[ngram]", "specvlm-dynamic[ngram]"):
        row = rows[method]
        assert row["overall"]["identical"] == "2/2", "greedy answers equal HF greedy generate's"
        for task, cats in (("overall", None), ("mt_bench", set(specbench.MT_BENCH)), ("qa", {"qa"})):
            want = spec_bench_speed(answers / f"{method}.jsonl", answers / "hf_generate.jsonl", cats)
            assert row[task]["speedup"] == pytest.approx(want, abs=1e-3)
    assert "mt_bench" in capsys.readouterr().out


def test_a_draft_folder_in_a_method_name_gives_one_answer_file_not_a_subfolder() -> None:
    path = specbench.answer_path(Path("answers"), "specvlm-dynamic[runs/draft6+ngram]")
    assert path == Path("answers") / "specvlm-dynamic[runs_draft6+ngram].jsonl" and path.parent == Path("answers")
