"""report.py's image captioning section (reporting/captioning.py), from hand-made run folders:
config.json from caption_train.py's own parser, metrics.csv with evaluation rows, results.json,
state.json, a stand-in best_model.pt and caption_eval.py's eval_test.json. COCO-like and
synthetic labels JSONs are written by hand too, as small as the checks allow; the coco-caption
scorer is replaced by a stand-in except in one test."""
import json
import shutil
import statistics
from pathlib import Path

import pytest

import caption_train
import report
from captioning import metrics as caption_metrics
from running import runfolder
from running.errors import UsageError
from test_report import make_run, run_report

METRICS = runfolder.CAPTION_METRICS
HEADING = "## Image captioning"
PAPER_ROW = "paper (its captioning table)"
NOT_AVAILABLE = "not available (its numbers are not in our sources)"


# ----------------------------------------------------------------------------- hand-made data

def coco_labels(path, test_images=5000):
    """A labels JSON as prepro_captions.py writes it for Karpathy's COCO file: image paths
    under val2014/ and train2014/, ``test_images`` test images (Karpathy's split has 5,000)."""
    images = [{"id": i, "split": "test", "karpathy_split": "test",
               "file_path": f"val2014/COCO_val2014_{i:012d}.jpg", "references": ["a cat"]}
              for i in range(test_images)]
    images += [{"id": test_images + i, "split": "train", "karpathy_split": "train",
                "file_path": f"train2014/COCO_train2014_{i:012d}.jpg",
                "references": ["a dog"]} for i in range(3)]
    write_labels(path, images, "/data/coco/dataset_coco.json")
    return path


def shapes_labels(path):
    """A synthetic shapes labels JSON (make_shapes.py's dataset_shapes.json, prepared): the
    most frequent training caption is "a red circle" (3 times, in two spellings)."""
    train = [["A red circle.", "a blue square"], ["a red circle", "A green triangle."],
             ["A red circle!", "a blue square"]]
    test = [["a red circle on the left", "one red circle"], ["two blue squares"]]
    images = [{"id": i, "split": "train", "karpathy_split": "train",
               "file_path": f"images/shape_{i:06d}.png", "references": refs}
              for i, refs in enumerate(train)]
    images += [{"id": 10 + i, "split": "test", "karpathy_split": "test",
                "file_path": f"images/shape_{10 + i:06d}.png", "references": refs}
               for i, refs in enumerate(test)]
    write_labels(path, images, "/data/shapes/dataset_shapes.json")
    return path


def write_labels(path, images, source):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    runfolder.write_json(path, {
        "format": "h-detach-captions/1", "ix_to_word": {"1": "a", "2": "UNK"}, "images": images,
        "prepro": {"input_json": source, "input_sha256": "0" * 64, "word_count_threshold": 5,
                   "max_length": 16, "restval_as": "train"},
        "labels_sha256": f"sha-of-{path.name}"})


def scores(cider, step=0.01):
    """coco-caption metrics (0-1 scale) around a CIDEr value."""
    return {name: (cider if name == "CIDEr" else 0.1 + step * i)
            for i, name in enumerate(METRICS)}


