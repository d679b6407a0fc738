"""Faults around generate: rerunning it with the same config keeps the later stages current."""
import shutil

from click.testing import CliRunner

from tests.stage_faults import _evaluate
from unsuperpose.data import files


def test_rerunning_generate_with_the_same_config_keeps_the_dictionaries_current(run):
    from unsuperpose.generate.cli import main as generate_main
    config = run / "saved-generate.json"
    shutil.copy(files.generate_dir(run) / files.CONFIG_FILE, config)
    result = CliRunner().invoke(generate_main, ["--run-dir", str(run), "--config", str(config)])
    assert result.exit_code == 0, result.output
    result = _evaluate(run)
    assert result.exit_code == 0, result.output
