"""`unsuperpose sae --list-params [METHOD]`: every method's parameters with their defaults and
docs, read from the config dataclasses; `sae --help` points to it."""
import dataclasses

from click.testing import CliRunner

from unsuperpose.sae.cli import main
from unsuperpose.sae.methods import METHODS
from unsuperpose.sae.param_docs import summary


def _invoke(*args):
    return CliRunner().invoke(main, list(args))


def test_every_method_and_every_parameter_is_listed_and_the_command_exits_0():
    result = _invoke("--list-params")
    assert result.exit_code == 0, result.output
    out = result.output
    for name, (cls, _) in METHODS.items():
        assert f"\n{name} ({cls.config_class.__name__.removesuffix('Config')}; " in out, name
        block = out.split(f"\n{name} (", 1)[1].split("\n\n", 1)[0]
        for field in dataclasses.fields(cls.config_class):
            assert f"\n  {field.name} " in block, (name, field.name)
    assert "  lr                    0.01: Adam's base learning rate\n" in out          # topk's
    assert "  k                     set by the stage: latents kept per row" in out
    assert "  nonnegative            True (fixed: it defines mod_nn): nonnegative codes" in out
    assert "  max_iter       3: passes over the data" in out                           # sklearn's


def test_one_method_is_listed_alone_with_its_whole_docs():
    result = _invoke("--list-params", "topk")
    assert result.exit_code == 0, result.output
    assert "\ntopk (TopKSAE; --param topk.NAME=VALUE):" in result.output
    assert "\nl1 (" not in result.output and "\nmod (" not in result.output
    # the whole doc, past the first ';' the one-line listing stops at
    assert "AuxK pulls healthy rare" in " ".join(result.output.split())


def test_an_unknown_method_is_refused_naming_the_valid_ones():
    result = _invoke("--list-params", "topkk")
    assert result.exit_code == 2
    assert "unknown method 'topkk'; valid: l1, topk" in result.output


def test_help_points_to_the_listing():
    result = _invoke("--help")
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "--list-params [METHOD]" in text and "(--list-params lists them)" in text


def test_a_doc_is_shortened_to_its_first_sentence_or_clause():
    assert summary("rows per step") == "rows per step"
    assert summary("one thing. And more after it") == "one thing."
    long = "a latent silent this many steps counts as dead; keep steps * batch_size " + "x " * 60
    assert summary(long) == "a latent silent this many steps counts as dead"
    inside = "up to k atoms (at most a cap; never fewer than k); " + "y " * 60
    assert summary(inside) == "up to k atoms (at most a cap; never fewer than k)"
    assert len(summary("z " * 200)) <= 100 and summary("z " * 200).endswith("...")
