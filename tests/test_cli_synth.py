"""`lch synth`: the generator's own defaults, and a cohort written from the command line."""

from __future__ import annotations

import inspect

import tifffile
import yaml

from lch.pipelines.cli import build_parser, main
from lch.synth import make_cohort


def test_synth_command_defaults_are_the_generators():
    args = vars(build_parser().parse_args(["synth", "out"]))
    defaults = {name: p.default for name, p in inspect.signature(make_cohort).parameters.items()
                if p.default is not inspect.Parameter.empty}
    shown = {name: args[name] for name in defaults if name in args}
    assert shown == {name: defaults[name] for name in shown}
    assert set(shown) >= {"name", "patients", "movies_per_patient", "frames", "size", "seed"}


def test_synth_command_writes_the_cohort_it_is_asked_for(tmp_path):
    assert main(["synth", str(tmp_path), "--name", "c1", "--patients", "2",
                 "--movies-per-patient", "1", "--frames", "2", "--size", "96", "80"]) == 0
    manifest = yaml.safe_load((tmp_path / "cohort.yaml").read_text())
    assert manifest["cohort"] == "c1" and len(manifest["movies"]) == 2
    assert tifffile.imread(tmp_path / manifest["movies"][0]["path"]).shape == (2, 96, 80)