def make_caption_run(folder, labels, argv=(), cider=(0.5, 0.7), finished=True, test=None,
                     stale=False, images=5000, beam=None, predictions=()):
    """A hand-made captioning run folder: one evaluation row per CIDEr value in ``cider``
    (iterations 100, 200, ...), results.json by the script's rule (the first best CIDEr) when
    ``finished``, else a paused run with last.pt; best_model.pt; and with ``test`` (a test
    CIDEr) an eval_test.json of ``images`` images, of this best_model.pt unless ``stale``;
    with ``beam`` (N, test CIDEr) an eval_test_beamN.json too; ``predictions``: its
    captions."""
    folder = Path(folder)
    folder.mkdir(parents=True)
    args = vars(caption_train.build_parser().parse_args(
        ["--input-json", str(labels), "--input-fc-dir", str(Path(labels).parent / "fc"),
         "--save-dir", str(folder), *argv]))
    runfolder.write_json(folder / "config.json", {"task": "captioning", "args": args,
                                                  "device": "cpu"})
    history = []
    for i, value in enumerate(cider):
        record = {"epoch": i + 1, "iteration": 100 * (i + 1), "p_detach": args["p_detach"],
                  "train/mean_loss": 2.0, "val/loss": 1.5, "elapsed_s": 10.0 * (i + 1)}
        record.update({f"val/{name}": v for name, v in scores(value).items()})
        history.append(record)
    runfolder.write_metrics(folder, history, runfolder.CAPTION_COLUMNS)
    best = max(range(len(cider)), key=lambda i: (cider[i], -i))
    (folder / "best_model.pt").write_bytes(f"best of {folder.name}".encode())
    if finished:
        runfolder.write_json(folder / "results.json", {
            "best_by": "CIDEr", "best_score": cider[best], "best_iteration": 100 * (best + 1),
            "best_epoch": best + 1, "best_val": dict(scores(cider[best]), loss=1.5),
            "final_val": dict(scores(cider[-1]), loss=1.5), "caption_model":
            args["caption_model"], "seed": args["seed"], "vocab_size": 2})
        runfolder.write_state(str(folder), "done", epoch=args["n_epochs"],
                              n_epochs=args["n_epochs"])
    else:
        (folder / "last.pt").write_bytes(b"")
        runfolder.write_state(str(folder), "paused", epoch=len(cider),
                              n_epochs=args["n_epochs"])
    evals = ([("eval_test.json", test)] if test is not None else []) + \
        ([(f"eval_test_beam{beam[0]}.json", beam[1])] if beam else [])
    for name, value in evals:
        digest = "0" * 64 if stale else runfolder.file_sha256(folder / "best_model.pt")
        runfolder.write_json(folder / name, {
            "format": "h-detach-caption-eval/1", "split": "test", "images": images,
            "metrics": dict(scores(value, 0.02), loss=1.6), "spice": "not computed",
            "checkpoint": {"path": str(folder / "best_model.pt"), "sha256": digest,
                           "kind": "best", "iteration": 100 * (best + 1)},
            "written": "2026-01-01T00:00:00+00:00",
            "predictions": [{"image_id": i, "caption": c} for i, c in enumerate(predictions)]})
    return folder


def section(text):
    """report.md's captioning section, split into its experiments: {experiment: its lines}."""
    assert text.count(HEADING) == 1
    body = text.split(HEADING)[1].split("\n## ")[0]
    parts, name = {}, None
    for line in body.splitlines():
        if line.startswith("captioning ") and line.endswith(":"):
            name = line[:-1]
            parts[name] = []
        elif name is not None:
            parts[name].append(line)
    return parts


def row(lines, *cells):
    """The one table line holding every one of ``cells``."""
    found = [line for line in lines if all(cell in line for cell in cells)]
    assert len(found) == 1, (cells, found)
    return [cell.strip() for cell in found[0].strip("|").split(" | ")]


ST_COCO = "captioning show_tell (MS COCO)"
SAT_COCO = "captioning show_attend_tell (MS COCO)"
ST_SHAPES = "captioning show_tell [synthetic shapes (not MS COCO)]"
SAT_SHAPES = "captioning show_attend_tell [synthetic shapes (not MS COCO)]"


def fake_score(calls):
    def score(references, candidates, per_image=False):
        calls.append((references, candidates))
        return scores(0.25, 0.03)
    return score


# ----------------------------------------------------------------------------- one report

