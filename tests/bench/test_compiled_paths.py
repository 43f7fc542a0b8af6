"""`scripts/bench --compiled`: both paths timed on the same batches, and the row says which path was compiled."""

from __future__ import annotations

import pytest

from bench import compiled_paths


def test_the_compiled_bench_times_both_paths_and_names_the_plan(capsys):
    assert compiled_paths.main(["--models", "gb-regressor", "--rows", "1,3", "--rounds", "1", "--calls", "2"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[1:]]
    assert [(row[0], row[1]) for row in rows] == [("gb-regressor", "1"), ("gb-regressor", "3")]
    for row in rows:
        assert float(row[2]) > 0
        assert float(row[3]) > 0
        assert row[-1] == "GradientBoostingRegressor"  # "compiled GradientBoostingRegressor": not a fallback
        assert row[-2] == "compiled"


def test_an_unknown_model_is_refused_by_name(capsys):
    with pytest.raises(SystemExit):
        compiled_paths.main(["--models", "gb-regressor,svm"])
    assert "unknown model(s) svm" in capsys.readouterr().err
