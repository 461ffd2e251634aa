"""requirements.txt and environment.yml pin the same packages; the README's commands are what CI runs."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([A-Za-z0-9_.+\-]+)$")


def _pins(lines) -> dict[str, str]:
    pins = {}
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#") or line.startswith("-e"):
            continue
        m = PIN.match(line)
        assert m, f"not an exact pin: {line!r}"
        pins[m[1].lower()] = m[2]
    return pins


def test_requirements_and_environment_yml_pin_the_same_versions():
    import yaml  # a dependency of jupyter (jupyter-events); parses the file as conda would

    req = _pins((ROOT / "requirements.txt").read_text().splitlines())
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    deps = env["dependencies"]
    assert "python=3.11" in deps and "pip" in deps
    pip_block = next(d["pip"] for d in deps if isinstance(d, dict))
    assert _pins(pip_block) == req
    assert req["torch"] == "2.13.0"  # a CPU wheel; anything else pulls a multi-GB CUDA build


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    commands = re.findall(r"^\s*(make \w+)\s*(?:#.*)?$", ci, re.M)
    assert commands == ["make test"]
    assert "make test" in readme and "make reproduce" in readme