@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    """show_tell on a COCO-like labels JSON: p = 0.25 (the authors' command) seeds 1-3, seed 2
    with the best validation CIDEr but not the best test CIDEr, seed 3's eval out of date;
    vanilla seeds 1 (with a beam-3 evaluation too) and 2 (still training, evaluated so far);
    show_tell p = 0.25 on a synthetic shapes set, on COCO-like data whose test split is not
    Karpathy's (evaluated on half of it), and on a labels JSON that is not there."""
    base = tmp_path_factory.mktemp("coco")
    labels = coco_labels(base / "data" / "coco.json")
    root = base / "runs"
    p25 = ["--p-detach", "0.25"]
    make_caption_run(root / "st_p25_s1", labels, p25 + ["--seed", "1"], (0.6, 0.8), test=0.90)
    make_caption_run(root / "st_p25_s2", labels, p25 + ["--seed", "2"], (0.85, 0.7), test=0.86)
    make_caption_run(root / "st_p25_s3", labels, p25 + ["--seed", "3"], (0.5, 0.6), test=0.99,
                     stale=True)
    make_caption_run(root / "st_van_s1", labels, ["--seed", "1"], (0.4, 0.5), test=0.55,
                     beam=(3, 0.58))
    make_caption_run(root / "st_van_s2", labels, ["--seed", "2"], (0.3, 0.45), test=0.47,
                     finished=False)
    shapes = shapes_labels(base / "data" / "shapes.json")
    make_caption_run(root / "shapes_s1", shapes, p25 + ["--seed", "1"], (0.9, 1.2), test=1.1,
                     images=2, predictions=["a red circle"] * 2)
    make_caption_run(root / "shapes_std_s1", shapes, ["--standardize-fc", "--seed", "1"],
                     (0.9, 1.3), test=1.2, images=2)
    small = coco_labels(base / "data" / "coco_small.json", test_images=20)
    make_caption_run(root / "small_s1", small, p25 + ["--seed", "1"], test=0.95, images=10)
    make_caption_run(root / "gone_s1", base / "data" / "elsewhere.json", p25 + ["--seed", "1"],
                     test=0.97)
    out = base / "out"
    calls = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(caption_metrics, "score", fake_score(calls))
        data, text = run_report(root, out)
    return {"root": root, "data": data, "text": text, "parts": section(text), "calls": calls}


def setting(data, experiment, label_start):
    found = [s for s in data["settings"] if s["experiment"] == experiment
             and s["label"].startswith(label_start)]
    assert len(found) == 1, [s["label"] for s in data["settings"]]
    return found[0]


def test_seeds_of_one_setting_are_grouped_and_averaged(coco):
    data = coco["data"]
    p25 = setting(data, ST_COCO, "h-detach p=0.25")
    assert p25["label"] == "h-detach p=0.25" and p25["protocol"]
    assert p25["runs"] == ["st_p25_s1", "st_p25_s2", "st_p25_s3"]
    vanilla = setting(data, ST_COCO, "vanilla")
    assert vanilla["runs"] == ["st_van_s1", "st_van_s2"]
    summary = p25["summary"]
    # seed 3's evaluation is out of date: the mean is over seeds 1 and 2 only
    ciders = [0.90, 0.86]
    assert summary["test"]["CIDEr"]["n"] == 2
    assert summary["test"]["CIDEr"]["mean"] == pytest.approx(statistics.fmean(ciders))
    assert summary["test"]["CIDEr"]["sd"] == pytest.approx(statistics.stdev(ciders))
    assert summary["test_counted"] == [1, 2]
    assert [item["seed"] for item in summary["test_not_counted"]] == [3]
    lines = coco["parts"][ST_COCO]
    cells = row(lines, "| h-detach p=0.25 |", "mean ± sd over seeds")
    sd = 100 * statistics.stdev(ciders)
    assert cells[10] == f"{100 * statistics.fmean(ciders):.2f} ± {sd:.2f}"
    assert "over seeds 1, 2" in cells[11] and "seed 3: its eval_test.json is out of date" \
        in cells[11]


