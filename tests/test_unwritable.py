"""Destinations that cannot be written (a read-only mount, an immutable folder): each tool says
so in one line before any work starts, and nothing is lost or half-written (issue 34, item 1).

Root ignores permission bits, so the folder is made immutable (``chattr +i``: even root cannot
create files in it) when the tests run as root, and read-only by its mode bits otherwise."""
import os
import subprocess
import tempfile
from pathlib import Path

import pytest

import copying
import report
import sweep
import transfer_copy
from running.errors import UsageError
from running.runfolder import check_writable
from test_report import make_run

TINY = ["--T", "6", "--train-size", "60", "--test-size", "40", "--batch_size", "20",
        "--lstm-size", "8", "--n-epochs", "2", "--anneal-p", "1", "--device", "cpu"]


def writable(folder):
    try:
        fd, path = tempfile.mkstemp(dir=folder)
    except OSError:
        return False
    os.close(fd)
    os.remove(path)
    return True


@pytest.fixture
def lock_folder():
    """``lock(folder)`` makes ``folder`` unwritable for the rest of the test (skipped where this
    machine offers no way to); everything locked is unlocked afterwards."""
    locked = []

    def lock(folder):
        folder = Path(folder)
        folder.chmod(0o555)
        locked.append(("chmod", folder))
        if writable(folder):  # root: the mode bits do not stop it
            done = subprocess.run(["chattr", "+i", str(folder)], capture_output=True)
            if done.returncode != 0 or writable(folder):
                pytest.skip("no way to make a folder unwritable here (root without chattr +i)")
            locked.append(("chattr", folder))
        return folder
    yield lock
    for how, folder in reversed(locked):
        if how == "chattr":
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        else:
            folder.chmod(0o755)


def one_line(capsys, call):
    with pytest.raises(SystemExit) as info:
        call()
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    return err


def test_check_writable_names_the_folder_and_creates_nothing(tmp_path, lock_folder):
    (tmp_path / "ro").mkdir()
    locked = lock_folder(tmp_path / "ro")
    with pytest.raises(UsageError, match=r"--out .*ro cannot be written"):
        check_writable(locked, "--out")
    # A folder still to be made is checked where it would be made, and not made.
    with pytest.raises(UsageError, match=r"--out .*ro/new/deeper \(in .*ro\) cannot be written"):
        check_writable(locked / "new" / "deeper", "--out")
    assert not (locked / "new").exists()
    check_writable(tmp_path / "fine" / "new", "--out")  # writable: no error, nothing made
    assert not (tmp_path / "fine").exists()


def test_transfer_into_an_unwritable_run_folder_stops_before_measuring(tmp_path, capsys,
                                                                       lock_folder, monkeypatch):
    run = tmp_path / "run"
    assert copying.main(TINY + ["--save-dir", str(run)]) == 0
    before = sorted(os.listdir(run))
    lock_folder(run)

    def measured(*args, **kwargs):
        raise AssertionError("a delay was measured before the folder was checked")
    monkeypatch.setattr(transfer_copy, "evaluate", measured)
    capsys.readouterr()
    err = one_line(capsys, lambda: transfer_copy.main(["--model-dir", str(run), "--T", "8", "10",
                                                       "--test-size", "20", "--device", "cpu"]))
    assert "for transfer.json" in err and "cannot be written" in err
    assert sorted(os.listdir(run)) == before


def test_report_into_an_unwritable_root_or_out(tmp_path, capsys, lock_folder):
    root = tmp_path / "runs"
    make_run(root / "a", "copying", ["--T", "100"], [20, 40])
    out = tmp_path / "out"
    out.mkdir()
    lock_folder(out)
    err = one_line(capsys, lambda: report.main([str(root), "--out", str(out)]))
    assert err.startswith(f"error: --out {out} cannot be written")
    lock_folder(root)
    err = one_line(capsys, lambda: report.main([str(root)]))
    assert err.startswith(f"error: ROOT {root} cannot be written") and "--out DIR" in err
    assert sorted(os.listdir(root)) == ["a"] and os.listdir(out) == []
    # A README whose folder cannot take the rewrite is refused too, before the report is made.
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "README.md").write_text("<!-- standing:begin -->\n<!-- standing:end -->\n")
    lock_folder(docs)
    fresh = tmp_path / "fresh"
    err = one_line(capsys, lambda: report.main([str(root), "--out", str(fresh), "--readme",
                                                str(docs / "README.md")]))
    assert "--readme's folder" in err and not fresh.exists()


def test_sweep_into_an_unwritable_root(tmp_path, capsys, lock_folder):
    root = tmp_path / "runs"
    root.mkdir()
    lock_folder(root)
    err = one_line(capsys, lambda: sweep.main(["run", "smoke", "--root", str(root)]))
    assert err == f"error: --root {root} cannot be written: " + err.split(": ", 2)[2]
    assert os.listdir(root) == []
