"""report.py's copying runs in sentences (reporting/standing.py): the top of report.md and the
README's generated paragraph on "does h-detach converge faster", from hand-made run folders.
Every count names the seeds it is over and those not there yet; the README's other text is
kept as it is."""
import pytest

from test_report import make_run, one_line_error, run_report
from test_report_convergence import rising, section

KIT = ["--T", "100", "--rng", "kit"]
HEADING = "Copying so far, in words"


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """T = 100, kit streams. Seed 1: vanilla flat at 40 % for 60 epochs; h-detach p = 0.25 at
    50 %, 99 % from epoch 55 (60 done). Seed 2: vanilla 99 % from epoch 30 (120 done);
    h-detach 20 epochs at 45 %. c-detach p = 0.25 seed 1: 30 epochs at 15 %. And a c-detach
    run at T = 300, where there is no other run."""
    root = tmp_path_factory.mktemp("runs")
    make_run(root / "v1", "copying", KIT + ["--seed", "1"], rising(None, 60, 40.0),
             finished=False)
    make_run(root / "h1", "copying", KIT + ["--p-detach", "0.25", "--seed", "1"],
             rising(55, 60, 50.0), finished=False)
    make_run(root / "v2", "copying", KIT + ["--seed", "2"], rising(30, 120), finished=False)
    make_run(root / "h2", "copying", KIT + ["--p-detach", "0.25", "--seed", "2"],
             rising(None, 20, 45.0), finished=False)
    make_run(root / "c1", "copying", KIT + ["--p-detach", "0.25", "--detach", "c",
                                            "--seed", "1"], rising(None, 30, 15.0),
             finished=False)
    make_run(root / "c300", "copying", ["--T", "300", "--rng", "kit", "--p-detach", "0.25",
                                        "--detach", "c", "--seed", "3"], [12.0, 13.0],
             finished=False)
    return root


def paragraphs(text):
    """Per delay: its bold lead and its list, as one string of lines."""
    return ["**" + part.strip() for part in section(text, HEADING).split("\n**")[1:]]


def test_report_opens_with_the_runs_in_sentences(root, tmp_path):
    _, text = run_report(root, tmp_path / "out")
    assert text.index(f"## {HEADING}") < text.index("## Pixel MNIST")
    t100, t300 = paragraphs(text)
    # The sample, with how far each seed's run has got.
    assert t100.startswith(
        "**copying T=100, 4 runs (none finished):**\n\n- The sample: vanilla, 2 seeds (seed 1 "
        "at epoch 60, seed 2 at epoch 120, of 600 planned); h-detach p=0.25, 2 seeds (seed 2 "
        "at epoch 20, seed 1 at epoch 60, of 600 planned).")
    # Counts as in the convergence table: a seed not there yet is named, never a failure;
    # a seed that converged early counts at later milestones though its run is short of them.
    assert ("by epoch 50: vanilla 1 of 2, h-detach p=0.25 0 of 1 (seed 2 not there yet); "
            "by epoch 100: vanilla 1 of 1 (seed 1 not there yet), h-detach p=0.25 1 of 1 "
            "(seed 2 not there yet); by epoch 200:") in t100
    # Vanilla: 30 is the lower middle, but the upper one is unknown (seed 1 is at 60).
    assert ("Median first epoch at 99 %, over all seeds and only where they determine it: "
            "vanilla not defined yet (1 of 2 reached 99 %), h-detach p=0.25 not defined yet "
            "(1 of 2 reached 99 %).") in t100
    # Paired: only epoch 50 has a pair with both runs there (h-detach seed 1 is at 60).
    assert ("h-detach was ahead of vanilla at epoch 50 in 1 of 1 seed (seed 2 not there yet) "
            "for h-detach p=0.25.") in t100
    assert "at epoch 100 in" not in t100
    # c-detach beside h-detach of its seed, at the epoch both have done.
    assert "c-detach 15.00 % against h-detach 50.00 % (same seed)" in t100
    assert "too early to confirm or refute" in t100
    # A delay with only a c-detach run still gets its sentence.
    assert t300.startswith("**copying T=300: c-detach only.**\n\n- c-detach: c-detach p=0.25, "
                           "seed 3 (paused, 2/600)")
    assert "no h-detach run of the same seed and p" in t300


