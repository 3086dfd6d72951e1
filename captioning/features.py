"""Image features for captioning: an ImageNet ResNet-152 run on each whole image, as the authors'
branch does it (``scripts/prepro_feats.py`` and ``misc/resnet_utils.py`` of ruotianluo's
neuraltalk2.pytorch).

For each image, at its own size (no resize, no crop): RGB (a grey image repeated on three
channels), scaled to [0, 1], normalised with the ImageNet mean and std; then the network up to
its last conv map (``conv1 .. layer4``, no average pool, no classifier), in eval mode. From that
map ``x`` (C x h x w, C = 2048 for ResNet-152):

    fc  = x averaged over h, then over w                  (C,)          FC_DIR/<id>.npy
    att = x adaptively average-pooled to att x att, as    (att, att, C) ATT_DIR/<id>.npz,
          (att, att, C) (channels last)                                 array "feat", compressed

``att`` (default 14) uses the branch's ``spatialAdaAvgPool`` cells: cell ``i`` of ``n`` over
``L`` positions spans ``floor(i L / n) .. ceil((i + 1) L / n)``, which is exactly what
``torch.nn.functional.adaptive_avg_pool2d`` computes (an image smaller than 448 px gives a
map smaller than 14, whose cells are then repeated). ``<id>`` is the image's ``cocoid`` (else
``imgid``, else ``id``), as the branch names its files.

The network is torchvision's ``resnet152``; its weights come from a local state-dict file
(``--cnn-weights PATH``, what the branch loads from ``data/imagenet_weights/resnet152.pth``),
from torchvision's download of the ImageNet weights (``imagenet``: IMAGENET1K_V1, the original
model-zoo ResNet-152), or are random (``random``, seeded: for tests and the synthetic set
only, and recorded as such). ``features.json``, written beside the features (in FC_DIR and
ATT_DIR) before the first image and again at the end, records the weights (their SHA-256, or
"random seed N"), the layout, the att size, the image count, what was skipped and the torch
version; a later call into the same folders must use the same network, and it only computes
the images whose files are not there yet. Every file is written atomically (temporary file,
then rename): an interrupted run leaves whole files or none.

One thing could not be read in the branch: its ``misc/resnet.py`` is stored only as a
compiled ``.pyc``. ruotianluo's ``misc/resnet.py`` of the time (read in his repository and its
forks) is torchvision's with two lines marked ``# change``, the layout of the Caffe ResNets
(converted Caffe weights): the stride-2 of a bottleneck block on its first 1x1 conv instead of
its 3x3 conv, and the stem's max-pool with padding 0 and ``ceil_mode=True``. The state-dict
keys are the same, the arithmetic is not. The protocol (docs: "Image captioning") names the
torchvision layout, the default here; ``layout="caffe"`` gives the other, for weights converted
from Caffe.

Nothing here runs on import.
"""
import datetime
import os
import re
import sys
from urllib.parse import urlparse

import numpy as np

from running.errors import UsageError
from running.runfolder import atomic_write, file_sha256, read_json, write_json

FORMAT = "h-detach-features/1"
FEATURES_JSON = "features.json"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# torchvision's ResNets: blocks per stage, block type, and the width of the last conv map.
ARCHS = {
    "resnet18": ((2, 2, 2, 2), "basic", 512),
    "resnet34": ((3, 4, 6, 3), "basic", 512),
    "resnet50": ((3, 4, 6, 3), "bottleneck", 2048),
    "resnet101": ((3, 4, 23, 3), "bottleneck", 2048),
    "resnet152": ((3, 8, 36, 3), "bottleneck", 2048),
}
PROTOCOL_ARCH = "resnet152"
LAYOUTS = ("torchvision", "caffe")
ATT_SIZE = 14
# What must agree between the features already in a folder and the ones a call would add.
SAME_NETWORK_KEYS = ("arch", "layout", "weights", "feature_size")


def arch_title(arch):
    return {"resnet18": "ResNet-18", "resnet34": "ResNet-34", "resnet50": "ResNet-50",
            "resnet101": "ResNet-101", "resnet152": "ResNet-152"}.get(arch, arch)


# ----------------------------------------------------------------------------- the network