def test_the_best_validation_seed_gives_the_test_numbers(coco):
    """Seed 2 has the best validation CIDEr (0.85) but not the best test CIDEr (seed 1's
    0.90): its test numbers are the setting's, as the paper's rule says."""
    summary = setting(coco["data"], ST_COCO, "h-detach p=0.25")["summary"]
    assert summary["best_valid_run"] == "st_p25_s2" and summary["best_valid_seed"] == 2
    assert summary["test_of_best_valid_run"]["CIDEr"] == pytest.approx(0.86)
    cells = row(coco["parts"][ST_COCO], "| h-detach p=0.25 |", "best-validation seed: 2")
    assert cells[2] == "done, 30/30" and cells[3] == "85.00 (iteration 100)"
    assert cells[10] == "86.00"
    # x 100, as the papers print them, and said so
    assert "x 100" in coco["text"].split(HEADING)[1].split("\n\n")[1]


def test_an_eval_of_an_older_best_model_is_out_of_date(coco):
    runs = {run["path"]: run for run in coco["data"]["runs"]}
    assert runs["st_p25_s3"]["evaluations"][0]["current"] is False
    assert runs["st_p25_s1"]["evaluations"][0]["current"] is True
    cells = row(coco["parts"][ST_COCO], "| h-detach p=0.25 |", "| seed 3 |")
    assert "out of date" in cells[11] and cells[10] == "99.00"


def test_a_run_still_training_gives_numbers_so_far(coco):
    lines = coco["parts"][ST_COCO]
    cells = row(lines, "| vanilla |", "| seed 2 |")
    assert cells[2] == "paused, 2/30" and cells[3] == "45.00 (iteration 200) (so far)"
    assert "the best so far: run not finished" in cells[11]
    mean = row(lines, "| vanilla |", "mean ± sd over seeds")
    assert "(so far" in mean[11]
    # a beam-search evaluation is its own row, not in the mean
    beam = row(lines, "| vanilla |", "seed 1, beam 3")
    assert beam[10] == "58.00" and "not in the mean" in beam[11]
    assert setting(coco["data"], ST_COCO, "vanilla")["summary"]["test"]["CIDEr"]["n"] == 2


def test_the_references_stand_beside_coco_only_and_the_paper_is_not_guessed(coco):
    parts = coco["parts"]
    assert list(parts)[:2] == [ST_COCO, SAT_COCO]
    cells = row(parts[ST_COCO], "| h-detach p=0.25 |", "| authors' README |")
    assert cells[10] == "98.0" and "--p-detach 0.25" in cells[11]
    # show_attend_tell has no run: the README number keeps its row, not measured
    cells = row(parts[SAT_COCO], "| h-detach p=0.4 |", "| authors' README |")
    assert cells[2] == "not measured" and cells[10] == "103.3"
    for name in (ST_COCO, SAT_COCO):
        cells = row(parts[name], PAPER_ROW)
        assert NOT_AVAILABLE in cells
        assert not any(ch.isdigit() for cell in cells for ch in cell)
    # the other data sets: experiments of their own, never beside the COCO numbers
    others = [name for name in parts if name not in (ST_COCO, SAT_COCO)]
    assert set(others) == {
        ST_SHAPES,
        "captioning show_tell [MS COCO but not the Karpathy 5000-image test split]",
        "captioning show_tell [data not verified as MS COCO (labels JSON not found)]"}
    for name in others:
        block = "\n".join(parts[name])
        assert "authors' README" not in block and PAPER_ROW not in block
        assert "98.0" not in block and "the COCO reference numbers are not set beside" in block
        assert setting(coco["data"], name, "h-detach p=0.25")["protocol"] is False
    small = parts["captioning show_tell [MS COCO but not the Karpathy 5000-image test split]"]
    assert "on 10 of the 20 test images" in row(small, "| seed 1 |")[11]
    assert "not counted: seed 1: evaluated on 10 of the 20 test images" in \
        row(small, "mean ± sd over seeds")[11]
    unknown = "captioning show_tell [data not verified as MS COCO (labels JSON not found)]"
    assert "baseline" not in "\n".join(parts[unknown])  # not known to be the shapes set
    data = coco["data"]["captioning"]
    assert [ref["value"] for ref in data["references"] if ref["value"]] == [98.0, 103.3]


