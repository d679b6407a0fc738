"""The three stage commands as a user meets them: options drawn from the config dataclasses,
--config files, `python -m` and the console scripts."""
import configparser
import dataclasses
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from unsuperpose.data import files
from unsuperpose.data.config_cli import ConfigOptions, field_docs, field_help
from unsuperpose.data.configs import ConfigError, JSONConfig
from unsuperpose.evaluate.cli import OPTIONS as EVALUATE_OPTIONS
from unsuperpose.evaluate.cli import main as evaluate_main
from unsuperpose.evaluate.config import EvaluateConfig
from unsuperpose.generate.cli import OPTIONS as GENERATE_OPTIONS
from unsuperpose.generate.cli import main as generate_main
from unsuperpose.generate.config import GenerateConfig
from unsuperpose.sae.cli import OPTIONS as SAE_OPTIONS
from unsuperpose.sae.cli import main as sae_main
from unsuperpose.sae.config import SAEStageConfig

ROOT = Path(__file__).parent.parent

# (command, its config, its ConfigOptions, {field: the hand-written option that sets it})
COMMANDS = [
    pytest.param(generate_main, GenerateConfig, GENERATE_OPTIONS, {"world": "--world"}, id="generate"),
    pytest.param(sae_main, SAEStageConfig, SAE_OPTIONS, {"params": "--param"}, id="sae"),
    pytest.param(evaluate_main, EvaluateConfig, EVALUATE_OPTIONS, {"external": "--external"},
                 id="evaluate"),
]


def _options(command) -> dict[str, click.Option]:
    return {p.name: p for p in command.params if isinstance(p, click.Option)}


@pytest.mark.parametrize("command, config_class, options, special", COMMANDS)
def test_every_config_field_is_an_option_with_its_docstring_as_help(command, config_class, options,
                                                                     special):
    params = _options(command)
    flags = {opt for p in params.values() for opt in p.opts + p.secondary_opts}
    for f in dataclasses.fields(config_class):
        doc = field_help(config_class, f.name)
        assert doc, f"{config_class.__name__}.{f.name} has no docstring (its --help text)"
        if f.name in special:
            assert special[f.name] in flags
            continue
        param = params[f.name]  # the option sets the field of its name
        assert param.help.startswith(doc), (f.name, param.help)
        assert "[default: " in param.help and param.default is None  # a --config value stays
        name = options.names[f.name]
        assert name in param.opts
        assert options.bad_parameter(ConfigError(f.name, "bad")).param_hint == name


def test_field_docs_read_the_string_under_each_field_and_the_bases_fields():
    docs = field_docs(GenerateConfig)
    assert docs["noise_std"] == "Gaussian noise added to synthetic activations (synthetic source only)."
    assert docs["p_min"].startswith("Synthetic source: probability of the rarest feature")  # WorldFields
    assert set(docs) == {f.name for f in dataclasses.fields(GenerateConfig)}


def test_option_kinds_follow_the_annotations_and_the_choices_the_config_declares():
    from unsuperpose.data.cli import FloatList, NameList
    from unsuperpose.data.config_cli import OrNone
    from unsuperpose.generate.firing import SCHEDULES
    from unsuperpose.data.rows import NONFINITE_POLICIES
    from unsuperpose.models.toy import MODEL_KINDS

    generate, sae, evaluate = (_options(c) for c in (generate_main, sae_main, evaluate_main))
    assert tuple(generate["model_kind"].type.choices) == MODEL_KINDS
    assert tuple(generate["probability_schedule"].type.choices) == SCHEDULES
    assert tuple(sae["on_nonfinite"].type.choices) == tuple(evaluate["on_nonfinite"].type.choices)
    assert tuple(sae["on_nonfinite"].type.choices) == NONFINITE_POLICIES
    assert isinstance(generate["feature_probability"].type, FloatList)
    assert isinstance(evaluate["instances"].type, NameList) and "--instance" in evaluate["instances"].opts
    assert isinstance(generate["correlation_rank"].type, OrNone)
    assert evaluate["figures"].is_flag and evaluate["figures"].secondary_opts == ["--no-figures"]
    assert generate["hierarchy_exclusive"].type is click.BOOL  # `--hierarchy-exclusive false`, as before
    for options in (sae, evaluate):
        assert options["drop_zero_rows"].secondary_opts == ["--keep-zero-rows"]


