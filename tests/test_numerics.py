"""Portable numerics (running/numerics.py): the pin decides the numbers, the fingerprint records
what ran, and a resume on other arithmetic says so."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import copying
import pixelmnist
import transfer_copy
from running import numerics, runfolder

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--T", "6", "--train-size", "60", "--test-size", "40", "--batch_size", "20",
        "--lstm-size", "8", "--n_epochs", "2", "--anneal-p", "1", "--p-detach", "0.5",
        "--device", "cpu"]

# A fixed run (10 iterations of T = 20 at the paper's width and batch, p = 0.25, the kit's random
# streams): its epoch-1 training and validation loss in portable mode, measured once per CPU
# vendor with torch 2.14.1 and 1 thread by `python copying.py <GOLDEN_RUN> --save-dir ...`:
# on an AVX-512 AMD EPYC and on an AVX-512 (AMX) Intel Xeon. Portable mode runs AVX2 kernels on
# both, and yet MKL's AVX2 branch sums in another order on each vendor's CPUs, so the numbers
# are the same bit for bit on machines of one vendor, not across vendors (also measured with
# MKL_CBWR=AVX2,STRICT). A vendor without a measured value still checks that the pin, not the
# user's environment, decides the numbers.
GOLDEN_RUN = ["--T", "20", "--batch-size", "100", "--train-size", "1000", "--test-size", "200",
              "--n-epochs", "1", "--anneal-p", "0", "--p-detach", "0.25", "--seed", "3",
              "--rng", "kit", "--device", "cpu"]
GOLDEN = {"AMD": (2.0683082342147827, 1.8614681396484376),
          "Intel": (2.068308246135712, 1.8614681396484376)}

has_avx2 = numerics.is_x86_64() and "avx2" in numerics.cpu_flags()


def script_run(tmp_path, name, mode, threads, aten=None):
    """Start the golden configuration as a user would (a fresh interpreter), with a user's own
    ATEN_CPU_CAPABILITY in the environment when ``aten`` is given. Returns a function that
    waits for it and gives its epoch-1 losses and numerics record (the runs go side by side:
    each is one thread, and they are independent)."""
    env = {key: value for key, value in os.environ.items()
           if key not in ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA",
                          numerics.PINNED_VAR)}
    env["OMP_NUM_THREADS"] = str(threads)
    if aten:
        env["ATEN_CPU_CAPABILITY"] = aten
    folder = tmp_path / name
    proc = subprocess.Popen([sys.executable, str(ROOT / "copying.py"), *GOLDEN_RUN, "--numerics",
                             mode, "--save-dir", str(folder)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def outcome():
        _, err = proc.communicate()
        assert proc.returncode == 0, err
        row = runfolder.read_metrics(str(folder / "metrics.csv"))[0]
        config = json.loads((folder / "config.json").read_text())
        return row["train_loss"], row["valid_loss"], config["numerics"]
    return outcome


@pytest.mark.skipif(not has_avx2, reason="portable numerics pin AVX2 kernels: x86-64 with AVX2")
def test_the_pin_decides_the_numbers(tmp_path):
    runs = {name: script_run(tmp_path, name, mode, threads=1, aten=aten) for name, mode, aten in
            (("portable", "portable", None), ("portable_env", "portable", "default"),
             ("native", "native", "default"), ("native_best", "native", None))}
    # Portable: this vendor's golden value, bit for bit, with one thread ...
    portable = runs["portable"]()
    record = portable[2]
    assert record["mode"] == "portable" and record["aten_capability"] == "AVX2"
    assert record["portable"] is True and record["threads"] == 1
    assert record["cpu_vendor"] == numerics.cpu_vendor_here()
    if record["cpu_vendor"] in GOLDEN:
        assert portable[:2] == GOLDEN[record["cpu_vendor"]]
    # ... also when the user's environment asks for unvectorised kernels (the pin wins).
    train, valid, record = runs["portable_env"]()
    assert (train, valid) == portable[:2] and record["aten_capability"] == "AVX2"
    # Native mode honours that environment (unvectorised kernels) or, without it, runs the
    # machine's best: other kernels, and in at least one of the two other numbers (which one
    # depends on the CPU: on an Intel Xeon the unvectorised kernels happen to give these bits).
    unvectorised, _, record = runs["native"]()
    assert record["mode"] == "native" and record["aten_capability"] == "DEFAULT"
    best, _, record = runs["native_best"]()
    assert record["aten_capability"] == numerics_best_level()
    assert {unvectorised, best} != {portable[0]}


def numerics_best_level():
    """The ATen level torch picks on this CPU by itself (a fresh interpreter, no pin)."""
    env = {key: value for key, value in os.environ.items()
           if key not in ("ATEN_CPU_CAPABILITY", numerics.PINNED_VAR)}
    return subprocess.run([sys.executable, "-c", "import torch; "
                           "print(torch.backends.cpu.get_cpu_capability())"], env=env,
                          capture_output=True, text=True, check=True).stdout.strip()


def test_a_resume_on_another_vendors_cpu_or_thread_count_is_not_bit_identical():
    amd = {"mode": "portable", "device_type": "cpu", "aten_capability": "AVX2",
           "cpu": "AMD EPYC"}  # a record from before cpu_vendor existed: the model tells
    intel = dict(amd, cpu="Intel(R) Xeon(R) Processor", cpu_vendor="Intel")
    assert numerics.arithmetic_changes(amd, intel) == ["cpu_vendor: AMD -> Intel"]
    assert numerics.arithmetic_changes(intel, dict(intel, cpu="Intel(R) Xeon(R) Gold")) == []
    assert numerics.arithmetic_changes(amd, dict(amd, cpu="unknown")) == []  # nothing to tell
    # The thread count: MKL's AVX2 branch sums in another order with another count.
    assert numerics.arithmetic_changes(dict(intel, threads=1), dict(intel, threads=2)) == \
        ["threads: 1 -> 2"]
    assert numerics.arithmetic_changes(dict(amd, threads=1), amd) == []  # not recorded: unknown
    assert numerics.describe(amd) == "portable (AVX2, AMD)"
    assert numerics.describe(intel) == "portable (AVX2, Intel)"


def test_pin_before_torch_sets_portable_environment_and_leaves_native_alone(monkeypatch):
    monkeypatch.setattr(numerics.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(numerics, "cpu_flags", lambda: {"avx2", "avx512f"})
    env = {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE"}
    assert numerics.pin_before_torch(["--T", "5"], env) == "portable"
    assert env["ATEN_CPU_CAPABILITY"] == "avx2" and env["MKL_CBWR"] == "AVX2"
    assert env["ONEDNN_MAX_CPU_ISA"] == "AVX2" and env["CUBLAS_WORKSPACE_CONFIG"]
    env = {"ATEN_CPU_CAPABILITY": "default"}
    assert numerics.pin_before_torch(["--numerics=native"], env) == "native"
    assert env["ATEN_CPU_CAPABILITY"] == "default" and "MKL_CBWR" not in env
    # A native process started by a portable one gets the user's own environment back.
    env = {"ATEN_CPU_CAPABILITY": "default"}
    numerics.pin_before_torch([], env)
    child = dict(env)
    assert numerics.pin_before_torch(["--numerics", "native"], child) == "native"
    assert child == {"ATEN_CPU_CAPABILITY": "default",
                     "CUBLAS_WORKSPACE_CONFIG": env["CUBLAS_WORKSPACE_CONFIG"]}
    again = dict(env)
    numerics.pin_before_torch([], again)
    assert again == env  # a portable child of a portable parent: the same pin
    # Off x86-64 there is no AVX2 to pin to: nothing is set, and the record will say so.
    monkeypatch.setattr(numerics.platform, "machine", lambda: "aarch64")
    env = {}
    numerics.pin_before_torch([], env)
    assert "ATEN_CPU_CAPABILITY" not in env and "MKL_CBWR" not in env


def test_fingerprint_records_what_runs_not_what_was_asked(monkeypatch):
    record = numerics.fingerprint("portable", "cpu")
    for key in ("mode", "aten_capability", "mkl", "mkl_cbwr", "threads", "cpu", "torch",
                "numpy", "python", "device_type"):
        assert key in record
    assert record["device_type"] == "cpu" and record["torch"] == str(torch.__version__)
    # A process whose torch already runs other kernels (an in-process call) is recorded as it is.
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    record = numerics.fingerprint("portable", "cpu")
    assert record["aten_capability"] == "AVX512" and record["portable"] is False
    assert "before the AVX2 pin" in record["note"]
    assert numerics.describe(record) == f"portable (AVX512, {numerics.cpu_vendor_here()})"


def fingerprint_of(path):
    return torch.load(path, weights_only=True)["numerics"]


def test_fingerprint_in_config_results_and_checkpoints(tmp_path, capsys):
    folder = tmp_path / "run"
    assert copying.main(TINY + ["--save-dir", str(folder), "--until-epoch", "1"]) == 0
    assert copying.main(TINY + ["--save-dir", str(folder), "--resume"]) == 0
    config = json.loads((folder / "config.json").read_text())
    results = json.loads((folder / "results.json").read_text())
    records = [config["numerics"], config["resumed"][0]["numerics"], results["numerics"],
               fingerprint_of(folder / "last.pt"), fingerprint_of(folder / "best_model.pt")]
    for record in records:
        assert record["mode"] == "portable"
        assert record["aten_capability"] == torch.backends.cpu.get_cpu_capability()
    # Same arithmetic throughout: no warning, no change recorded.
    assert "warning: resuming" not in capsys.readouterr().err
    assert "arithmetic_changed" not in config["resumed"][0]


def rewrite_last(folder, change):
    path = str(folder / "last.pt")
    checkpoint = torch.load(path, weights_only=True)
    change(checkpoint)
    runfolder.save_checkpoint(path, checkpoint)


def test_resume_on_other_arithmetic_warns_in_one_line_and_is_recorded(tmp_path, capsys):
    folder = tmp_path / "run"
    copying.main(TINY + ["--save-dir", str(folder), "--until-epoch", "1"])
    capsys.readouterr()
    # As if the first epoch had run on an AVX-512 machine in native mode.
    rewrite_last(folder, lambda c: c["numerics"].update(aten_capability="AVX512",
                                                       mode="native"))
    assert copying.main(TINY + ["--save-dir", str(folder), "--resume", "--numerics",
                                "portable"]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines()
                if line.startswith("warning: resuming")]
    assert len(warnings) == 1
    assert "mode: native -> portable" in warnings[0]
    assert "aten_capability: AVX512 -> " in warnings[0] and "not bit-identical" in warnings[0]
    entry = json.loads((folder / "config.json").read_text())["resumed"][-1]
    assert any(change.startswith("aten_capability") for change in entry["arithmetic_changed"])


def test_resume_with_native_of_a_portable_run_is_a_change(tmp_path, capsys):
    folder = tmp_path / "run"
    copying.main(TINY + ["--save-dir", str(folder), "--until-epoch", "1"])
    capsys.readouterr()
    copying.main(TINY + ["--save-dir", str(folder), "--resume", "--numerics", "native"])
    assert "mode: portable -> native" in capsys.readouterr().err
    config = json.loads((folder / "config.json").read_text())
    assert config["resumed"][-1]["numerics"]["mode"] == "native"


def test_runs_older_than_the_fingerprint_resume_quietly_unless_the_device_changed(tmp_path,
                                                                                  capsys):
    folder = tmp_path / "run"
    copying.main(TINY + ["--save-dir", str(folder), "--until-epoch", "1", "--n_epochs", "3"])
    rewrite_last(folder, lambda c: c.pop("numerics"))
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text())
    config.pop("numerics")
    config_path.write_text(json.dumps(config))
    capsys.readouterr()
    copying.main(TINY + ["--save-dir", str(folder), "--resume", "--until-epoch", "2",
                         "--n_epochs", "3"])
    assert "warning: resuming" not in capsys.readouterr().err
    # The same old run, had it been trained on a GPU: the device change is said.
    rewrite_last(folder, lambda c: c.pop("numerics"))
    config = json.loads(config_path.read_text())
    config["resumed"][-1].update(device="cuda:0", numerics=None)
    config_path.write_text(json.dumps(config))
    copying.main(TINY + ["--save-dir", str(folder), "--resume", "--n_epochs", "3"])
    assert "device_type: cuda -> cpu" in capsys.readouterr().err


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_flush_denormal_is_in_force_recorded_kept_on_resume_and_undone_after(tmp_path, capsys,
                                                                             one_thread):
    folder = tmp_path / "run"
    argv = TINY + ["--n_epochs", "3", "--save-dir", str(folder)]
    assert copying.main(argv + ["--flush-denormal", "--until-epoch", "1"]) == 0
    config = json.loads((folder / "config.json").read_text())
    # The record is read from what the CPU did (a denormal times one gave zero), not the flag.
    assert config["numerics"]["flush_denormal"] is True
    assert fingerprint_of(folder / "last.pt")["flush_denormal"] is True
    assert numerics.describe(config["numerics"]).endswith(", flush denormals)")
    # The rest of this process has IEEE denormals again.
    assert not numerics.flushes_denormals(torch)
    assert torch.tensor(1e-39).mul(1.0).item() != 0.0
    capsys.readouterr()
    # A plain --resume (what the stop message says) continues with the run's own flag ...
    assert copying.main(["--save-dir", str(folder), "--resume", "--until-epoch", "2"]) == 0
    assert "warning: resuming" not in capsys.readouterr().err
    config = json.loads((folder / "config.json").read_text())
    assert config["resumed"][-1]["numerics"]["flush_denormal"] is True
    # ... and turning it off is allowed, said in one line and recorded.
    assert copying.main(["--save-dir", str(folder), "--resume", "--no-flush-denormal"]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines()
                if line.startswith("warning: resuming")]
    assert len(warnings) == 1 and "flush_denormal: True -> False" in warnings[0]
    entry = json.loads((folder / "config.json").read_text())["resumed"][-1]
    assert entry["arithmetic_changed"] == ["flush_denormal: True -> False"]
    assert fingerprint_of(folder / "last.pt")["flush_denormal"] is False


def test_flush_denormal_with_more_threads_is_one_line_and_writes_nothing(tmp_path, capsys):
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with pytest.raises(SystemExit) as stop:
            copying.main(TINY + ["--save-dir", str(tmp_path / "run"), "--flush-denormal"])
    finally:
        torch.set_num_threads(threads)
    assert stop.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(errors) == 1
    assert errors[0].startswith("error: --flush-denormal needs one torch thread (2 here")
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())
    assert not numerics.flushes_denormals(torch)


def test_flush_denormal_on_cuda_is_a_note_not_a_flush(capsys):
    # A CPU run with the flag, resumed on a GPU: it runs, and says the flag does nothing there.
    with numerics.denormals_flushed(True, torch.device("cuda")):
        assert not numerics.flushes_denormals(torch)
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["note: --flush-denormal is for CPU runs; this cuda run keeps IEEE denormals"]


def test_records_from_before_the_flag_ran_with_ieee_denormals():
    old = {"mode": "portable", "device_type": "cpu", "aten_capability": "AVX2"}
    assert numerics.arithmetic_changes(old, dict(old, flush_denormal=False)) == []
    assert numerics.arithmetic_changes(old, dict(old, flush_denormal=True)) == \
        ["flush_denormal: False -> True"]
    assert numerics.describe(dict(old, flush_denormal=False)) == "portable (AVX2)"


@pytest.mark.parametrize("main", [copying.main, pixelmnist.main, transfer_copy.main])
def test_bad_numerics_is_one_line(main, tmp_path, capsys):
    argv = ["--numerics", "nonsense"]
    argv += ["--model-dir", str(tmp_path)] if main is transfer_copy.main else \
        ["--save-dir", str(tmp_path / "run")]
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--numerics" in err[0] and "nonsense" in err[0]


def test_run_folder_labels_its_arithmetic(tmp_path):
    portable = {"mode": "portable", "aten_capability": "AVX2", "device_type": "cpu"}
    native = {"mode": "native", "aten_capability": "AVX512", "device_type": "cpu"}
    cases = [({"numerics": portable, "resumed": [{"numerics": portable}]}, "portable (AVX2)"),
             ({"resumed": []}, "unrecorded"),
             ({"resumed": [{"device": "cpu"}, {"numerics": portable}]},
              "unrecorded, then portable (AVX2)"),
             ({"numerics": portable, "resumed": [{"numerics": native}]},
              "mixed: portable (AVX2), native (AVX512)")]
    for config, label in cases:
        assert runfolder.RunFolder(str(tmp_path)).numerics_label(config) == label


def test_cuda_arithmetic_settings_are_made_explicit(monkeypatch):
    # What resolve_device("cuda") sets before a GPU run (checked here without a GPU): FP32
    # matmuls, deterministic algorithms in warn-only mode, no cuDNN autotuning, and cuBLAS's
    # reproducible workspace. The process's settings are put back afterwards.
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
             torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
             torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled())
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        numerics.configure_cuda()
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == numerics.CUBLAS_WORKSPACE
    finally:
        (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
         torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic) = saved[:4]
        torch.use_deterministic_algorithms(saved[4], warn_only=saved[5])


def test_each_resume_records_where_it_took_over_and_the_report_says_which_epochs_ran_how(
        tmp_path, capsys):
    """Issue 34, item 9: config.json's resumed entries carry the epoch and iteration they took
    over at, and the report's run table says which epochs ran on which arithmetic."""
    from reporting.runs import load_runs
    folder = tmp_path / "runs" / "run"
    argv = TINY + ["--save-dir", str(folder), "--n-epochs", "4"]
    copying.main(argv + ["--until-epoch", "1"])
    copying.main(argv + ["--resume", "--numerics", "native", "--until-epoch", "3"])
    copying.main(argv + ["--resume", "--numerics", "portable"])
    capsys.readouterr()
    config = json.loads((folder / "config.json").read_text())
    iterations = json.loads((folder / "state.json").read_text())["iteration"] // 4
    assert [(e["epoch"], e["epoch_iteration"], e["iteration"]) for e in config["resumed"]] == \
        [(1, 0, iterations), (3, 0, 3 * iterations)]
    folder_view = runfolder.RunFolder(str(folder))
    text = folder_view.numerics_by_epoch(4)
    portable, native = (numerics.describe(entry["numerics"])
                        for entry in (config, config["resumed"][0]))
    assert text == f"epochs 1: {portable}; 2-3: {native}; 4: {portable}"
    runs, _ = load_runs(str(tmp_path / "runs"))
    assert runs[0]["numerics_by_epoch"] == text
    # A resume that predates the record: the report falls back to the label alone.
    del config["resumed"][0]["epoch"]
    runfolder.write_json(folder / "config.json", config)
    assert folder_view.numerics_by_epoch(4) is None
    # One arithmetic throughout needs no epochs.
    single = tmp_path / "single"
    copying.main(TINY + ["--save-dir", str(single), "--until-epoch", "1"])
    copying.main(TINY + ["--save-dir", str(single), "--resume"])
    assert runfolder.RunFolder(str(single)).numerics_by_epoch(2) is None
