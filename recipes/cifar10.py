"""CIFAR-10 as a sequence task (Lu et al., 2021): 32x32 RGB images in 4x4 patches, 64 tokens of 48 values.

``--source`` is the Hub dataset (default ``uoft-cs/cifar10``) or a local folder of parquet files in its schema
(``img``, ``label``; files named ``train*`` / ``test*``):

    accelerate launch recipes/cifar10.py
    accelerate launch recipes/cifar10.py --model gpt2 --max-steps 20000

``--augment`` adds the official code's training augmentation (on by default there): random crop with padding 4,
horizontal flip, rotation up to 20 degrees, on the train split only.

``--preset paper`` sets the paper's set-up, augmentation included (see ``--help``).
"""

from __future__ import annotations

import argparse

from fpt_peft.arguments import add_training_args, parse_recipe_args, run_recipe


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Parse the arguments, build the task and train."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = parser.add_argument_group("data")
    data.add_argument("--source", default="uoft-cs/cifar10", help="Hub id or local folder. Default: uoft-cs/cifar10.")
    data.add_argument("--patch-size", type=int, default=4, help="Patch side in pixels. Default: 4.")
    data.add_argument("--num-train", type=int, default=None, help="Use only the first N training images.")
    data.add_argument("--num-eval", type=int, default=None, help="Use only the first N evaluation images.")
    data.add_argument(
        "--augment",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="The official training augmentation (train split only): random crop (padding 4), horizontal flip, "
        "rotation up to 20 degrees. Default: off.",
    )
    add_training_args(parser, batch_size=16, max_steps=10_000, eval_every=2000, save_every=2000)
    args = parse_recipe_args(parser, argv, task="cifar10")
    from fpt_peft.data import load_task  # the ML stack loads only once the arguments are good
    from fpt_peft.training import train

    task = load_task(
        "cifar10",
        source=args.source,
        patch_size=args.patch_size,
        num_train=args.num_train,
        num_eval=args.num_eval,
        augment=args.augment,
    )
    return train(task, args)


if __name__ == "__main__":
    run_recipe(main)
