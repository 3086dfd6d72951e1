"""The paper's experiment grids, as data: each grid is a list of runs with stable names.

A run's name is also its folder under a sweep's ``--root`` (``copying/T100_p0.25_s3``). A
transfer run (``copying/T100_p0.25_s3:transfer``) evaluates the best model of the training run
it names, and writes ``transfer.json`` into that run's folder; it runs once that training run
is done or paused at ``--until-epoch``.

To add a grid, write a function that returns a ``Grid`` and add it to ``GRIDS``, or keep it in a
file of your own (``sweep.py --grids FILE``) that does ``from running.grids import Grid,
copying_run, ...`` (files that say ``from grids import ...``, as before the kit's packages, still
load).
"""
import os
from dataclasses import dataclass

# The paper's transfer delays (trained at T = 100).
TRANSFER_DELAYS = (200, 400, 500, 1000, 2000, 5000)
COPYING_SEEDS = (3, 1, 2, 4, 5)          # 3: the authors' README seed
MNIST_SEEDS = (250, 150, 400, 1, 2)      # 250 / 150: the authors' README; 400: the reproduction
CAPTION_SEEDS = (1, 2, 3)                 # the branch never seeded its runs


@dataclass(frozen=True)
class Run:
    """One command of a grid: ``script`` with ``args`` (without ``--save-dir``)."""
    name: str
    script: str
    args: tuple
    model: str = None  # transfer / evaluation runs: the training run whose model they test

    @property
    def is_transfer(self):
        return self.model is not None

    @property
    def folder(self):
        """The run folder, relative to the sweep's root."""
        return self.model if self.is_transfer else self.name

    @property
    def log_name(self):
        if not self.is_transfer:
            return "train.log"
        return "eval.log" if self.script == "caption_eval.py" else "transfer.log"


@dataclass(frozen=True)
class Grid:
    name: str
    description: str
    runs: tuple
    until_epoch: int = None  # the default --until-epoch of its training runs


def _label(p, detach="h"):
    if p <= 0:
        return "vanilla"
    return f"{'p' if detach == 'h' else 'c'}{p:g}"


def _flags(**flags):
    args = []
    for key, value in flags.items():
        if value is None or value is False:
            continue
        args.append("--" + key.replace("_", "-"))
        if value is not True:
            args.append(str(value))
    return tuple(args)


def copying_run(prefix, T, p, seed, detach="h", **extra):
    name = f"{prefix}/T{T}_{_label(p, detach)}_s{seed}"
    return Run(name, "copying.py", _flags(
        T=T, p_detach=p if p > 0 else None, detach=detach if detach != "h" else None,
        seed=seed, **extra))


def transfer_run(model, delays=TRANSFER_DELAYS, **extra):
    return Run(f"{model.name}:transfer", "transfer_copy.py",
               ("--T", *map(str, delays)) + _flags(**extra), model=model.name)


def caption_run(prefix, model, p, seed, detach="h", **extra):
    """A caption_train.py run; its data comes from the sweep (``--caption-data PREFIX``)."""
    name = f"{prefix}/{model}_{_label(p, detach)}_s{seed}"
    return Run(name, "caption_train.py", _flags(
        caption_model=model, p_detach=p if p > 0 else None,
        detach=detach if detach != "h" else None, seed=seed, **extra))


def caption_eval_run(model, split="test", **extra):
    """caption_eval.py on a captioning run's best_model.pt: ``eval_<split>.json`` in its
    folder, measured again whenever best_model.pt changes."""
    return Run(f"{model.name}:eval-{split}", "caption_eval.py",
               _flags(split=split, **extra), model=model.name)


def mnist_run(prefix, p, seed, permute=False, detach="h", **extra):
    name = f"{prefix}/{_label(p, detach)}_s{seed}"
    return Run(name, "pixelmnist.py", _flags(
        p_detach=p if p > 0 else None, detach=detach if detach != "h" else None,
        permute=permute, seed=seed, **extra))


def paper_copying():
    runs = tuple(copying_run("copying", T, p, seed)
                 for T in (100, 300) for p in (-1, 0.25, 0.5) for seed in COPYING_SEEDS)
    return Grid("paper-copying", "copying T = 100 and 300; vanilla, p = 0.25, 0.5; 5 seeds "
                "(600 epochs each)", runs)