def test_standardized_fc_is_a_setting_of_its_own_and_says_so(coco):
    standardized = setting(coco["data"], ST_SHAPES, "vanilla")
    assert "fc standardized" in standardized["label"]
    assert "fc standardized" not in setting(coco["data"], ST_SHAPES, "h-detach p=0.25")["label"]
    assert any("fc standardized" in line for line in coco["parts"][ST_SHAPES])


def test_the_synthetic_set_gets_its_caption_blind_baseline(coco):
    """Scored once, with the most frequent training caption for every test image against the
    test references."""
    assert len(coco["calls"]) == 1
    references, candidates = coco["calls"][0]
    assert references == {10: ["a red circle on the left", "one red circle"],
                          11: ["two blue squares"]}
    assert candidates == {10: "a red circle", 11: "a red circle"}
    cells = row(coco["parts"][ST_SHAPES], "caption-blind baseline")
    assert '"a red circle", 3 of 6' in cells[1]
    assert cells[4:11] == [f"{100 * v:.2f}" for v in scores(0.25, 0.03).values()]
    assert "2 test images of" in cells[11]
    run = row(coco["parts"][ST_SHAPES], "| h-detach p=0.25 |", "| seed 1 |")
    assert run[10] == "110.00" and "the same caption for all 2 images" in run[11]


# ----------------------------------------------------------------------------- the baseline

def test_the_baseline_is_one_score_per_data_set_and_says_why_not(tmp_path, monkeypatch,
                                                                 capsys):
    shapes = shapes_labels(tmp_path / "data" / "shapes.json")
    root = tmp_path / "runs"
    make_caption_run(root / "st", shapes, ["--seed", "1"])
    make_caption_run(root / "sat", shapes, ["--caption-model", "show_attend_tell", "--seed", "1"])
    make_caption_run(root / "moved", tmp_path / "data" / "shapes_gone.json", ["--seed", "4"])
    calls = []
    monkeypatch.setattr(caption_metrics, "score", fake_score(calls))
    _, text = run_report(root, tmp_path / "out")
    parts = section(text)
    assert len(calls) == 1  # two experiments on one data set
    assert "caption-blind baseline" in "\n".join(parts[SAT_SHAPES])
    # the run whose labels JSON is not there: its name says shapes, the baseline cannot be had
    moved = "\n".join(line for name in parts for line in parts[name] if "seed 4" in line or
                      "baseline:" in line)
    assert "- baseline: labels JSON not found" in moved and "shapes_gone.json" in moved

    def no_java(references, candidates, per_image=False):
        raise UsageError("the caption metrics need Java for the PTB tokenizer and METEOR")
    monkeypatch.setattr(caption_metrics, "score", no_java)
    data, text = run_report(root, tmp_path / "out2")
    lines = [line for line in text.splitlines() if "could not be computed" in line]
    assert len(lines) == 2 and all("need Java" in line for line in lines)  # one per experiment
    assert "caption-blind baseline |" not in text
    errors = [item["error"] for item in data["captioning"]["experiments"][2]["baselines"]]
    assert sorted(error.split(":")[0] for error in errors) == ["could not be computed",
                                                               "labels JSON not found"]


def test_the_baseline_with_the_real_scorer(tmp_path, capsys):
    """One real coco-caption call (Java: the PTB tokenizer and METEOR), about 15 s."""
    shapes = shapes_labels(tmp_path / "data" / "shapes.json")
    make_caption_run(tmp_path / "runs" / "st", shapes, ["--seed", "1"])
    data, _ = run_report(tmp_path / "runs", tmp_path / "out")
    baseline = data["captioning"]["experiments"][2]["baselines"][0]
    assert baseline["caption"] == "a red circle" and baseline["test_images"] == 2
    assert set(baseline["metrics"]) == set(METRICS)
    # image 10's references hold "a red circle" whole: BLEU-1 above 0, at most 1
    assert 0 < baseline["metrics"]["Bleu_1"] <= 1 and baseline["metrics"]["CIDEr"] > 0


