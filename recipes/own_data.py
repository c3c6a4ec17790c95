"""Your own data: an FPT classifier on a table, arrays, an image folder, ``.ts`` files or a ``datasets`` dataset.

``--data`` is a table (CSV, TSV, parquet, JSON lines; ``--label-column``, default ``label``), an ``.npz`` file or a
folder of ``.npy`` files (``X_train``/``y_train``[/``X_test``/``y_test``] or ``X``/``y``), an image folder
(``train/<class>/*``, optionally ``test/<class>/*``), a ``.ts`` file, or a ``datasets`` dataset (a folder, or a Hub
id: ``--split``, ``--test-split``, ``--input-column``). The kind (table, series, image) is inferred and said in one
line (``--kind`` overrides it); tokens are a feature per token for tables, GPT4TS patches for series and square
patches for images (``--patch-size``), standardised with the training split's statistics. Without a test split,
``--test-fraction`` of the data is held out; ``--validation-fraction`` of the rest chooses the step to keep.

    accelerate launch recipes/own_data.py --data heart.csv --label-column target
    accelerate launch recipes/own_data.py --data lab_series/          # X_train.npy, y_train.npy, ...
    accelerate launch recipes/own_data.py --data scans/ --image-size 32
"""

from __future__ import annotations

import argparse

from fpt_peft.arguments import add_training_args, parse_recipe_args, run_recipe


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Parse the arguments, read the data and train."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = parser.add_argument_group("data")
    data.add_argument("--data", required=True, help="A table, .npz, folder of .npy, image folder, .ts, dataset.")
    data.add_argument("--kind", choices=("table", "series", "image"), default=None, help="Default: inferred.")
    data.add_argument("--label-column", default="label", help="The class column of a table or dataset.")
    data.add_argument("--input-column", default=None, help="Input column(s), comma-separated. Default: the others.")
    data.add_argument("--split", default="train", help="A dataset's training split. Default: train.")
    data.add_argument("--test-split", default=None, help="A dataset's test split. Default: test, if it has one.")
    data.add_argument(
        "--test-fraction", type=float, default=0.2, help="Held out as test split when there is none. Default: 0.2."
    )
    data.add_argument("--image-size", type=int, default=None, help="Resize images to this square side.")
    data.add_argument(
        "--patch-size",
        type=int,
        default=None,
        help="Features per token (table), steps per patch (series), pixels per patch side (image). Default: by kind.",
    )
    data.add_argument("--stride", type=int, default=None, help="Steps between series patches. Default: half a patch.")
    add_training_args(parser, batch_size=32, max_steps=500, eval_every=50, save_every=250)
    args = parse_recipe_args(parser, argv, task="own_data")
    from fpt_peft.data import load_task  # the ML stack loads only once the arguments are good
    from fpt_peft.training import train

    task = load_task(
        "own_data",
        data=args.data,
        kind=args.kind,
        label_column=args.label_column,
        input_column=args.input_column,
        split=args.split,
        test_split=args.test_split,
        test_fraction=args.test_fraction,
        image_size=args.image_size,
        patch_size=args.patch_size,
        stride=args.stride,
        seed=args.seed,
    )
    return train(task, args)


if __name__ == "__main__":
    run_recipe(main)
