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

from fpt_peft.arguments import add_own_data_args, add_training_args, own_data_options, parse_recipe_args, run_recipe


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Parse the arguments, read the data and train."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_own_data_args(parser)
    add_training_args(parser, batch_size=32, max_steps=500, eval_every=50, save_every=250)
    args = parse_recipe_args(parser, argv, task="own_data")
    from fpt_peft.data import load_task  # the ML stack loads only once the arguments are good
    from fpt_peft.training import train

    task = load_task("own_data", **own_data_options(args), seed=args.seed)
    return train(task, args)


if __name__ == "__main__":
    run_recipe(main)
