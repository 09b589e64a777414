"""The README's "Your own reward", run exactly as written: its files written into a folder outside the repo,
its unit tests run with pytest there, and its console session replayed with the `r1` console script (every
command's output must be what the README shows)."""
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SECTION = "### Your own reward"


def readme_section() -> str:
    """The section's text, from its heading to the next top-level heading."""
    text = (ROOT / "README.md").read_text()
    start = text.index(f"\n{SECTION}\n")
    end = text.find("\n## ", start)
    return text[start : end if end != -1 else len(text)]


def code_blocks(section: str) -> list[tuple[str, str]]:
    """``(language, body)`` of each fenced block, in order."""
    return [(m.group(1), m.group(2)) for m in re.finditer(r"^```(\w+)\n(.*?)^```$", section, re.M | re.S)]


def files_of(blocks: list[tuple[str, str]]) -> dict[str, str]:
    """The python / yaml blocks whose first line is ``# FILENAME``: the files the README asks you to write."""
    files = {}
    for language, body in blocks:
        first, _, rest = body.partition("\n")
        if language in ("python", "yaml") and re.fullmatch(r"# [\w.]+", first):
            files[first[2:]] = rest
    return files


def console_steps(body: str) -> list[tuple[str, str]]:
    """``(command, output)`` pairs of a console block (``$ command`` lines, each followed by its output)."""
    steps: list[tuple[str, list[str]]] = []
    for line in body.splitlines():
        if line.startswith("$ "):
            steps.append((line[2:], []))
        else:
            steps[-1][1].append(line)
    return [(command, "".join(f"{line}\n" for line in output)) for command, output in steps]


def test_the_readme_example_runs_as_written(tmp_path):
    blocks = code_blocks(readme_section())
    files = files_of(blocks)
    assert set(files) == {"my_rewards.py", "my_config.yaml", "test_my_rewards.py"}
    consoles = [body for language, body in blocks if language == "console"]
    assert len(consoles) == 1

    folder = tmp_path / "my_project"  # the user's folder, outside the repo; nothing on PYTHONPATH
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(text)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}

    # "Unit-test it with `pytest test_my_rewards.py`": the plugin's fixtures need no import.
    tests = subprocess.run([str(BIN / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_my_rewards.py"],
                           cwd=folder, env=env, capture_output=True, text=True, timeout=300)
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert "2 passed" in tests.stdout

    steps = console_steps(consoles[0])
    assert [command.split()[0] for command, _ in steps] == ["cat", "r1", "tail"]
    for command, shown in steps:
        args = shlex.split(command)
        if args[0] == "cat":  # the file the session shows: write it as shown
            (folder / args[1]).write_text(shown)
            continue
        if args[0] == "tail":
            got = "".join(f"{line}\n" for line in (folder / args[-1]).read_text().splitlines()[-int(args[1][1:]):])
        else:
            done = subprocess.run([str(BIN / args[0]), *args[1:]], cwd=folder, env=env, capture_output=True,
                                  text=True, timeout=300)
            assert done.returncode == 0, done.stderr
            got = done.stdout
        assert got == shown, f"$ {command}\n--- README shows ---\n{shown}--- it printed ---\n{got}"


def test_a_planted_hack_makes_the_readme_unit_test_fail(tmp_path):
    """The README's `assert_agrees` test is not vacuous: a reward that accepts the answer inside <think> fails it."""
    files = files_of(code_blocks(readme_section()))
    folder = tmp_path / "my_project"
    folder.mkdir()
    (folder / "test_my_rewards.py").write_text(files["test_my_rewards.py"])
    (folder / "my_rewards.py").write_text(files["my_rewards.py"].replace(
        "correctness_reward(c, {\"answer\": a}) == 1.0", "str(a) in c"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    tests = subprocess.run([str(BIN / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_my_rewards.py",
                            "-k", "agrees"], cwd=folder, env=env, capture_output=True, text=True, timeout=300)
    assert tests.returncode == 1, tests.stdout + tests.stderr
    assert "correct_and_short disagrees with r1's correctness reward" in tests.stdout
    assert "hack/answer-only-inside-think" in tests.stdout
