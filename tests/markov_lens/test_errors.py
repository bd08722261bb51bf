"""Bad input is one clear error line naming the bad value, exit code 2 (cases a hostile-input
review found misleading or several lines long in v1)."""

from __future__ import annotations

import pytest

from markov_lens.cli import main


@pytest.fixture
def files(tmp_path):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.json").write_bytes(b"\xff\xfe")
    (tmp_path / "bad.yaml").write_text("chain: {p: [0.2\nseeds: : :\n")
    (tmp_path / "ok.yaml").write_text("chain: {p: 0.5, q: 0.8}\nseeds: [0]\n")
    return tmp_path


CASES = [
    (["report", "{d}/afile"], "afile is a file, not a run directory"),
    (["train", "--resume", "--out", "{d}/nothere"], "nothere does not exist, so there is no run"),
    (["train", "--resume", "--out", "{d}/empty"], "empty holds no run (config.json is missing)"),
    (["train", "--resume", "--out", "{d}/afile"], "afile is a file, not a run directory"),
    (["sweep", "{d}/ok.yaml", "--out", "{d}/afile"], "afile is a file; a sweep's output"),
    (["reproduce", "tying", "--size", "test", "--out", "{d}/afile"], "afile is a file"),
    (["chain", "--kernel", "{d}/bad.json"], "bad.json: not a text file"),
    (["sweep", "{d}/bad.yaml", "--out", "{d}/s"], "bad.yaml is not valid YAML"),
    (["train", "--p", "abc", "--q", "0.3", "--out", "{d}/r"], "argument --p: invalid float value"),
    (["train", "--p", "0.5"], "the following arguments are required: --out"),
    (["nosuch"], "invalid choice: 'nosuch'"),
]


@pytest.mark.parametrize("argv, expected", CASES, ids=[" ".join(c[0][:2]) for c in CASES])
def test_one_line_errors(files, capsys, argv, expected):
    try:
        code = main([a.format(d=files) for a in argv])
    except SystemExit as exit_:  # argparse's errors leave through sys.exit, as on the console
        code = exit_.code
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("markov-lens") and "error:" in err[0] and expected in err[0]
