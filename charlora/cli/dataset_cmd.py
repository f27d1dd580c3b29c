"""`dataset check DIR` and `dataset prepare`: Kohya's folder layout, checked and made."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..params import PARAMS_BY_KEY
from ..params.evaluation import PREPARE


def register(subparsers) -> None:
    dataset = subparsers.add_parser("dataset", help="check or prepare a Kohya-style dataset folder")
    sub = dataset.add_subparsers(dest="dataset_command", metavar="ACTION", required=True)
    check = sub.add_parser(
        "check", help="report every problem, the buckets and the step counts",
        description="Read DIR (the parent of folders like 10_name) as the trainer would and report every "
                    "problem with its file, the bucket table and the steps. Exit 0 when the folder could be "
                    "read (problems are reported, not fatal), 2 when it is missing or has no usable concept.")
    check.add_argument("dir", help="train_data_dir: the parent of concept folders like '10_wwaa girl'")
    check.add_argument("--config", help="a Kohya JSON config for buckets, captions, batch size and epochs")
    check.add_argument("--reg", help="reg_data_dir (overrides the config's; a missing one given here is an error, "
                                     "a missing one in the config is reported as a problem)")
    check.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key (repeatable)")
    check.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    check.set_defaults(handler=run_check)

    prep = sub.add_parser(
        "prepare", help="make img/<repeats>_<trigger> <class>/, reg/, model/, log/ from a flat folder",
        description="Copy a flat folder of images into Kohya's layout (your files are copied, never moved).")
    prep.add_argument("images", help="folder of your images")
    prep.add_argument("dest", help="project folder to create (img/, reg/, model/, log/ inside)")
    prep.add_argument("--trigger", required=True, help="trigger word, e.g. wwaa")
    prep.add_argument("--class-word", required=True, help="class word, e.g. girl")
    repeats = PREPARE["repeats"]
    prep.add_argument("--repeats", type=int, default=repeats.default,
                      help=f"{repeats.help} (default {repeats.default})")
    prep.add_argument("--captions", action="store_true",
                      help="write a starter caption '<trigger> <class>' for each image without a caption of its "
                           "own (never overwrites)")
    prep.add_argument("--caption-extension", default=None,
                      help="extension of the captions written or copied (default: caption_extension's, "
                           f"{PARAMS_BY_KEY['caption_extension'].default!r}); your own x.txt or x.caption files "
                           "are copied either way")
    prep.set_defaults(handler=run_prepare)


def run_check(args) -> int:
    from ..dataset.folders import DatasetError
    from ..dataset.report import check_dataset
    from ..params import defaults, load_config, normalize, parse_assignments

    values = load_config(args.config, args.overrides).values if args.config else \
        normalize({**defaults(), **parse_assignments(args.overrides)}, "the command line").values
    # The folders given on the command line must exist; the config's other paths (often from another
    # computer) are reported by check_dataset as problems.
    values = dict(values, train_data_dir=args.dir)
    if args.reg is not None:
        if args.reg and not Path(args.reg).is_dir():
            what = "is not a folder" if Path(args.reg).exists() else "does not exist on this computer"
            raise DatasetError(f"--reg {args.reg!r} {what}: give the parent of folders like 1_girl, or leave --reg out")
        values["reg_data_dir"] = args.reg
    report = check_dataset(values)
    if args.json:
        json.dump(report.as_dict(), sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(report.as_text())
    return 0


def run_prepare(args) -> int:
    from ..dataset.prepare import prepare_dataset

    result = prepare_dataset(args.images, args.dest, args.trigger, args.class_word, args.repeats,
                             write_captions=args.captions, caption_extension=args.caption_extension)
    for line in result.summary_lines():
        print(line)
    for skipped in result.skipped:
        print(f"skipped: {skipped}", file=sys.stderr)
    print(f"set train_data_dir to {result.img_dir}, output_dir to {result.model_dir}, "
          f"logging_dir to {result.log_dir}; put regularisation folders (like 1_girl) in {result.reg_dir}")
    return 0
