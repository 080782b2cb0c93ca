"""Bad input to `ldm-autorl` fails at once, naming what was wrong, before any training."""

from typer.testing import CliRunner

from ldm_autorl.cli import app

runner = CliRunner()


def test_run_refuses_an_undeclared_env_before_ranking(tmp_path):
    result = runner.invoke(
        app, ["run", "toy", "--env", "Nope-v0", "--root", str(tmp_path), "--rank-budget", "10"]
    )
    assert result.exit_code == 1
    assert "declares no env 'Nope-v0'" in " ".join(result.output.split())
    assert not (tmp_path / "runs").exists()  # nothing was trained


def test_run_names_the_known_libraries_for_an_unknown_one(tmp_path):
    result = runner.invoke(app, ["run", "nope", "--root", str(tmp_path)])
    assert result.exit_code == 1
    assert "unknown env library 'nope'; known libraries:" in " ".join(result.output.split())
