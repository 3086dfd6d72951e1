"""Prepare a captioning data set as the authors' branch ``captioning`` does
(``scripts/prepro_labels.py`` and ``scripts/prepro_feats.py``), in two steps:

    python prepro_captions.py labels --input-json data/dataset_coco.json --output data/cocotalk
        -> data/cocotalk.json (vocabulary, images, reference captions)
           data/cocotalk_labels.npz (encoded captions)
    python prepro_captions.py features --input-json data/dataset_coco.json \\
        --images-dir data/coco --output-dir data/cocotalk --cnn-weights resnet152.pth
        -> data/cocotalk_fc/<id>.npy, data/cocotalk_att/<id>.npz, features.json in both

``labels``: words seen more than 5 times, the rest UNK; captions cut to 16 words; restval
trained on (captioning/labels.py). ``features``: ResNet-152 on each whole image, fc (2048) and
att (14 x 14 x 2048) (captioning/features.py); a second call computes only what is missing.
For MS COCO, ``dataset_coco.json`` is Karpathy's split file and the images are COCO's
train2014/val2014 folders under --images-dir; ``make_shapes.py`` makes a small synthetic set in
the same format.
"""
import sys

from running.errors import UsageError, report_errors
from utils import ArgParser, add_threads_flag, non_negative_int, positive_int, seed_value


def build_parser():
    from captioning import features, labels
    parser = ArgParser(prog="prepro_captions.py", description=(
        "Prepare captioning data: 'labels' (vocabulary and encoded captions) and 'features' "
        "(ResNet-152 fc/att features per image), as the authors' branch 'captioning'."))
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                     parser_class=ArgParser)

    lab = commands.add_parser("labels", help="vocabulary and encoded captions",
                              description="Karpathy's split JSON -> OUT.json (vocabulary, "
                              "images, reference captions) and OUT_labels.npz (labels, "
                              "label_start_ix, label_end_ix (1-based, inclusive), label_length).")
    lab.flag("--input-json", required=True,
             help="Karpathy's split file (dataset_coco.json format)")
    lab.flag("--output", "--output-json", required=True, metavar="OUT",
             help="output prefix: writes OUT.json and OUT_labels.npz")
    lab.flag("--word-count-threshold", type=non_negative_int,
             default=labels.WORD_COUNT_THRESHOLD,
             help="words seen at most this many times become UNK "
                  f"(default {labels.WORD_COUNT_THRESHOLD})")
    lab.flag("--max-length", type=positive_int, default=labels.MAX_LENGTH,
             help=f"captions are cut to this many words (default {labels.MAX_LENGTH})")
    lab.flag("--restval-as", choices=labels.RESTVAL_CHOICES, default="train",
             help="the split restval images are used in: train (default, the branch's "
                  "--train_only 0, Karpathy's usual setting), val, or drop (the branch's "
                  "--train_only 1)")

    feat = commands.add_parser("features", help="ResNet-152 fc/att features per image",
                               description="Run a ResNet on each whole image: FC_DIR/<id>.npy "
                               "(mean of the last conv map) and ATT_DIR/<id>.npz (array "
                               "'feat': the map adaptively pooled to att x att, channels last). "
                               "Resumable: images whose files exist are skipped.")
    feat.flag("--input-json", required=True,
              help="Karpathy's split file, or the OUT.json of 'labels'")
    feat.flag("--images-dir", "--images-root", default="",
              help="image root: an image is images_dir/filepath/filename (default: here)")
    feat.flag("--output-dir", metavar="PREFIX", default=None,
              help="the branch's naming: --fc-dir PREFIX_fc and --att-dir PREFIX_att")
    feat.flag("--fc-dir", default=None, help="folder for <id>.npy fc features")
    feat.flag("--att-dir", default=None, help="folder for <id>.npz att features")
    feat.flag("--fc-only", action="store_true",
              help="write fc features only (show_tell needs no att)")
    feat.flag("--att-size", type=positive_int, default=features.ATT_SIZE,
              help=f"att features are att-size x att-size cells (default {features.ATT_SIZE})")
    feat.flag("--cnn-weights", required=True, metavar="PATH|imagenet|random",
              help="a torchvision ResNet-152 state dict file (loaded with weights_only=True); "
                   "'imagenet': torchvision's download (IMAGENET1K_V1); 'random': random "
                   "initial weights from --seed (tests and the synthetic set only; "
                   "features.json says so)")
    feat.flag("--seed", type=seed_value, default=None,
              help="seed of --cnn-weights random (default 0)")
    feat.flag("--arch", choices=tuple(features.ARCHS), default=features.PROTOCOL_ARCH,
              help="the network; the protocol (and the branch) is resnet152 (2048-d features); "
                   "the others are for tests and small experiments")
    feat.flag("--layout", choices=features.LAYOUTS, default="torchvision",
              help="torchvision (default, the protocol); caffe: ruotianluo's misc/resnet.py "
                   "(stride on the first 1x1 conv, max-pool padding 0 ceil mode) for weights "
                   "converted from Caffe")
    feat.flag("--device", choices=("auto", "cpu", "cuda"), default="auto",
              help="auto: CUDA when present, else CPU")
    # On a busy CPU, torch's default of one thread per core made a ResNet-18 image take 0.29 s
    # instead of 0.013 s with one thread: the threads wait on each other.
    add_threads_flag(feat, training=False)
    feat.flag("--missing", choices=("stop", "skip"), default="stop",
              help="a missing or unreadable image: stop (default; one line naming it) or skip "
                   "(named on stderr, recorded in features.json)")
    return parser


def run_labels(args):
    from captioning import labels
    summary = labels.prepare_labels(args.input_json, args.output, args.word_count_threshold,
                                    args.max_length, args.restval_as)
    print(labels.summary_line(summary))
    return 0


def run_features(args):
    from captioning import features
    from running.devices import resolve_device
    from running.runfolder import set_threads
    fc_dir, att_dir = args.fc_dir, args.att_dir
    if args.output_dir:
        fc_dir = fc_dir or args.output_dir + "_fc"
        att_dir = att_dir or args.output_dir + "_att"
    if fc_dir is None:
        raise UsageError("say where the features go: --fc-dir (and --att-dir), or "
                         "--output-dir PREFIX")
    if args.fc_only:
        if args.att_dir:
            raise UsageError("--fc-only and --att-dir contradict each other")
        att_dir = None
    elif att_dir is None:
        raise UsageError("--att-dir is needed (or --fc-only for fc features only)")
    images = features.read_image_list(args.input_json)
    set_threads(args.threads)
    device = resolve_device(args.device)
    extractor = features.FeatureExtractor(args.cnn_weights, args.arch, seed=args.seed,
                                          layout=args.layout, att_size=args.att_size,
                                          device=device)
    summary = features.extract_features(images, args.images_dir, fc_dir, att_dir, extractor,
                                        missing=args.missing, input_json=args.input_json)
    print(features.summary_line(summary))
    return 0


def main(argv=None):
    args = build_parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    return report_errors(lambda: (run_labels if args.command == "labels" else run_features)(args))


if __name__ == "__main__":
    sys.exit(main())