# ----------------------------------------------------------------------------- the rest

def copying_root(root):
    kit = ["--T", "100", "--rng", "kit", "--n_epochs", "5"]
    make_run(root / "copying" / "v1", "copying", kit + ["--seed", "1"], [20.0, 40.0, 99.5])
    make_run(root / "copying" / "h1", "copying", kit + ["--p-detach", "0.25", "--seed", "1"],
             [30.0, 99.0, 100.0])


def chapters(text):
    """report.md by its sections: {heading: text}."""
    parts = text.split("\n## ")
    return {part.split("\n")[0]: part for part in parts[1:]}


def test_captioning_runs_leave_the_rest_of_the_report_as_it_was(tmp_path, monkeypatch):
    """A root of copying runs gives the report it gave before captioning was in it: adding
    captioning runs adds their section, their rows in the run table and their count, and
    changes nothing else; without them there is no trace of captioning."""
    monkeypatch.setattr(caption_metrics, "score", fake_score([]))
    both = tmp_path / "both"
    copying_root(both)
    shapes = shapes_labels(tmp_path / "data" / "shapes.json")
    make_caption_run(both / "captioning" / "st", shapes, ["--seed", "1"], test=0.5)
    only = tmp_path / "only"
    shutil.copytree(both, only)
    shutil.rmtree(only / "captioning")
    data_both, text_both = run_report(both, tmp_path / "out_both")
    data_only, text_only = run_report(only, tmp_path / "out_only")
    # (the folder names of this test say "captioning": left out)
    assert "captioning" not in text_only.replace(str(tmp_path), "TMP").lower()
    assert "captioning" not in json.dumps(data_only).replace(str(tmp_path), "TMP").lower()
    a, b = chapters(text_both), chapters(text_only)
    assert set(a) - set(b) == {"Image captioning"} and set(b) <= set(a)
    for heading in b:
        if heading not in ("Runs", "Figures"):
            assert a[heading] == b[heading], heading
    for heading in ("Runs", "Figures"):  # + the captioning rows, + captioning.png
        assert [line for line in a[heading].splitlines() if line and "captioning" not in line] \
            == [line for line in b[heading].splitlines() if line]
    assert data_both["figures"] == data_only["figures"] + ["captioning.png"]
    for key in ("paired", "references", "skipped", "solved_threshold"):
        assert data_both[key] == data_only[key]
    assert [s for s in data_both["settings"] if s["task"] != "captioning"] == \
        data_only["settings"]
    for name in data_only["figures"]:
        assert (tmp_path / "out_both" / name).read_bytes() == \
            (tmp_path / "out_only" / name).read_bytes()