def _torchvision_resnet(arch):
    import torchvision
    if arch not in ARCHS:
        raise UsageError(f"unknown network {arch!r}; one of {', '.join(ARCHS)}")
    return getattr(torchvision.models, arch)(weights=None)


def to_caffe_layout(net):
    """Turn a torchvision ResNet into the layout of ruotianluo's ``misc/resnet.py`` (see the
    module docstring): same parameters, stride on each first bottleneck 1x1 conv, stem max-pool
    with padding 0 and ceil mode."""
    from torch import nn
    net.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=0, ceil_mode=True)
    for stage in (net.layer1, net.layer2, net.layer3, net.layer4):
        for block in stage:
            if hasattr(block, "conv3") and block.conv2.stride != (1, 1):
                block.conv1.stride, block.conv2.stride = block.conv2.stride, (1, 1)
    return net


def guess_arch(state):
    """The torchvision ResNet a state dict's keys describe, or None."""
    blocks = []
    for stage in range(1, 5):
        found = [int(m.group(1)) for key in state
                 for m in [re.match(rf"layer{stage}\.(\d+)\.", str(key))] if m]
        blocks.append(max(found) + 1 if found else 0)
    kind = "bottleneck" if "layer1.0.conv3.weight" in state else "basic"
    for arch, (layers, block, _) in ARCHS.items():
        if tuple(blocks) == layers and block == kind:
            return arch
    return None


def check_state_dict(state, net, arch, source):
    """Refuse, in one line, a state dict that is not one of ``arch``: not a dict of tensors,
    missing or unexpected keys, a shape that differs. BatchNorm's ``num_batches_tracked`` may
    be absent (older torchvision files lack it; torch fills it in)."""
    import torch
    title = arch_title(arch)
    if not isinstance(state, dict) or not state or \
            not all(isinstance(v, torch.Tensor) for v in state.values()):
        kinds = sorted({type(v).__name__ for v in state.values()}) if isinstance(state, dict) \
            else [type(state).__name__]
        raise UsageError(f"{source} is not a {title} state dict: it holds "
                         f"{'/'.join(kinds) or 'nothing'}, not a dict of tensors")
    expected = net.state_dict()
    optional = {k for k in expected if k.endswith("num_batches_tracked")}
    missing = [k for k in expected if k not in state and k not in optional]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and tuple(state[k].shape) !=
             tuple(expected[k].shape)]
    if not (missing or unexpected or wrong):
        return
    problems = []
    if missing:
        problems.append(f"{len(missing)} keys missing (first {missing[0]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (first {unexpected[0]})")
    if wrong:
        k = wrong[0]
        problems.append(f"{len(wrong)} shapes differ (first {k}: {tuple(state[k].shape)} "
                        f"here, {tuple(expected[k].shape)} in a {title})")
    guess = guess_arch(state)
    looks = f"; it looks like a {arch_title(guess)}" if guess and guess != arch else ""
    raise UsageError(f"{source} is not a {title} state dict: {'; '.join(problems)}{looks}")


def load_weights_file(path):
    """A state dict from ``path``, loaded with ``weights_only=True`` (no code runs)."""
    import torch
    if not os.path.isfile(path):
        raise UsageError(f"--cnn-weights {path} does not exist (a torchvision ResNet state "
                         "dict file, or 'imagenet', or 'random')")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # torch raises several types (and long texts) for foreign files
        raise UsageError(f"--cnn-weights {path} is not a state dict torch can load with "
                         "weights_only=True (a whole pickled model, or another kind of file): "
                         "save the network's state_dict() instead") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        # a training checkpoint that wraps its weights: the usual layout, worth unwrapping
        state = state["state_dict"]
    return state


def download_imagenet_weights(arch):
    """torchvision's IMAGENET1K_V1 weights of ``arch`` (its cache, else a download), and the
    SHA-256 of the cached file."""
    import torch
    from torchvision.models import get_model_weights
    url = get_model_weights(arch).IMAGENET1K_V1.url
    try:
        state = torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=True,
                                                   check_hash=True, weights_only=True)
    except Exception as err:  # no network, a proxy, a half download: all end the same way
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UsageError(f"could not get the ImageNet {arch_title(arch)} weights from {url} "
                         f"({first[:160]}); download the file where the network allows and "
                         "pass it with --cnn-weights PATH") from None
    cached = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(urlparse(url).path))
    return state, url, (file_sha256(cached) if os.path.isfile(cached) else None)


