"""The README opens with the two set-up commands, and CI runs the second one verbatim."""

import shlex
from pathlib import Path

from click.testing import CliRunner

from rs_pgd.cli.main import cli

REPO = Path(__file__).resolve().parents[1]


def _setup_commands():
    text = (REPO / "README.md").read_text()
    block = text.split("```bash\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip()]


def test_readme_opens_with_exactly_two_setup_commands():
    lines = [line for line in (REPO / "README.md").read_text().splitlines() if line.strip()]
    assert lines[0] == "# rs-pgd" and lines[1] == "```bash"  # the commands open the README
    commands = _setup_commands()
    assert len(commands) == 2
    assert "rs-pgd fit" in commands[0] and "rs-pgd predict" in commands[0] and "pytest" in commands[1]


def test_ci_runs_the_readme_test_command_verbatim():
    ci = (REPO / ".ci" / "run").read_text()
    assert _setup_commands()[1] in ci.splitlines()


def test_the_main_job_uses_valid_options_and_the_shipped_scene():
    parts = [p.strip() for p in _setup_commands()[0].split("&&")]
    jobs = [shlex.split(p) for p in parts if "rs-pgd" in p]
    assert [j[1] for j in jobs] == ["fit", "predict"]
    for job in jobs:
        for arg in job[2:]:
            if arg.startswith("rs_pgd/data/"):
                assert (REPO / arg).is_file(), arg
        # click parses the options (and --help stops before any work)
        result = CliRunner().invoke(cli, [*job[1:], "--help"])
        assert result.exit_code == 0, result.output