def test_no_copying_run_no_section(tmp_path):
    make_run(tmp_path / "runs" / "m", "pixelmnist", ["--seed", "1"], [50.0], [49.0],
             finished=False)
    _, text = run_report(tmp_path / "runs", tmp_path / "out")
    assert HEADING not in text


README = ("# Title\n\nHand-written judgment, kept.\n\n<!-- standing:begin -->\nold sentences\n"
          "<!-- standing:end -->\n\nMiddle prose.\n\n<!-- report:begin -->\nold tables\n"
          "<!-- report:end -->\n\nTail prose.\n")


def test_readme_gets_the_sentences_in_their_block_and_the_tables_in_theirs(root, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(README)
    run_report(root, tmp_path / "results", "--readme", readme)
    text = readme.read_text()
    head, rest = text.split("<!-- standing:begin -->\n")
    standing, rest = rest.split("<!-- standing:end -->\n")
    middle, rest = rest.split("<!-- report:begin -->\n")
    tables, tail = rest.split("<!-- report:end -->\n")
    assert head == "# Title\n\nHand-written judgment, kept.\n\n"
    assert middle == "\nMiddle prose.\n\n" and tail == "\nTail prose.\n"
    assert "old sentences" not in standing and "old tables" not in tables
    assert standing.startswith("Generated by `python report.py ")
    assert "**copying T=100, 4 runs (none finished):**" in standing
    # The README's tables do not repeat the sentences; report.md opens with them.
    assert HEADING not in tables and "### Copying: convergence across seeds" in tables
    # Regenerating from the same runs gives the same file.
    run_report(root, tmp_path / "results", "--readme", readme)
    assert readme.read_text() == text



def test_a_readme_with_the_sentences_only_gets_them_and_nothing_else(root, tmp_path, capsys):
    """This kit's own README keeps the sentences and links report.md for the tables."""
    readme = tmp_path / "README.md"
    content = ("# Title\n\n<!-- standing:begin -->\nold sentences\n<!-- standing:end -->\n\n"
               "See results/report.md.\n")
    readme.write_text(content)
    run_report(root, tmp_path / "results", "--readme", readme)
    assert f"{readme} (its marked blocks: sentences)" in capsys.readouterr().out
    text = readme.read_text()
    head, rest = text.split("<!-- standing:begin -->\n")
    standing, tail = rest.split("<!-- standing:end -->\n")
    assert head == "# Title\n\n" and tail == "\nSee results/report.md.\n"
    assert "old sentences" not in standing
    assert "**copying T=100, 4 runs (none finished):**" in standing
    assert "| " not in text  # no table came in


@pytest.mark.parametrize("content", [
    # A begin marker without its end.
    "<!-- standing:begin -->\n<!-- report:begin -->\n<!-- report:end -->\n",
    # Twice.
    "<!-- standing:begin -->\n<!-- standing:begin -->\n<!-- standing:end -->\n"
    "<!-- report:begin -->\n<!-- report:end -->\n",
    # Inside the report's block, which would be written over.
    "<!-- report:begin -->\n<!-- standing:begin -->\n<!-- standing:end -->\n"
    "<!-- report:end -->\n"])
def test_bad_standing_markers_are_one_line_and_nothing_is_written(root, tmp_path, capsys,
                                                                  content):
    readme = tmp_path / "README.md"
    readme.write_text(content)
    err = one_line_error(capsys, [root, "--out", tmp_path / "out", "--readme", readme])
    assert "standing" in err or "overlap" in err
    assert readme.read_text() == content and not (tmp_path / "out").exists()
