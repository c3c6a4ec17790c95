"""MNIST as a sequence task (Lu et al., 2021): 28x28 images in 4x4 patches, 49 tokens of 16 pixels; 10 classes.

``--source`` is the Hub dataset (default ``ylecun/mnist``) or a local folder of parquet files in its schema
(``image``, ``label``; files named ``train*`` / ``test*``):

    accelerate launch recipes/mnist.py
    python recipes/mnist.py --source ./mnist_parquet --num-train 10000 --max-steps 2000

``--preset paper`` sets the paper's set-up (GPT-2, batch 4, input dropout 0.1; see ``--help``).
"""

from __future__ import annotations

import argparse

from fpt_peft.arguments import add_training_args, parse_recipe_args, run_recipe


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Parse the arguments, build the task and train."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = parser.add_argument_group("data")
    data.add_argument("--source", default="ylecun/mnist", help="Hub id or local folder. Default: ylecun/mnist.")
    data.add_argument("--patch-size", type=int, default=4, help="Patch side in pixels. Default: 4.")
    data.add_argument("--num-train", type=int, default=None, help="Use only the first N training images.")
    data.add_argument("--num-eval", type=int, default=None, help="Use only the first N evaluation images.")
    add_training_args(parser, batch_size=16, max_steps=5000, eval_every=1000)
    args = parse_recipe_args(parser, argv, task="mnist")
    from fpt_peft.data import load_task  # the ML stack loads only once the arguments are good
    from fpt_peft.training import train

    task = load_task(
        "mnist", source=args.source, patch_size=args.patch_size, num_train=args.num_train, num_eval=args.num_eval
    )
    return train(task, args)


if __name__ == "__main__":
    run_recipe(main)
