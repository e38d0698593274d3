"""A fresh clone reaches the main job and green tests with the README's two set-up commands alone."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BASE_PARAMS = "83,289,136"  # the base preset's parameter count as the profile table prints it
# Variables of the outer make (when this suite runs under `make test`) must not reach the clone's make.
OUTER_ENV = {"PYTHONPATH", "VIRTUAL_ENV", "MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES"}


def setup_commands(readme: str) -> list[str]:
    """The commands of the first shell block under "## Set up and test", comments dropped."""
    section = readme.split("## Set up and test", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "README's 'Set up and test' section has no ```bash block"
    lines = (line.split("#", 1)[0].strip() for line in block.group(1).splitlines())
    return [line for line in lines if line]


def test_readme_sets_up_with_two_commands() -> None:
    assert setup_commands((REPO / "README.md").read_text()) == ["make profile", "make test"]


def see_current_packages(venv: Path) -> None:
    """Put this interpreter's site-packages on the venv's path, so pip finds torch already satisfied."""
    venv_site = subprocess.run(
        [venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    ours = sorted({sysconfig.get_path("purelib"), sysconfig.get_path("platlib")})
    (Path(venv_site) / "current_site_packages.pth").write_text("\n".join(ours) + "\n")


@pytest.mark.slow
@pytest.mark.skipif(
    not (REPO / ".git").exists() or shutil.which("git") is None or shutil.which("make") is None,
    reason="needs a git checkout, git and make",
)
def test_fresh_clone_runs_the_readme_commands(tmp_path: Path) -> None:
    """Clones HEAD (committed work only) and runs the README's commands as written there.

    The only departures from a newcomer's run: the clone's .venv is made here, seeing this interpreter's
    packages so nothing large is downloaded again (the Makefile's install still runs in full), and the
    profile and the tests are cut short through the ARGS and PYTEST_ARGS variables.
    """
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True)
    subprocess.run([sys.executable, "-m", "venv", clone / ".venv"], check=True)
    see_current_packages(clone / ".venv")
    env = {key: value for key, value in os.environ.items() if key not in OUTER_ENV}
    env["ARGS"] = "--mode none --no-flops --no-cross-check"
    env["PYTEST_ARGS"] = "tests/test_first_run.py -m 'not slow' -p no:cacheprovider"

    def run(command: str) -> str:
        done = subprocess.run(
            shlex.split(command), cwd=clone, env=env, capture_output=True, text=True, timeout=600
        )
        output = done.stdout + done.stderr
        assert done.returncode == 0, f"{command} failed:\n{output[-4000:]}"
        return output

    profile, test = setup_commands((clone / "README.md").read_text())
    first = run(profile)
    assert "pip install -e" in first, "the first call should install the project"
    assert BASE_PARAMS in first
    tests = run(test)
    assert re.search(r"\b\d+ passed\b", tests) and "failed" not in tests
    again = run(profile)
    assert "pip install" not in tests + again, "the stamp should spare later calls the install"
    assert BASE_PARAMS in again

    # The stamp is keyed on pyproject.toml: an edited dependency list installs again (dry run only).
    assert "pip install" not in run("make -n profile")
    with (clone / "pyproject.toml").open("a") as pyproject:
        pyproject.write("# edited\n")
    assert "pip install -e" in run("make -n profile")