def paper_transfer():
    models = [run for run in paper_copying().runs if "/T100_" in run.name]
    return Grid("paper-transfer", "transfer copying of every T = 100 model of paper-copying "
                "at T' = 200 .. 5000", tuple(transfer_run(model) for model in models))


def paper_mnist():
    runs = tuple(mnist_run("pmnist" if permute else "mnist", p, seed, permute=permute)
                 for permute in (False, True) for p in (-1, 0.25) for seed in MNIST_SEEDS)
    return Grid("paper-mnist", "pixel and permuted MNIST; vanilla and p = 0.25; 5 seeds "
                "(200 epochs each)", runs)


def paper_ablations():
    runs = [copying_run("ablations", 100, 0.25, seed, detach="c") for seed in (3, 1, 2)]
    runs += [mnist_run("ablations/mnist", 0.25, seed, detach="c") for seed in (400, 1, 2)]
    for lr in ("5e-4", "1e-4"):
        for p in (-1, 0.25):
            for seed in (400, 1, 2):
                run = mnist_run(f"ablations/mnist_noclip_lr{lr}", p, seed, lr=lr, clip=0)
                runs.append(run)
    return Grid("paper-ablations", "c-detach (copying T = 100, pixel MNIST) and training "
                "without clipping (pixel MNIST, lr 5e-4 and 1e-4)", tuple(runs))


def paper():
    runs = (paper_copying().runs + paper_transfer().runs + paper_mnist().runs
            + paper_ablations().runs)
    return Grid("paper", "every grid of the paper: paper-copying, paper-transfer, paper-mnist, "
                "paper-ablations", runs)


def campaign_copying():
    """The copying campaign measured on this kit's CPU machine (results/): the full protocol,
    seed 3, taken to epoch 200 of 600 in stages, then transfer-tested. Its runs were started
    before --rng existed and drew from the kit's streams (kit), as its transfer test sets did:
    it says so, so that its resumes and later transfer measurements stay those."""
    models = [copying_run("copying", 100, p, 3, n_epochs=600, anneal_p=40, device="cpu",
                          rng="kit") for p in (-1, 0.25, 0.5)]
    return Grid("campaign-copying", "copying T = 100, vanilla / p = 0.25 / p = 0.5, seed 3, "
                "on CPU, to epoch 200 of 600, then transfer", tuple(
                    models + [transfer_run(model, device="cpu", rng="kit")
                              for model in models]),
                until_epoch=200)


def campaign_seeds():
    """The seeds and the ablation beside the seed-3 campaign (results/): copying T = 100,
    seeds 1 and 2 of vanilla / p = 0.25 / p = 0.5, and c-detach p = 0.25 of seed 3, with the
    seed-3 runs' protocol and flags (the kit's streams, --rng kit, as they were started), in
    stages of --until-epoch (stage 1, epoch 100: done for all seven; now stage 2, epoch 200), so
    that one command continues all of them to the stage in hand."""
    flags = dict(n_epochs=600, anneal_p=40, device="cpu", rng="kit")
    seed1 = [copying_run("copying", 100, p, 1, **flags) for p in (-1, 0.25, 0.5)]
    seed2 = [copying_run("copying", 100, p, 2, **flags) for p in (-1, 0.25, 0.5)]
    ablation = copying_run("ablations", 100, 0.25, 3, detach="c", **flags)
    # The transfer table of seeds 1 and 2, as campaign-copying has it for seed 3: each waits
    # until its model has reached the stage (a model paused at an earlier stage is not ready),
    # and is measured again whenever its best_model.pt changes in a later stage.
    transfers = [transfer_run(model, device="cpu", rng="kit") for model in seed1 + seed2]
    # Grid order is launch order: seed 1's vanilla and p = 0.25 side by side first.
    return Grid("campaign-seeds", "copying T = 100, seeds 1 and 2 of vanilla / p = 0.25 / "
                "p = 0.5, and c-detach p = 0.25 of seed 3, on CPU, staged (stage 1: epoch 100, "
                "stage 2: epoch 200 of 600), then the transfer of seeds 1 and 2",
                tuple(seed1 + [ablation] + seed2 + transfers), until_epoch=200)


