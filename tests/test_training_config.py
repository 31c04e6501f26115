"""training.config: the --help texts come from the configs' field comments."""

from __future__ import annotations

import dataclasses

import pytest

from training.config import field_help, parse_dataclass_config


@dataclasses.dataclass
class _Example:
    alpha: int = 3  # how many alphas (about 5 % of them)
    # the beta rate, in two
    # comment lines
    beta: float = 0.5
    gamma: str = "x"
    # a comment with a blank line under it belongs to nobody

    delta: bool = True  # delta's own
    items: list[str] = dataclasses.field(default_factory=list)


def test_field_help_reads_the_comment_above_and_on_the_line():
    helps = field_help(_Example)
    assert helps == {
        "alpha": "how many alphas (about 5 % of them)",
        "beta": "the beta rate, in two comment lines",
        "delta": "delta's own",
    }


def test_help_shows_each_fields_comment_and_default(capsys):
    with pytest.raises(SystemExit):
        parse_dataclass_config(_Example, ["--help"], "example")
    text = " ".join(capsys.readouterr().out.split())
    assert "--alpha ALPHA how many alphas (about 5 % of them) (default: 3)" in text
    assert "the beta rate, in two comment lines (default: 0.5)" in text
    assert "--gamma GAMMA default: x" in text
    assert "delta's own (default: True)" in text
    assert "belongs to nobody" not in text


def test_every_training_option_has_a_help_text():
    from training.train_classifier import ClassifierTrainConfig
    from training.train_segmentation import SegTrainConfig

    for cls in (ClassifierTrainConfig, SegTrainConfig):
        helps = field_help(cls)
        bare = [f.name for f in dataclasses.fields(cls) if f.name != "notes" and f.name not in helps]
        assert not bare, f"{cls.__name__}: options without a comment (their --help would be empty): {bare}"


@pytest.mark.parametrize("module", ["training.train_classifier", "training.train_segmentation"])
def test_the_training_scripts_help_renders(module, capsys):
    import importlib

    with pytest.raises(SystemExit) as done:
        importlib.import_module(module).parse_config(["--help"])
    assert done.value.code == 0
    assert "--epochs EPOCHS" in capsys.readouterr().out