# ---- a new field is a new option ----------------------------------------------------------------
@dataclass(frozen=True)
class _Toy(JSONConfig):
    count: int = 3
    """How many."""
    ratio: float | None = None
    """A ratio; none: left to the data."""
    mode: str = field(default="a", metadata={"choices": ("a", "b")})
    """The mode."""
    names: tuple[str, ...] = ()
    """Some names."""
    values: tuple[float, ...] = (0.5, 1.0)
    """Some values."""
    on: bool = True
    """A switch."""

    def __post_init__(self):
        if self.count < 0:
            raise ConfigError("count", f"must be >= 0, got {self.count}")


_TOY = ConfigOptions(_Toy)


@click.command()
@_TOY
def _toy_main(**options):
    click.echo(json.dumps(_TOY.build({"count": 1, **_TOY.given(options)}).to_dict()))


@pytest.mark.parametrize("args, expected", [
    ([], {"count": 1, "ratio": None, "mode": "a", "names": [], "values": [0.5, 1.0], "on": True}),
    (["--count", "4", "--ratio", "0.25", "--mode", "b", "--names", "x,y", "--values", "2", "--no-on"],
     {"count": 4, "ratio": 0.25, "mode": "b", "names": ["x", "y"], "values": [2.0], "on": False}),
    (["--ratio", "none", "--on"], {"count": 1, "ratio": None, "mode": "a", "names": [],
                                   "values": [0.5, 1.0], "on": True}),
])
def test_a_new_field_becomes_an_option_with_nothing_else_written(args, expected):
    result = CliRunner().invoke(_toy_main, args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == expected


@pytest.mark.parametrize("args, message", [
    (["--count", "-1"], "Invalid value for --count: must be >= 0, got -1"),
    (["--mode", "c"], "'c' is not one of 'a', 'b'"),
    (["--values", "x"], "'x' is not a comma-separated list of numbers"),
])
def test_a_new_fields_refusals_name_its_option(args, message):
    result = CliRunner().invoke(_toy_main, args)
    assert result.exit_code == 2 and message in result.output, result.output


def test_a_new_fields_help_is_its_docstring_and_default():
    result = CliRunner().invoke(_toy_main, ["--help"])
    text = " ".join(result.output.split())
    for expected in ["--count INTEGER How many. [default: 3]", "--ratio FLOAT|NONE",
                     "[default: none]", "--mode [a|b] The mode. [default: a]",
                     "--values FLOAT[,FLOAT...] Some values. [default: 0.5,1]",
                     "--on / --no-on A switch. [default: on]"]:
        assert expected in text, text


def test_a_field_of_an_unknown_type_is_refused_when_the_command_is_built():
    @dataclass(frozen=True)
    class Odd(JSONConfig):
        table: dict = field(default_factory=dict)
        """A table."""

    with pytest.raises(TypeError, match="Odd.table: no option type"):
        ConfigOptions(Odd)(lambda **kw: None)
    ConfigOptions(Odd, skip=("table",))(lambda **kw: None)  # written by hand instead


# ---- --config --------------------------------------------------------------------------------
@pytest.mark.parametrize("command", [generate_main, sae_main, evaluate_main],
                         ids=["generate", "sae", "evaluate"])
@pytest.mark.parametrize("text, message", [
    ("{\"a\": ", "Invalid value for --config: "),
    ("", "not valid JSON"),
    ("3", "expected a JSON object of config fields"),
])
def test_a_malformed_config_file_is_one_line_naming_config(tmp_path, command, text, message):
    path = tmp_path / "config.json"
    path.write_text(text)
    result = CliRunner().invoke(command, ["--run-dir", str(tmp_path), "--config", str(path)])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert message in " ".join(result.output.split()), result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "--config" in errors[0]


def test_a_saved_evaluate_config_given_as_config_reproduces_the_evaluation(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    fit = CliRunner().invoke(sae_main, ["--run-dir", str(run), "--methods", "mod", "--n-iter", "2",
                                        "--device", "cpu"])
    assert fit.exit_code == 0, fit.output
    first = CliRunner().invoke(evaluate_main, ["--run-dir", str(run), "--max-rows", "400",
                                               "--thresholds", "0.5,0.8", "--seed", "2",
                                               "--keep-zero-rows", "--no-figures",
                                               "--instance", "01-p0.05", "--duplicate-cosine", "0.9"])
    assert first.exit_code == 0, first.output
    saved = run / "saved-evaluate.json"
    shutil.copy(files.evaluate_dir(run) / files.CONFIG_FILE, saved)
    metrics = (files.evaluate_dir(run) / files.METRICS_CSV).read_text()
    shutil.rmtree(files.evaluate_dir(run))

    again = CliRunner().invoke(evaluate_main, ["--run-dir", str(run), "--config", str(saved)])
    assert again.exit_code == 0, again.output
    config = json.loads((files.evaluate_dir(run) / files.CONFIG_FILE).read_text())["config"]
    assert config == json.loads(saved.read_text())["config"]
    assert config == EvaluateConfig(instances=("01-p0.05",), max_rows=400, thresholds=(0.5, 0.8), seed=2,
                                    drop_zero_rows=False, figures=False,
                                    duplicate_cosine=0.9).to_dict()
    assert (files.evaluate_dir(run) / files.METRICS_CSV).read_text() == metrics
    # an option over the file sets only its own field
    over = CliRunner().invoke(evaluate_main, ["--run-dir", str(run), "--config", str(saved),
                                              "--instance", "00-p0.2", "--max-rows", "300"])
    assert over.exit_code == 0, over.output
    config = json.loads((files.evaluate_dir(run) / files.CONFIG_FILE).read_text())["config"]
    assert config == {**json.loads(saved.read_text())["config"], "instances": ["00-p0.2"],
                      "max_rows": 300}


def test_a_bad_value_in_an_evaluate_config_file_names_the_option_not_the_file(tmp_path):
    path = tmp_path / "evaluate.json"
    path.write_text(json.dumps({"config": {"duplicate_cosine": 2, "seed": 1}}))
    result = CliRunner().invoke(evaluate_main, ["--run-dir", str(tmp_path), "--config", str(path)])
    assert result.exit_code == 2, result.output
    assert "Invalid value for --duplicate-cosine: must be finite and in [-1, 1], got 2" in result.output


# ---- python -m and the one console script -------------------------------------------------------
@pytest.mark.parametrize("module, prog", [("unsuperpose.generate", "python -m unsuperpose.generate"),
                                          ("unsuperpose.sae", "python -m unsuperpose.sae"),
                                          ("unsuperpose.evaluate", "python -m unsuperpose.evaluate")])
@pytest.mark.slow
def test_python_m_help_exits_0(module, prog):
    done = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"Usage: {prog} [OPTIONS]") and "--run-dir" in done.stdout


def test_setup_cfg_installs_one_console_script_with_every_stage_as_a_subcommand():
    from click.testing import CliRunner

    from unsuperpose.cli import SUBCOMMANDS, main

    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    scripts = dict(line.replace(" ", "").split("=") for line in
                   parser["options.entry_points"]["console_scripts"].strip().splitlines())
    assert scripts == {"unsuperpose": "unsuperpose.cli:main"}
    assert list(SUBCOMMANDS) == ["generate", "sae", "evaluate", "sweep", "paper"]
    listing = CliRunner().invoke(main, ["--help"])
    assert listing.exit_code == 0 and all(f"  {name} " in listing.output for name in SUBCOMMANDS)
    for name in SUBCOMMANDS:
        result = CliRunner().invoke(main, [name, "--help"])
        assert result.exit_code == 0, result.output
        assert result.output.startswith(f"Usage: main {name} [OPTIONS]")


# ---- --help without the heavy libraries (issue 28, item 3) ---------------------------------------
HEAVY = ("torch", "datasets", "sklearn", "matplotlib")
CLI_MODULES = ["unsuperpose.cli", "unsuperpose.generate.cli", "unsuperpose.sae.cli",
               "unsuperpose.evaluate.cli", "unsuperpose.evaluate.sweep.cli",
               "unsuperpose.generate.paper.cli"]


@pytest.mark.parametrize("module", CLI_MODULES)
def test_a_command_and_its_help_load_no_heavy_library(module):
    # a fresh interpreter: this one has them all loaded; a check of imports, not of time
    code = (f"import sys; import {module} as m; "
            "m.main(['--help'], standalone_mode=False) if m.__name__ != 'unsuperpose.cli' else "
            "[m.main([name, '--help'], standalone_mode=False) for name in m.SUBCOMMANDS]; "
            f"print(sorted(k for k in {HEAVY!r} if k in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "[]", f"{module} --help loaded {done.stdout.splitlines()[-1]}"
