"""tests/mutation.py's own checks, none of which runs a mutant's tests (python -m tests.mutation does): every mutant
still applies to the kernels as they are, --fast covers every kernel file, and a copy runs its own mutated code."""

import re
from pathlib import Path

import mutation
import pytest
from mutation import (
    KERNELS,
    MUTANTS,
    PACKAGE_KERNELS,
    REPO,
    Mutant,
    MutantError,
    check_imports,
    check_mutants,
    main,
    mutate,
    prepare,
    snapshot,
)


def test_every_mutant_applies_to_the_kernels_as_they_are():
    # A kernel edit that moves a mutant's snippet fails here, in the ordinary suite, instead of leaving a mutant that
    # silently tests nothing.
    check_mutants(MUTANTS)
    assert len(MUTANTS) >= 12


def test_the_fast_subset_has_a_mutant_in_every_kernel_file():
    kernel_files = {
        f"{KERNELS}/{path.name}"
        for path in (REPO / KERNELS).glob("*.py")
        if re.search(r"^@triton\.jit\b", path.read_text(), re.MULTILINE)
    }
    fast = [m.file for m in MUTANTS if m.fast]
    assert sorted(fast) == sorted(kernel_files), "one --fast mutant per kernel file"
    assert all(m.file in kernel_files for m in MUTANTS)


def test_a_snippet_found_other_than_once_is_an_error():
    mutant = Mutant("m", "f.py", "a < b", "a <= b", ("tests/x.py",), "why")
    assert mutate("x = a < b\n", mutant) == "x = a <= b\n"
    for text, count in [("x = a <= b\n", 0), ("a < b; a < b\n", 2)]:
        with pytest.raises(MutantError, match=f"occurs {count} times"):
            mutate(text, mutant)
    with pytest.raises(MutantError, match="is the original"):
        mutate("a < b", Mutant("m", "f.py", "a < b", "a < b", (), "why"))


def test_a_copy_runs_its_own_mutated_kernels(tmp_path):
    mutant = next(m for m in MUTANTS if m.file == f"{KERNELS}/dropout.py")
    base = snapshot(tmp_path / "base")
    copy = prepare(base, tmp_path / "copy", mutant)
    package_kernels = copy / PACKAGE_KERNELS
    assert package_kernels.is_dir() and not package_kernels.is_symlink()
    for path in (copy / mutant.file, package_kernels / Path(mutant.file).name):
        text = path.read_text()
        assert mutant.replacement in text and mutant.original not in text
    assert mutant.original in (base / mutant.file).read_text(), "the snapshot stays unmutated"
    package, kernel = check_imports(copy).splitlines()
    assert package == str(copy / "alexnet_triton/__init__.py")
    assert kernel == str(package_kernels / "conv.py")


def test_a_tree_without_git_is_copied_alike(monkeypatch):
    # The GPU machine's copy of the tree may come without .git: the walk takes the files git would list.
    listed = set(mutation.repository_files())
    run = mutation.subprocess.run

    def no_git(command, **kwargs):
        if command[0] == "git":
            raise mutation.subprocess.CalledProcessError(128, command)
        return run(command, **kwargs)

    monkeypatch.setattr(mutation.subprocess, "run", no_git)
    walked = set(mutation.repository_files())
    assert walked >= listed, sorted(listed - walked)
    assert not [name for name in walked if name.startswith((".git/", ".venv")) or "__pycache__" in name]


def test_list_names_every_mutant(capsys):
    assert main(["--list"]) == 0
    listed = re.findall(r"^(\S+)", capsys.readouterr().out, re.MULTILINE)
    assert listed[: len(MUTANTS)] == [m.name for m in MUTANTS]


def test_a_kill_counts_only_if_the_killing_test_passes_without_the_mutant(monkeypatch, tmp_path):
    # The baseline is each killing test run once on the unmutated copy: a test that fails there too proves nothing.
    mutants = [
        Mutant("real", "kernels/a.py", "x", "y", ("tests/t.py",), "why"),
        Mutant("also-real", "kernels/a.py", "x", "z", ("tests/t.py",), "why"),
        Mutant("broken-test", "kernels/b.py", "x", "y", ("tests/u.py",), "why"),
        Mutant("crash", "kernels/c.py", "x", "y", ("tests/v.py", "-k", "c"), "why"),
    ]
    killers = {"real": "tests/t.py::test_a[as stored]", "also-real": "tests/t.py::test_a[as stored]",
               "broken-test": "tests/u.py::test_b", "crash": "crashed (signal 11)"}  # fmt: skip
    unmutated = []

    def run_tests(copy, tests, timeout, *, stop_at_first=True):
        if copy.name == "clean":
            unmutated.append(tests)
            return mutation.Outcome("failed" if tests == ("tests/u.py::test_b",) else "passed", 1.0, "tests/u.py::x")
        return mutation.Outcome("failed", 1.0, killers[copy.name])

    monkeypatch.setattr(mutation, "check_mutants", lambda mutants: None)
    monkeypatch.setattr(mutation, "snapshot", lambda destination: destination)
    monkeypatch.setattr(mutation, "prepare", lambda base, destination, mutant: destination)
    monkeypatch.setattr(mutation, "check_imports", lambda copy: "")
    monkeypatch.setattr(mutation, "run_tests", run_tests)
    out = tmp_path / "out.txt"
    with out.open("w") as file:
        assert mutation.run(mutants, baseline=True, keep=False, timeout=1, out=file) == 1
    printed = out.read_text()
    assert re.search(r"^real +killed", printed, re.MULTILINE) and re.search(r"^also-real +killed", printed, re.M)
    assert re.search(r"^broken-test +error +1.0 s +fails without the mutant too", printed, re.MULTILINE)
    assert re.search(r"^crash +killed", printed, re.MULTILINE)
    # Each killing test once; a crash names none, so its mutant's whole selection is run.
    assert unmutated == [("tests/t.py::test_a[as stored]",), ("tests/u.py::test_b",), ("tests/v.py", "-k", "c")]


def test_the_failing_test_is_read_whole_from_pytests_summary():
    summary = "FAILED tests/t.py::test_a[as stored] - AssertionError: x - y\nERROR tests/u.py::test_b\n"
    assert [match.group(2) for match in mutation.FAILED.finditer(summary)] == [
        "tests/t.py::test_a[as stored]", "tests/u.py::test_b"
    ]  # fmt: skip
