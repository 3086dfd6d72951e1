"""A small SYNTHETIC captioning data set (rendered shapes, template captions; NOT MS COCO) in
Karpathy's split format, to run the captioning chain on a CPU in minutes.

    python make_shapes.py data/shapes --images 600 --seed 0
    python prepro_captions.py labels --input-json data/shapes/dataset_shapes.json \\
        --output data/shapes/shapestalk
    python prepro_captions.py features --input-json data/shapes/dataset_shapes.json \\
        --images-dir data/shapes --output-dir data/shapes/shapestalk --cnn-weights imagenet

Writes OUT_DIR/dataset_shapes.json and OUT_DIR/images/shape_NNNNNN.png (captioning/shapes.py
describes the scenes, captions and splits). One seed, one data set.
"""
import sys

from captioning import shapes
from running.errors import report_errors
from utils import ArgParser, positive_int, seed_value


def build_parser():
    parser = ArgParser(prog="make_shapes.py", description=(
        "Write a synthetic captioning data set (shapes, colours, sizes, positions; five "
        "template captions per image) in Karpathy's JSON format. It is NOT MS COCO: it checks "
        "the captioning chain on a CPU."))
    parser.add_argument("out_dir", metavar="OUT_DIR",
                        help="folder to write dataset_shapes.json and images/ into")
    parser.flag("--images", type=positive_int, default=shapes.IMAGES,
                help=f"number of images (default {shapes.IMAGES}, at least {shapes.MIN_IMAGES})")
    parser.flag("--seed", type=seed_value, default=0, help="random seed (default 0)")
    parser.flag("--size", type=positive_int, default=shapes.IMAGE_SIZE,
                help=f"image width and height in pixels (default {shapes.IMAGE_SIZE})")
    parser.flag("--overwrite", action="store_true",
                help="replace a different shapes set already in OUT_DIR (the same set is "
                     "simply written again)")
    return parser


def main(argv=None):
    args = build_parser().parse_args(sys.argv[1:] if argv is None else list(argv))

    def run():
        summary = shapes.write_dataset(args.out_dir, args.images, args.seed, args.size,
                                        overwrite=args.overwrite)
        print(shapes.summary_line(summary))
        return 0
    return report_errors(run)


if __name__ == "__main__":
    sys.exit(main())