def build_network(arch=PROTOCOL_ARCH, weights="random", seed=None, layout="torchvision"):
    """``(net, record)``: a torchvision ResNet in eval mode with the given weights, and what
    ``features.json`` records about it. ``weights``: a state-dict file path, ``"imagenet"``
    (torchvision's download) or ``"random"`` (torch's default init drawn from ``seed``, without
    touching torch's global generator)."""
    import torch
    if layout not in LAYOUTS:
        raise UsageError(f"unknown layout {layout!r}; one of {', '.join(LAYOUTS)}")
    if seed is not None and weights != "random":
        raise UsageError("--seed only applies to --cnn-weights random")
    if arch not in ARCHS:
        raise UsageError(f"unknown network {arch!r}; one of {', '.join(ARCHS)}")
    record = {"arch": arch, "layout": layout, "feature_size": ARCHS[arch][2]}
    state = None
    if weights == "random":
        seed = 0 if seed is None else seed
        record.update(weights=f"random seed {seed}",
                      weights_source="random initial weights (torchvision's init), NOT "
                                     "ImageNet-trained: for tests and the synthetic set only")
    else:
        if weights == "imagenet":
            state, url, sha = download_imagenet_weights(arch)
            source = f"the ImageNet weights ({url})"
            record.update(weights=f"sha256:{sha}" if sha else f"torchvision {url}",
                          weights_source=f"torchvision IMAGENET1K_V1, {url}")
        else:
            state = load_weights_file(weights)
            source = f"--cnn-weights {weights}"
            record.update(weights=f"sha256:{file_sha256(weights)}",
                          weights_source=f"file {os.path.abspath(weights)}")
        # Checked against a network on the meta device: no memory, no init, so that a wrong
        # file is refused at once.
        with torch.device("meta"):
            check_state_dict(state, _torchvision_resnet(arch), arch, source)
    # torch's default init, drawn from ``seed`` (random weights) or overwritten (a state
    # dict), without moving torch's global generator.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0 if seed is None else seed)
        net = _torchvision_resnet(arch)
    if state is not None:
        try:
            net.load_state_dict(state)
        except RuntimeError as err:
            raise UsageError(f"{source} does not load into a {arch_title(arch)}: "
                             f"{str(err).strip().splitlines()[0]}") from None
    if layout == "caffe":
        to_caffe_layout(net)
    return net.eval(), record


# ----------------------------------------------------------------------------- images

class ImageUnreadable(Exception):
    """An image that is missing or cannot be decoded (the message says which and why)."""


def load_image(path):
    """An image file as a float32 tensor (3, H, W) in [0, 1], RGB (a grey or palette image
    converted, as the branch repeats a grey channel three times)."""
    import torch
    from PIL import Image
    if not os.path.isfile(path):
        raise ImageUnreadable(f"{path} is missing")
    try:
        with Image.open(path) as img:
            rgb = np.asarray(img.convert("RGB"), dtype=np.float32)
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError... for bad files
        raise ImageUnreadable(f"{path} cannot be read as an image "
                              f"({str(err).strip() or type(err).__name__})") from None
    return torch.from_numpy(rgb.transpose(2, 0, 1).copy() / 255.0)


def image_tensor(image):
    """A path, a PIL image, an (H, W, 3) uint8 array or a (3, H, W) tensor in [0, 1] -> the
    (3, H, W) float32 tensor the network reads (before normalisation)."""
    import torch
    if isinstance(image, (str, os.PathLike)):
        return load_image(os.fspath(image))
    if isinstance(image, torch.Tensor):
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"expected a (3, H, W) tensor, got {tuple(image.shape)}")
        return image.float()
    if hasattr(image, "convert"):  # a PIL image
        image = np.asarray(image.convert("RGB"))
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) image, got shape {array.shape}")
    scale = 255.0 if array.dtype == np.uint8 else 1.0
    return torch.from_numpy(array.astype(np.float32).transpose(2, 0, 1).copy() / scale)


# ----------------------------------------------------------------------------- the extractor

