"""The `lch` command line: defaults from the code, exit statuses, --version, --json."""

from __future__ import annotations

import inspect
import json
from importlib.metadata import version

import tifffile
import yaml
from typer.main import get_command

from lch.pipelines.cli import app, main
from lch.synth import make_cohort


def _options(command: str) -> dict:
    return {p.name: p.default for p in get_command(app).commands[command].params}


def test_synth_command_defaults_are_the_generators():
    defaults = {name: p.default for name, p in inspect.signature(make_cohort).parameters.items()
                if p.default is not inspect.Parameter.empty}
    shown = {name: value for name, value in _options("synth").items() if name in defaults}
    assert shown == {name: defaults[name] for name in shown}
    assert set(shown) >= {"name", "patients", "movies_per_patient", "frames", "size", "seed"}


def test_synth_command_writes_the_cohort_it_is_asked_for(tmp_path):
    assert main(["synth", str(tmp_path), "--name", "c1", "--patients", "2",
                 "--movies-per-patient", "1", "--frames", "2", "--size", "96", "80"]) == 0
    manifest = yaml.safe_load((tmp_path / "cohort.yaml").read_text())
    assert manifest["cohort"] == "c1" and len(manifest["movies"]) == 2
    assert tifffile.imread(tmp_path / manifest["movies"][0]["path"]).shape == (2, 96, 80)


def test_version_and_help(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"lch {version('lch')}"
    assert main(["--help"]) == 0
    shown = capsys.readouterr().out
    for command in ("synth", "ingest", "segment", "train", "predict", "models", "promote",
                    "serve", "classify", "exaggerate", "demo"):
        assert command in shown


def test_bad_options_exit_2_and_name_the_option(tmp_path, capsys):
    assert main(["synth", str(tmp_path), "--patients", "0"]) == 2
    assert "--patients" in capsys.readouterr().err
    assert main(["train", "--cohort", "c", "--epochs", "many"]) == 2
    assert "--epochs" in capsys.readouterr().err
    assert main(["train", "--cohort", "c", "--report-cells", "0"]) == 2
    assert "--report-cells" in capsys.readouterr().err
    assert main(["no-such-command"]) == 2
    assert not any(tmp_path.iterdir())  # nothing written


def test_cluster_and_tracking_options_read_ray_and_mlflow_variables():
    for command in ("ingest", "segment", "train", "predict", "serve"):
        (address,) = [p for p in get_command(app).commands[command].params if p.name == "address"]
        assert address.envvar == "RAY_ADDRESS", command
    for command in ("train", "predict", "models", "promote", "serve", "exaggerate"):
        (uri,) = [p for p in get_command(app).commands[command].params
                  if p.name == "tracking_uri"]
        assert uri.envvar == "MLFLOW_TRACKING_URI", command


def test_models_as_json_on_an_empty_registry(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LCH_HOME", str(tmp_path / "home"))
    # Set here so that monkeypatch restores it after the command's --tracking-uri sets it.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'env' / 'mlflow.db'}")
    uri = f"sqlite:///{tmp_path / 'given' / 'mlflow.db'}"
    assert main(["models", "--json", "--tracking-uri", uri]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert (tmp_path / "given" / "mlflow.db").exists()  # the option's store
    assert not (tmp_path / "env").exists() and not (tmp_path / "home").exists()


def test_exaggerate_before_any_promotion_says_how_to_promote(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LCH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    crop = tmp_path / "cell.png"
    crop.write_bytes(b"not read: the model is looked up first")
    assert main(["exaggerate", "--out", str(tmp_path / "out"), "--crop", str(crop)]) == 2
    err = capsys.readouterr().err
    assert "no version of lch-aae holds the alias 'champion'" in err
    assert "lch promote VERSION" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_serve_info_lines_stay_off_the_terminal_unless_verbose(monkeypatch):
    import logging

    from ray import serve  # noqa: F401  (importing it sets its logger to INFO)

    from lch.pipelines import runtime

    logger = logging.getLogger("ray.serve")
    monkeypatch.setattr(logger, "level", logging.INFO)
    for to_files_only, level in ((False, logging.INFO), (True, logging.WARNING)):
        monkeypatch.setitem(runtime._LOGS, "to_files_only", to_files_only)
        runtime.keep_serve_logs_in_files()
        assert logger.level == level
