"""The ladder benchmark's table marks the rows of methods it does not tune."""
from benchmarks.bench_worlds import COLUMNS, UNTUNED, print_table
from unsuperpose.evaluate.oracle import ORACLE


def _row(method, note=None):
    return {"method": method, **{c: 0.5 for c in COLUMNS}, "note": note}


def test_an_untuned_method_is_marked_with_its_reason_below_the_table(capsys):
    result = {"world": "w", "n_features": 8, "d": 4, "k": 2, "samples": 100,
              "rows": [_row(ORACLE), _row("topk"), _row("sklearn", UNTUNED["sklearn"])]}
    print_table(result)
    lines = capsys.readouterr().out.splitlines()
    assert "| sklearn † | 0.500 |" in "\n".join(lines)
    assert "| topk | 0.500 |" in "\n".join(lines)
    assert lines[-1] == f"† {UNTUNED['sklearn']}"
    assert "2048 training rows once" in lines[-1]
