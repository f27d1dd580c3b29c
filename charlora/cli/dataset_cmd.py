"""`dataset check DIR` and `dataset prepare`: Kohya's folder layout, checked and made."""

from __future__ import annotations

import json
import sys


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
    check.add_argument("--reg", help="reg_data_dir (overrides the config's)")
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
    prep.add_argument("--repeats", type=int, default=10, help="repeats per epoch (default 10)")
    prep.add_argument("--captions", action="store_true",
                      help="write a starter caption '<trigger> <class>' per image (never overwrites)")
    prep.add_argument("--caption-extension", default=".txt")
    prep.set_defaults(handler=run_prepare)


def run_check(args) -> int:
    from ..dataset.report import check_dataset
    from ..params import defaults, load_config, normalize, parse_assignments

    values = load_config(args.config, args.overrides).values if args.config else \
        normalize({**defaults(), **parse_assignments(args.overrides)}, "the command line").values
    values = dict(values, train_data_dir=args.dir)
    if args.reg is not None:
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
    print(f"copied {result.copied} images to {result.concept_dir}")
    if result.captions_written:
        print(f"wrote {result.captions_written} starter captions")
    for skipped in result.skipped:
        print(f"skipped: {skipped}", file=sys.stderr)
    print(f"set train_data_dir to {result.img_dir}, output_dir to {result.model_dir}, "
          f"logging_dir to {result.log_dir}; put regularisation folders (like 1_girl) in {result.reg_dir}")
    return 0