def campaign_t300():
    """The paper's sharpest claim, measured on this kit's CPU machines (results/): copying
    T = 300, seed 3, vanilla and h-detach p = 0.5, the authors' protocol (600 epochs planned,
    --anneal-p 40), the kit's streams (--rng kit) like every committed copying run so that the
    two settings are a pair, in stages of --until-epoch (stage 1, epoch 100: done for the pair;
    now stage 2, epoch 250), so that one command continues them to the stage in hand. p = 0.25
    joined when the pair had reached stage 1: last in grid order, so that with two slots the
    pair goes on first and p = 0.25 takes the first slot that frees."""
    flags = dict(n_epochs=600, anneal_p=40, device="cpu", rng="kit")
    models = [copying_run("copying", 300, p, 3, **flags) for p in (-1, 0.5, 0.25)]
    return Grid("campaign-T300", "copying T = 300, vanilla / p = 0.5 (then p = 0.25), seed 3, "
                "on CPU, staged (stage 1: epoch 100, stage 2: epoch 250 of 600)", tuple(models),
                until_epoch=250)


def paper_captioning():
    """Image captioning as the authors' branch runs it (30 epochs, their settings are the
    scripts' defaults): show_tell and show_attend_tell, vanilla and h-detach at the authors' p
    (0.25 and 0.4) and at the other's, three seeds, then each run's best model on the test split.
    Needs the prepared data: ``sweep.py run paper-captioning --caption-data data/coco``."""
    runs = []
    for model, ps in (("show_tell", (-1, 0.25, 0.4)), ("show_attend_tell", (-1, 0.4, 0.25))):
        for p in ps:
            for seed in CAPTION_SEEDS:
                run = caption_run("captioning", model, p, seed)
                runs += [run, caption_eval_run(run)]
    return Grid("paper-captioning", "image captioning: show_tell and show_attend_tell, vanilla "
                "and p = 0.25 / 0.4, seeds 1-3, then the test split (needs --caption-data)",
                tuple(runs))


SHAPES_SMALL = dict(rnn_size=128, input_encoding_size=128, att_hid_size=128,
                    learning_rate="2e-3", max_epochs=30, save_checkpoint_every=480,
                    val_images_use=60, rng="kit", device="cpu")


def _shapes_grid(prefix, seeds, **extra):
    runs = []
    for model, p in (("show_tell", -1), ("show_tell", 0.25), ("show_attend_tell", -1),
                     ("show_attend_tell", 0.4)):
        for seed in seeds:
            run = caption_run(prefix, model, p, seed, **SHAPES_SMALL, **extra)
            runs += [run, caption_eval_run(run, device="cpu")]
    return tuple(runs)


def smoke_captioning():
    """The whole captioning chain on a CPU, on the synthetic shapes set (``make_shapes.py``,
    NOT MS COCO) with features of a random ResNet-18 (stated as such in features.json): both
    models, vanilla and h-detach at the authors' p, small networks (128 units), 30 short
    epochs, seeds 1-3, then the test split with the real coco-caption metrics. The models read
    the fc features standardized (``--standardize-fc``, not in the branch): a random ResNet's fc
    features are mostly a part common to every image, and Show and Tell, which sees the image
    only at its first step, gave one caption for every image without it
    (``smoke-captioning-raw-fc``). Not the paper's protocol: it shows that training,
    evaluation and the report work, and whether the models learn beyond a caption-blind
    baseline. One thread per run; about 50 minutes for the 12 runs on one busy Xeon core."""
    return Grid("smoke-captioning", "the captioning chain on the synthetic shapes set: both "
                "models, vanilla and h-detach, fc features standardized, 30 short epochs, "
                "seeds 1-3, then the test split (needs --caption-data)",
                _shapes_grid("captioning-shapes/fc-standardized", (1, 2, 3),
                             standardize_fc=True))


def smoke_captioning_raw_fc():
    """The first try of ``smoke-captioning``, kept because its runs are committed results: the
    branch's models on the raw fc features of the random ResNet-18, seed 1. Show and Tell gave
    one caption for every image (its fc features differ little from image to image: their
    information is there, a linear probe reads count, colour and shape from them, but a large
    common part swamps it)."""
    return Grid("smoke-captioning-raw-fc", "smoke-captioning's first try: the branch's models "
                "on the raw fc features of a random ResNet, seed 1 (needs --caption-data)",
                _shapes_grid("captioning-shapes", (1,)))


