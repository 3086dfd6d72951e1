"""A small SYNTHETIC captioning data set: rendered shapes with template captions. It is NOT MS COCO
and says nothing about the paper's numbers: it exists so that the whole captioning chain
(labels, features, loader, training, decoding, scoring) can be run and checked on a CPU in
minutes, on a task where a caption is only right if the image was looked at.

Each image (``size`` x ``size`` pixels, default 96, white background) shows one, two or three
objects; an object has a shape (circle, square, triangle), a colour (red, green, blue,
yellow) and a size (small, large):

- one object: on the left, right, top or bottom of the picture;
- two objects: side by side (left / right) or one above the other (top / bottom); half of the
  pairs are two copies of one object ("two large red circles"), half two objects drawn
  independently;
- three objects: in a row from left to right; half three copies of one object.

Positions and sizes are jittered by a few pixels. Every image gets five captions, drawn
without repetition from the templates of its kind, in varied wording ("a large red circle on
the left", "one red circle at the left of the picture", ...). Every caption names the shape and
the colour of every object; sizes and positions are named by some of them only. No caption is
longer than 16 words (the loader's cut).

The file is Karpathy's split format (``dataset_coco.json``): ``images[]`` with ``split``,
``filepath`` ("images"), ``filename``, ``imgid`` (0-based), ``sentids``, ``sentences[]``
(``tokens``, ``raw``, ``imgid``, ``sentid``), plus ``scene`` (the objects drawn, for checks).
Splits are fixed fractions of a seeded permutation: 10 % val, 10 % test, 5 % restval, the
rest train (at least one val and one test image). Everything comes from python's
``random.Random(seed)``, whose streams Python keeps stable across versions: one seed, one data
set (the PNG bytes may differ between zlib versions; the pixels do not).

Writes ``OUT_DIR/dataset_shapes.json`` and ``OUT_DIR/images/shape_000000.png``, ... (each file
atomically; the JSON last). Nothing here runs on import.
"""
import io
import json
import os
import random

from running.errors import UsageError
from running.runfolder import atomic_write, check_writable

SHAPES = ("circle", "square", "triangle")
COLOURS = {"red": (220, 30, 30), "green": (30, 160, 50), "blue": (30, 60, 220),
           "yellow": (235, 200, 0)}
SIZES = ("small", "large")
SINGLE_POSITIONS = ("left", "right", "top", "bottom")
JSON_NAME = "dataset_shapes.json"
IMAGE_FOLDER = "images"
IMAGE_SIZE = 96
IMAGES = 600
FRACTIONS = {"val": 0.10, "test": 0.10, "restval": 0.05}
MIN_IMAGES = 10

# Where the words go: {S} shape, {Ss} its plural, {C} colour, {Z} size; {P} a position phrase
# ("on the left"), {Pw} the bare position word, {A} {B} {C3} objects ("large red circle").
ONE = (
    "a {Z} {C} {S} {P}",
    "one {Z} {C} {S} at the {Pw} of the picture",
    "there is a {C} {S} {P}",
    "a {C} {S} {P} of the image",
    "the picture shows a {Z} {C} {S}",
    "a single {C} {S} {P}",
    "one {C} {S} {P} on a white background",
    "a {Z} {S} in {C} {P}",
)
TWO_SAME = {
    "h": ("two {Z} {C} {Ss} side by side", "a pair of {C} {Ss} next to each other",
          "two {C} {Ss} one on the left and one on the right", "two identical {Z} {C} {Ss}",
          "there are two {C} {Ss} side by side", "two {Z} {Ss} in {C} next to each other"),
    "v": ("two {Z} {C} {Ss} one above the other", "a pair of {C} {Ss} stacked vertically",
          "two {C} {Ss} one at the top and one at the bottom", "two identical {Z} {C} {Ss}",
          "there are two {C} {Ss} one above the other", "two {Z} {Ss} in {C} stacked vertically"),
}
TWO_DIFFERENT = {
    "h": ("a {A} on the left and a {B} on the right", "a {A} to the left of a {B}",
          "a {B} to the right of a {A}", "two shapes a {A} and a {B} side by side",
          "a {A} next to a {B}", "on the left a {A} and on the right a {B}"),
    "v": ("a {A} at the top and a {B} at the bottom", "a {A} above a {B}",
          "a {B} below a {A}", "two shapes a {A} and a {B} one above the other",
          "a {A} stacked on a {B}", "at the top a {A} and at the bottom a {B}"),
}
THREE_SAME = ("three {Z} {C} {Ss} in a row", "a row of three {C} {Ss}",
              "three {C} {Ss} side by side", "three identical {Z} {C} {Ss}",
              "there are three {C} {Ss} in a line", "three {Z} {Ss} in {C} next to each other")
