"""Digits: scikit-learn's bundled 8x8 handwritten digits as a sequence task (16 tokens of 2x2 pixels); 10 classes.

An image task that needs no download (1797 images, 20% held out), for trying FPT offline in a minute:

    python recipes/digits.py
    accelerate launch recipes/digits.py --init random      # the paper's random-weights baseline
"""

from __future__ import annotations

import argparse

from fpt_peft.arguments import add_training_args, parse_recipe_args, run_recipe


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Parse the arguments, build the task and train."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = parser.add_argument_group("data")
    data.add_argument("--patch-size", type=int, default=2, help="Patch side in pixels. Default: 2.")
    data.add_argument("--eval-fraction", type=float, default=0.2, help="Share held out. Default: 0.2.")
    add_training_args(parser, batch_size=32, max_steps=500, eval_every=100)
    args = parse_recipe_args(parser, argv, task="digits")
    from fpt_peft.data import load_task  # the ML stack loads only once the arguments are good
    from fpt_peft.training import train

    task = load_task("digits", patch_size=args.patch_size, eval_fraction=args.eval_fraction, seed=args.seed)
    return train(task, args)


if __name__ == "__main__":
    run_recipe(main)