class FeatureExtractor:
    """fc and att features of one image at a time, as the branch's ``myResnet``.

    ``FeatureExtractor("resnet152.pth")`` loads a state dict; ``"imagenet"`` downloads
    torchvision's; ``"random"`` (with ``seed``) is a random network for tests. ``arch`` other
    than ``resnet152`` (the protocol's) is for tests and small experiments; ``net`` gives a
    ready network instead. ``extractor(image)`` -> ``(fc (C,), att (att, att, C))`` float32
    numpy arrays, for a path, a PIL image, an array or a tensor (see ``image_tensor``).
    """

    def __init__(self, weights="random", arch=PROTOCOL_ARCH, *, seed=None, layout="torchvision",
                 att_size=ATT_SIZE, device="cpu", net=None):
        import torch
        if net is None:
            net, self.record = build_network(arch, weights, seed, layout)
        else:
            self.record = {"arch": type(net).__name__, "layout": "given",
                           "feature_size": net.fc.in_features, "weights": "given network",
                           "weights_source": "a network passed in"}
        if att_size is not None and att_size < 1:
            raise UsageError(f"--att-size must be at least 1, got {att_size}")
        self.device = torch.device(device)
        self.net = net.eval().to(self.device)
        self.att_size = att_size
        self.mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD, device=self.device).view(3, 1, 1)
        self.computed = 0  # images run through the network (tests count resumed calls with it)

    @property
    def feature_size(self):
        return self.record["feature_size"]

    def conv_map(self, image):
        """The last conv map (1, C, h, w) of one image."""
        import torch
        net = self.net
        x = (image_tensor(image).to(self.device) - self.mean) / self.std
        with torch.inference_mode():
            x = net.maxpool(net.relu(net.bn1(net.conv1(x.unsqueeze(0)))))
            x = net.layer4(net.layer3(net.layer2(net.layer1(x))))
        return x

    def __call__(self, image):
        import torch.nn.functional as F
        x = self.conv_map(image)
        self.computed += 1
        fc = x.mean(2).mean(2)[0]  # over h, then over w: the branch's x.mean(2).mean(3)
        att = None
        if self.att_size:
            att = F.adaptive_avg_pool2d(x, self.att_size)[0].permute(1, 2, 0)
            att = np.ascontiguousarray(att.float().cpu().numpy())
        return np.ascontiguousarray(fc.float().cpu().numpy()), att


# ----------------------------------------------------------------------------- a data set

def read_image_list(path):
    """``[(id, file_path)]`` of a Karpathy split file or of a prepared labels JSON
    (``prepro_captions.py labels``' OUT.json)."""
    from captioning import labels
    data = labels.read_json_file(path, "input JSON")
    if isinstance(data, dict) and data.get("format") == labels.FORMAT:
        return [(img["id"], img["file_path"]) for img in data["images"]]
    return [(labels.image_id(img), labels.image_file_path(img))
            for img in labels.read_karpathy(path)]


def feature_paths(ident, fc_dir, att_dir):
    return (os.path.join(fc_dir, f"{ident}.npy"),
            os.path.join(att_dir, f"{ident}.npz") if att_dir else None)


def _check_folder(folder, flag, record):
    """Refuse a feature folder made with another network (or not by this kit)."""
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise UsageError(f"{flag} {folder} exists and is not a folder")
    if not os.path.isdir(folder):
        return
    meta = os.path.join(folder, FEATURES_JSON)
    if not os.path.isfile(meta):
        if any(name.endswith((".npy", ".npz")) for name in os.listdir(folder)):
            raise UsageError(f"{flag} {folder} holds features but no {FEATURES_JSON}: not made "
                             "by this kit; use an empty folder")
        return
    try:
        old = read_json(meta)
    except (OSError, ValueError):
        raise UsageError(f"{meta} is not readable JSON; remove it or use another folder") \
            from None
    keys = SAME_NETWORK_KEYS + (("att_size",) if flag == "--att-dir" else ())
    differ = [k for k in keys if old.get(k) != record.get(k)]
    if differ:
        then = ", ".join(f"{k} {old.get(k)}" for k in differ)
        now = ", ".join(f"{k} {record.get(k)}" for k in differ)
        raise UsageError(f"{flag} {folder} holds features of another network ({then}; this "
                         f"call: {now}): use another folder")