THREE_DIFFERENT = ("a {A} a {B} and a {C3} in a row", "from left to right a {A} a {B} and a {C3}",
                   "a {B} between a {A} and a {C3}", "three shapes a {A} a {B} and a {C3}",
                   "a row with a {A} a {B} and a {C3}", "a {A} then a {B} then a {C3}")
POSITION_PHRASE = {"left": "on the left", "right": "on the right", "top": "at the top",
                   "bottom": "at the bottom"}


def _obj(rng):
    return {"shape": rng.choice(SHAPES), "colour": rng.choice(tuple(COLOURS)),
            "size": rng.choice(SIZES)}


def _words(obj, with_size):
    return (f"{obj['size']} " if with_size else "") + f"{obj['colour']} {obj['shape']}"


def make_scene(rng):
    """One scene: {"count", "arrangement", "same", "objects": [{shape, colour, size,
    position}]}."""
    count = rng.choice((1, 2, 3))
    if count == 1:
        obj = dict(_obj(rng), position=rng.choice(SINGLE_POSITIONS))
        return {"count": 1, "arrangement": obj["position"], "same": True, "objects": [obj]}
    same = rng.random() < 0.5
    first = _obj(rng)
    objects = [dict(first) if same or i == 0 else _obj(rng) for i in range(count)]
    if count == 2:
        arrangement = rng.choice(("h", "v"))
        places = ("left", "right") if arrangement == "h" else ("top", "bottom")
    else:
        arrangement, places = "row", ("left", "middle", "right")
    for obj, place in zip(objects, places):
        obj["position"] = place
    return {"count": count, "arrangement": arrangement, "same": same, "objects": objects}


def captions_for(scene, rng, n=5):
    """``n`` different captions of a scene (lower case, words separated by single spaces)."""
    objects = scene["objects"]
    first = objects[0]
    if scene["count"] == 1:
        templates = ONE
    elif scene["count"] == 2:
        templates = (TWO_SAME if scene["same"] else TWO_DIFFERENT)[scene["arrangement"]]
    else:
        templates = THREE_SAME if scene["same"] else THREE_DIFFERENT
    chosen = rng.sample(templates, n)
    out = []
    for template in chosen:
        # the size goes into an object's words in about half of the captions of two or three
        # different objects (all three with sizes would pass 16 words)
        sized = scene["count"] == 2 and rng.random() < 0.5
        fields = {"S": first["shape"], "Ss": first["shape"] + "s", "C": first["colour"],
                  "Z": first["size"], "Pw": first["position"],
                  "P": POSITION_PHRASE.get(first["position"], "")}
        if not scene["same"]:
            fields.update(A=_words(objects[0], sized), B=_words(objects[1], sized))
            if scene["count"] == 3:
                fields["C3"] = _words(objects[2], False)
        out.append(" ".join(template.format(**fields).split()))
    return out


def draw_scene(scene, size, rng):
    """The scene as a PIL RGB image."""
    from PIL import Image, ImageDraw
    image = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    count = scene["count"]
    centres = {"left": (0.25, 0.5), "right": (0.75, 0.5), "top": (0.5, 0.25),
               "bottom": (0.5, 0.75), "middle": (0.5, 0.5)}
    if count == 3:
        centres.update(left=(1 / 6, 0.5), middle=(0.5, 0.5), right=(5 / 6, 0.5))
    cell = size / (2 if count < 3 else 3)
    for obj in scene["objects"]:
        cx, cy = centres[obj["position"]]
        jitter = max(1, int(size * 0.03))
        cx = cx * size + rng.randint(-jitter, jitter)
        cy = cy * size + rng.randint(-jitter, jitter)
        radius = cell * (0.18 if obj["size"] == "small" else 0.38)
        colour = COLOURS[obj["colour"]]
        box = (cx - radius, cy - radius, cx + radius, cy + radius)
        if obj["shape"] == "circle":
            draw.ellipse(box, fill=colour)
        elif obj["shape"] == "square":
            side = radius * 0.9
            draw.rectangle((cx - side, cy - side, cx + side, cy + side), fill=colour)
        else:
            draw.polygon([(cx, cy - radius), (cx - radius, cy + radius * 0.8),
                          (cx + radius, cy + radius * 0.8)], fill=colour)
    return image


