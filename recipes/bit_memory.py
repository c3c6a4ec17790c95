"""Bit memory (Lu et al., 2021): five random bit strings, then one of them with each bit masked with p=0.5; recall it.

One 2-way logit per bit of the recalled string, read from its last tokens. The paper's setup is 5 strings of 1000
bits in patches of 50 (120 tokens) for about 1e4 steps (``--n-bits 1000 --patch-size 50 --max-steps 10000``); the
defaults here are a smaller instance (100-bit strings) that trains in minutes on CPU:

    python recipes/bit_memory.py
    accelerate launch recipes/bit_memory.py --n-bits 1000 --patch-size 50 --max-steps 10000

Add ``--stream`` for the official code's data: a fresh random batch every step instead of ``--num-train`` examples.

``--preset paper`` sets the paper's whole set-up at once, GPT-2 included (see ``--help``).
"""

from __future__ import annotations

import argparse

from fpt_peft.arguments import add_training_args, parse_recipe_args, run_recipe


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Parse the arguments, build the task and train."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = parser.add_argument_group("data")
    data.add_argument("--n-strings", type=int, default=5, help="Strings to memorise (paper: 5). Default: 5.")
    data.add_argument("--n-bits", type=int, default=100, help="Bits per string (paper: 1000). Default: 100.")
    data.add_argument("--patch-size", type=int, default=10, help="Bits per token (paper: 50). Default: 10.")
    data.add_argument("--mask-prob", type=float, default=0.5, help="Masking probability of the query. Default: 0.5.")
    data.add_argument(
        "--stream",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="A fresh random batch every step, as the official code (--num-train is then unused). Default: off.",
    )
    data.add_argument("--num-train", type=int, default=20_000, help="Training examples. Default: 20000.")
    data.add_argument("--num-eval", type=int, default=500, help="Evaluation examples. Default: 500.")
    add_training_args(parser, batch_size=16, max_steps=2000, eval_every=500)
    args = parse_recipe_args(parser, argv, task="bit_memory")
    from fpt_peft.data import load_task  # the ML stack loads only once the arguments are good
    from fpt_peft.training import train

    task = load_task(
        "bit_memory",
        num_train=None if args.stream else args.num_train,
        num_eval=args.num_eval,
        n_strings=args.n_strings,
        n_bits=args.n_bits,
        patch_size=args.patch_size,
        mask_prob=args.mask_prob,
        stream=args.stream,
        seed=args.seed,
    )
    return train(task, args)


if __name__ == "__main__":
    run_recipe(main)