def test_a_root_of_captioning_runs_only_is_reported(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(caption_metrics, "score", fake_score([]))
    labels = coco_labels(tmp_path / "data" / "coco.json", test_images=5000)
    make_caption_run(tmp_path / "runs" / "sat", labels,
                     ["--caption-model", "show_attend_tell", "--p-detach", "0.4", "--rnn-size",
                      "256"], test=1.0)
    broken = make_caption_run(tmp_path / "runs" / "st", labels, ["--seed", "5"])
    (broken / "eval_test.json").write_text("{not json")
    assert report.main([str(tmp_path / "runs"), "--out", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert "captioning runs are not in the report yet" not in err
    assert err.count("eval_test.json: not readable JSON") == 1
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    text = (tmp_path / "out" / "report.md").read_text()
    assert data["figures"] == ["captioning.png"] and data["skipped"] == []
    # not the authors' command (hidden 256): the README number keeps a row of its own
    parts = section(text)
    cells = row(parts[SAT_COCO], "| h-detach p=0.4 (hidden 256) |", "| seed 0 |")
    assert cells[10] == "100.00"
    cells = row(parts[SAT_COCO], "| h-detach p=0.4 |", "| authors' README |")
    assert cells[2] == "not measured"
    assert "not evaluated on the test split yet" in row(section(text)[ST_COCO], "| seed 5 |")[11]


def test_the_labels_json_is_found_where_the_runs_moved_with_it(tmp_path, monkeypatch):
    """A root moved with its data (another clone): the labels JSON the configs name by their
    old absolute path is found where it now is, relative to the run folder; a relative path
    is taken from the folder the run was started in, as its relative --save-dir tells."""
    calls = []
    monkeypatch.setattr(caption_metrics, "score", fake_score(calls))
    old = tmp_path / "old" / "root"
    shapes = shapes_labels(old / "data" / "shapes.json")
    make_caption_run(old / "runs" / "st", shapes, ["--seed", "1"])
    shutil.move(str(tmp_path / "old"), str(tmp_path / "new"))
    relative = tmp_path / "new" / "root" / "runs" / "rel"
    make_caption_run(relative, shapes_labels(tmp_path / "x.json"), ["--seed", "2"])
    config = json.loads((relative / "config.json").read_text())
    config["args"].update(input_json="data/shapes.json", save_dir="runs/rel")
    runfolder.write_json(relative / "config.json", config)
    data, _ = run_report(tmp_path / "new" / "root", tmp_path / "out")
    runs = {run["path"]: run for run in data["runs"]}
    for path in ("runs/st", "runs/rel"):
        assert runs[path]["caption_data"]["found"] and runs[path]["data"] == "shapes"
        assert "labels_file" not in runs[path]  # no path of this machine in report.json
    assert len(calls) == 1


def test_the_readme_gets_the_captioning_tables_in_their_own_block(tmp_path, capsys):
    """report.py --readme fills <!-- captioning:begin/end --> with the captioning tables (the
    README quotes no captioning number by hand); without captioning runs it says so."""
    import report
    from test_report import make_run
    root = tmp_path / "runs"
    make_run(root / "copy", "copying", ["--T", "100"], [20, 40], finished=False)
    readme = tmp_path / "README.md"
    readme.write_text("# T\n\n<!-- captioning:begin -->\nold\n<!-- captioning:end -->\n")
    assert report.main([str(root), "--out", str(tmp_path / "out"), "--readme", str(readme)]) == 0
    assert "(its marked blocks: captioning)" in capsys.readouterr().out
    text = readme.read_text()
    assert "old" not in text and "No captioning run yet." in text
    assert text.startswith("# T\n\n<!-- captioning:begin -->\nGenerated by `python report.py")


def test_the_captioning_figure_draws_every_runs_validation_cider(tmp_path, monkeypatch):
    """captioning.png: a panel per model and data set, a line per run with its validation
    CIDEr x 100 at each evaluation, an open circle where an unfinished run stands; every text
    inside the figure; report.md shows it."""
    from reporting import figures
    from test_report import texts_of
    kept = {}
    save = figures.save_png

    def keep(fig, path):
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        canvas = FigureCanvasAgg(fig)
        fig.set_dpi(100)
        canvas.draw()
        kept[Path(path).name] = (fig, canvas.get_renderer())
        save(fig, path)
    monkeypatch.setattr(figures, "save_png", keep)
    monkeypatch.setattr(caption_metrics, "score", fake_score([]))
    labels = shapes_labels(tmp_path / "data" / "shapes.json")
    root = tmp_path / "runs"
    make_caption_run(root / "st_s1", labels, ["--seed", "1"], (0.4, 0.9, 0.8), test=0.8)
    make_caption_run(root / "st_s2", labels, ["--seed", "2"], (0.5, 0.6), finished=False)
    make_caption_run(root / "sat_s1", labels, ["--caption-model", "show_attend_tell",
                                               "--p-detach", "0.4", "--input-att-dir",
                                               str(tmp_path / "data" / "att")], (1.1,))
    out = tmp_path / "out"
    data, text = run_report(root, out)
    assert "captioning.png" in text and (out / "captioning.png").stat().st_size > 0
    fig, renderer = kept["captioning.png"]
    panels = {ax.get_title().replace("\n", " "): ax for ax in fig.axes if ax.get_visible()}
    assert set(panels) == {ST_SHAPES,
                           "captioning show_attend_tell [synthetic shapes (not MS COCO)]"}
    curves = sorted(tuple(zip(line.get_xdata(), line.get_ydata()))
                    for line in panels[ST_SHAPES].get_lines() if len(line.get_xdata()) > 1)
    assert curves == [((100, pytest.approx(40.0)), (200, pytest.approx(90.0)),
                       (300, pytest.approx(80.0))),
                      ((100, pytest.approx(50.0)), (200, pytest.approx(60.0)))]
    # where the unfinished seed 2 stands: an open circle at its last evaluation
    circles = [line for line in panels[ST_SHAPES].get_lines() if line.get_marker() == "o"]
    assert [(list(c.get_xdata()), c.get_markerfacecolor()) for c in circles] == [([200],
                                                                                  "white")]
    width, height = fig.bbox.width, fig.bbox.height
    for piece in texts_of(fig):
        box = piece.get_window_extent(renderer)
        assert box.x0 >= -1 and box.y0 >= -1 and box.x1 <= width + 1 and \
            box.y1 <= height + 1, piece.get_text()[:60]


def test_no_captioning_run_no_captioning_figure(tmp_path):
    root = tmp_path / "runs"
    make_run(root / "c", "copying", ["--T", "100"], [10, 20])
    run_report(root, tmp_path / "out")
    assert not (tmp_path / "out" / "captioning.png").exists()


def test_what_every_setting_of_a_table_shares_is_said_once(tmp_path, monkeypatch):
    """A synthetic table whose settings all differ from the protocol in the same ways says so
    once above it and labels each setting by what sets it apart; beside the COCO references
    the labels stay whole (a shortened one would read as the authors' command)."""
    monkeypatch.setattr(caption_metrics, "score", fake_score([]))
    shapes = shapes_labels(tmp_path / "data" / "shapes.json")
    coco = coco_labels(tmp_path / "data" / "coco.json")
    root = tmp_path / "runs"
    small = ["--rnn-size", "128", "--learning-rate", "2e-3"]
    make_caption_run(root / "raw", shapes, small, test=0.6)
    make_caption_run(root / "std", shapes, small + ["--standardize-fc"], test=0.9)
    make_caption_run(root / "coco_raw", coco, small, test=0.6)
    make_caption_run(root / "coco_p", coco, small + ["--p-detach", "0.25"], test=0.7)
    data, text = run_report(root, tmp_path / "out")
    parts = section(text)
    shapes_part = "\n".join(parts[ST_SHAPES])
    assert "Every setting below also has: lr=2e-3, hidden 128." in shapes_part
    assert row(parts[ST_SHAPES], "| vanilla |", "| seed 0 |")[11].startswith("eval_test.json")
    assert row(parts[ST_SHAPES], "| vanilla (fc standardized) |", "| seed 0 |")
    coco_part = "\n".join(parts[ST_COCO])
    assert "Every setting below" not in coco_part
    assert row(parts[ST_COCO], "| h-detach p=0.25 (lr=2e-3, hidden 128) |", "| seed 0 |")
    # the run table and report.json keep every setting's whole label
    labels = {run["path"]: run["setting"] for run in data["runs"]}
    assert labels["std"] == "vanilla (lr=2e-3, hidden 128, fc standardized)"