def assign_splits(n, rng):
    """{index: split} for ``n`` images: fixed fractions (``FRACTIONS``) of a seeded
    permutation, the rest train."""
    order = list(range(n))
    rng.shuffle(order)
    counts = {split: int(round(fraction * n)) for split, fraction in FRACTIONS.items()}
    counts["val"], counts["test"] = max(counts["val"], 1), max(counts["test"], 1)
    splits, at = {}, 0
    for split in ("val", "test", "restval"):
        for index in order[at:at + counts[split]]:
            splits[index] = split
        at += counts[split]
    for index in order[at:]:
        splits[index] = "train"
    return splits


def make_dataset(n_images=IMAGES, seed=0, size=IMAGE_SIZE):
    """``(dataset dict, [PIL images])``: the whole set in memory (a few MB at the defaults)."""
    if n_images < MIN_IMAGES:
        raise UsageError(f"--images must be at least {MIN_IMAGES}, got {n_images}")
    if size < 32:
        raise UsageError(f"--size must be at least 32 pixels, got {size}")
    # Three streams from one seed, so that the split of an image does not change what it
    # shows, and more images leave the first ones as they were (the splits aside).
    scene_rng = random.Random(f"shapes-scenes-{seed}")
    split_rng = random.Random(f"shapes-splits-{seed}")
    splits = assign_splits(n_images, split_rng)
    images, pictures, sentid = [], [], 0
    for index in range(n_images):
        scene = make_scene(scene_rng)
        captions = captions_for(scene, scene_rng)
        pictures.append(draw_scene(scene, size, scene_rng))
        sentences = []
        for caption in captions:
            tokens = caption.split()
            sentences.append({"tokens": tokens, "raw": caption[0].upper() + caption[1:] + ".",
                              "imgid": index, "sentid": sentid})
            sentid += 1
        images.append({"filepath": IMAGE_FOLDER, "filename": f"shape_{index:06d}.png",
                       "imgid": index, "split": splits[index],
                       "sentids": [s["sentid"] for s in sentences], "sentences": sentences,
                       "scene": scene})
    dataset = {"dataset": "shapes", "synthetic": True,
               "note": "synthetic shapes made by make_shapes.py; NOT MS COCO",
               "seed": seed, "image_size": size, "images": images}
    return dataset, pictures


def _set_in(out_dir):
    """What the dataset_shapes.json already in ``out_dir`` says of its set ("seed 0, 600
    images of 96 px"), or None where there is none."""
    path = os.path.join(out_dir, JSON_NAME)
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            old = json.load(handle)
        return f"seed {old['seed']}, {len(old['images'])} images of {old['image_size']} px"
    except (OSError, ValueError, KeyError, TypeError):
        return "a file make_shapes.py cannot read"


def write_dataset(out_dir, n_images=IMAGES, seed=0, size=IMAGE_SIZE, overwrite=False):
    """Write the set under ``out_dir``; returns a summary. A different set already there
    (other seed, count or size: the labels and features made from it would no longer match) is
    a UsageError unless ``overwrite``; the same set is written again, byte for byte."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UsageError(f"{out_dir} exists and is not a folder")
    dataset, pictures = make_dataset(n_images, seed, size)  # checks the numbers first
    there = _set_in(out_dir)
    wanted = f"seed {seed}, {n_images} images of {size} px"
    if there is not None and there != wanted and not overwrite:
        raise UsageError(f"{out_dir} already holds a shapes set ({there}), not this one "
                         f"({wanted}); give another OUT_DIR, or --overwrite to replace it "
                         "(and make its labels and features again)")
    check_writable(out_dir, "OUT_DIR")
    folder = os.path.join(out_dir, IMAGE_FOLDER)
    os.makedirs(folder, exist_ok=True)
    from tqdm import tqdm
    for img, picture in tqdm(list(zip(dataset["images"], pictures)), desc="images", unit="img",
                             leave=False, disable=None):
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG")
        atomic_write(os.path.join(folder, img["filename"]),
                     lambda handle: handle.write(buffer.getvalue()))
    path = os.path.join(out_dir, JSON_NAME)
    atomic_write(path, lambda handle: handle.write(json.dumps(dataset).encode("utf-8")))
    splits = {}
    for img in dataset["images"]:
        splits[img["split"]] = splits.get(img["split"], 0) + 1
    return {"json": path, "images": len(dataset["images"]),
            "captions": sum(len(img["sentences"]) for img in dataset["images"]),
            "splits": splits, "size": size, "seed": seed}


def summary_line(summary):
    splits = ", ".join(f"{name} {summary['splits'].get(name, 0)}"
                       for name in ("train", "restval", "val", "test"))
    return (f"{summary['images']} synthetic images ({splits}), {summary['captions']} captions, "
            f"{summary['size']}x{summary['size']} px, seed {summary['seed']} -> "
            f"{summary['json']} (NOT MS COCO)")