def extract_features(images, images_dir, fc_dir, att_dir, extractor, missing="stop",
                     input_json=None, progress=True):
    """Write the features of ``images`` (``[(id, file_path)]``) into ``fc_dir`` (and
    ``att_dir`` unless it is None: fc only), skipping those already there. ``missing``: "stop"
    (a missing or unreadable image is a one-line UsageError; missing files are found before
    any work) or "skip" (named on stderr, recorded in features.json). Returns a summary."""
    from tqdm import tqdm
    if missing not in ("stop", "skip"):
        raise UsageError(f"--missing must be stop or skip, got {missing!r}")
    if att_dir is not None and not extractor.att_size:
        raise UsageError("att features need an att size (or use --fc-only)")
    record = dict(extractor.record, att_size=extractor.att_size if att_dir else None,
                  fc_only=att_dir is None)
    folders = [(fc_dir, "--fc-dir")] + ([(att_dir, "--att-dir")] if att_dir else [])
    if att_dir and os.path.abspath(att_dir) == os.path.abspath(fc_dir):
        raise UsageError("--fc-dir and --att-dir must be two folders")
    for folder, flag in folders:
        _check_folder(folder, flag, record)

    def done(ident):
        return all(p is None or os.path.isfile(p) for p in feature_paths(ident, fc_dir, att_dir))

    todo = [(ident, path) for ident, path in images if not done(ident)]
    if missing == "stop":
        absent = [(ident, path) for ident, path in todo
                  if not os.path.isfile(os.path.join(images_dir, path))]
        if absent:
            ident, path = absent[0]
            raise UsageError(f"image {os.path.join(images_dir, path)} (id {ident}) is missing"
                             f"{f', and {len(absent) - 1} more' if len(absent) > 1 else ''} "
                             "(--missing skip goes on without them)")
    import torch
    import torchvision
    for folder, flag in folders:
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as err:
            raise UsageError(f"cannot create {flag} {folder}: {err.strerror}") from None
    meta = dict(record, format=FORMAT, input_json=os.path.abspath(input_json) if input_json
                else None, images_dir=os.path.abspath(images_dir),
                preprocessing="whole image at its own size, RGB / 255, ImageNet mean/std",
                mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD), images_total=len(images),
                torch=torch.__version__, torchvision=torchvision.__version__,
                device=str(extractor.device))

    def write_meta(**fields):
        meta.update(fields, images_done=sum(done(ident) for ident, _ in images),
                    updated=datetime.datetime.now(datetime.timezone.utc).isoformat())
        for folder, _ in folders:
            write_json(os.path.join(folder, FEATURES_JSON), meta)

    skipped = []
    write_meta(complete=False, skipped=skipped)
    bar = tqdm(todo, desc="features", unit="img", disable=None if progress else True,
               file=sys.stderr)
    computed = 0
    for ident, path in bar:
        full = os.path.join(images_dir, path)
        try:
            fc, att = extractor(full)
        except ImageUnreadable as err:
            if missing == "stop":
                raise UsageError(f"image id {ident}: {err} (--missing skip goes on without "
                                 "it)") from None
            tqdm.write(f"skipped: image id {ident}: {err}", file=sys.stderr)
            skipped.append({"id": ident, "path": full, "reason": str(err)})
            continue
        fc_path, att_path = feature_paths(ident, fc_dir, att_dir)
        if att_path is not None:  # att first: an image counts as done once its fc exists too
            atomic_write(att_path, lambda handle: np.savez_compressed(handle, feat=att))
        atomic_write(fc_path, lambda handle: np.save(handle, fc))
        computed += 1
    bar.close()
    write_meta(complete=not skipped, skipped=skipped)
    return {"images": len(images), "computed": computed, "already": len(images) - len(todo),
            "skipped": len(skipped), "fc_dir": fc_dir, "att_dir": att_dir,
            "weights": record["weights"], "arch": record["arch"]}


def summary_line(summary):
    """The one line ``prepro_captions.py features`` prints."""
    where = summary["fc_dir"] + (f", {summary['att_dir']}" if summary["att_dir"] else " (fc only)")
    skipped = f", {summary['skipped']} skipped (see features.json)" if summary["skipped"] else ""
    return (f"{summary['images']} images: {summary['computed']} computed, {summary['already']} "
            f"already there{skipped}; {arch_title(summary['arch'])}, {summary['weights']} -> "
            f"{where}")