def smoke():
    """Tiny copying runs for trying the tools (under a minute on a CPU: the grid took 28 s with
    one thread on a busy 2-core Xeon); its annealing leaves h-detach on for 3 of the 4 epochs,
    so its h-detach runs do detach."""
    tiny = dict(train_size=400, test_size=100, batch_size=20, lstm_size=16, n_epochs=4,
                anneal_p=2)
    models = [copying_run("copying", 10, p, 3, **tiny) for p in (-1, 0.25, 0.5)]
    return Grid("smoke", "tiny copying runs (T = 10, 4 epochs) and their transfer at T' = 20 "
                "and 40", tuple(models + [transfer_run(model, delays=(20, 40), test_size=100)
                                          for model in models]))


def smoke_learns():
    """Small copying runs that visibly leave chance (12.5 %) in about a minute on a CPU: T = 1,
    hidden 64, lr 5e-3, 12 epochs of 100 iterations (the grid took 49 s with one thread on a
    busy 2-core Xeon; vanilla, seed 3, went from 15 % after epoch 1 to 37 % after epoch 12).
    Not the paper's protocol: a demonstration that training, the report and its figure work."""
    small = dict(train_size=2000, test_size=200, batch_size=20, lstm_size=64, lr="5e-3",
                 n_epochs=12, anneal_p=2)
    models = [copying_run("demo", 1, p, 3, **small) for p in (-1, 0.25, 0.5)]
    return Grid("smoke-learns", "small copying runs that visibly learn (T = 1, 12 epochs) and "
                "their transfer at T' = 2 and 5", tuple(
                    models + [transfer_run(model, delays=(2, 5), test_size=200)
                              for model in models]))


GRIDS = {"paper-copying": paper_copying, "paper-transfer": paper_transfer,
         "paper-mnist": paper_mnist, "paper-ablations": paper_ablations, "paper": paper,
         "campaign-copying": campaign_copying, "campaign-seeds": campaign_seeds,
         "campaign-T300": campaign_t300, "paper-captioning": paper_captioning,
         "smoke-captioning": smoke_captioning, "smoke-captioning-raw-fc": smoke_captioning_raw_fc,
         "smoke": smoke, "smoke-learns": smoke_learns}


def catalog(grids_file=None):
    """The known grids (name -> function returning a ``Grid``): ours, plus those a user's
    Python file defines in a ``GRIDS`` dict of its own (``sweep.py --grids FILE``), so that a
    new grid needs no edit of the kit. A user's grid may reuse our names for its runs."""
    known = dict(GRIDS)
    if grids_file is None:
        return known
    import runpy
    if not os.path.isfile(grids_file):
        raise ValueError(f"--grids {grids_file}: no such file")
    # Grid files written before the kit's packages say ``from grids import ...``: while this
    # file runs, that name is this module (and only then: nothing else sees a ``grids``).
    import sys
    alias = "grids" not in sys.modules
    if alias:
        sys.modules["grids"] = sys.modules[__name__]
    try:
        extra = runpy.run_path(grids_file).get("GRIDS")
    except Exception as err:  # the user's file: any error is theirs to see, in one line
        raise ValueError(f"--grids {grids_file} could not be loaded: "
                         f"{type(err).__name__}: {err}") from None
    finally:
        if alias:
            del sys.modules["grids"]
    if not isinstance(extra, dict) or not all(callable(make) for make in extra.values()):
        raise ValueError(f"--grids {grids_file} must define GRIDS, a dict of name -> function "
                         "returning a running.grids.Grid")
    known.update(extra)
    return known


def get_grid(name, known=None):
    """The grid called ``name``; a ``KeyError`` naming the known grids otherwise."""
    known = GRIDS if known is None else known
    if name not in known:
        raise KeyError(f"unknown grid {name!r}; known grids: {', '.join(known)}")
    grid = known[name]()
    if not isinstance(grid, Grid):
        raise KeyError(f"grid {name!r} is not a grids.Grid")
    return grid
