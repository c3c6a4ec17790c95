"""Bit XOR (Lu et al., 2021): two random bit strings in, their element-wise XOR out, one 2-way logit per bit.

The paper's central demonstration: a frozen pretrained transformer (only layer norms, positions and the new input and
output layers trained) learns XOR in a few hundred steps, while the same network with random weights does not
(``--init random``). The defaults finish in a few minutes on 2 CPU cores with the packaged MiniLM:

    python recipes/bit_xor.py
    accelerate launch recipes/bit_xor.py
    accelerate launch recipes/bit_xor.py --init random      # the paper's baseline

The official code's data: ``--stream --values 01 --n-bits 5`` (a fresh random batch every step, bits 0/1).

``--preset paper`` sets all of it, with GPT-2 and the paper's training set-up (see ``--help``).
"""

from __future__ import annotations

import argparse

from fpt_peft.arguments import add_training_args, parse_recipe_args, run_recipe


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Parse the arguments, build the task and train."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = parser.add_argument_group("data")
    # 10 bits, not the paper's 5: with 5 there are only 2**10 distinct inputs, so training sees every test input.
    data.add_argument("--n-bits", type=int, default=10, help="Bits per string (paper: 5). Default: 10.")
    data.add_argument("--patch-size", type=int, default=5, help="Bits per input token. Default: 5.")
    data.add_argument("--n-strings", type=int, default=2, help="Strings XOR-ed together (paper: 2). Default: 2.")
    data.add_argument(
        "--values", choices=("pm1", "01"), default="pm1", help="Bits fed as -1/+1 or as 0/1 (official). Default: pm1."
    )
    data.add_argument(
        "--stream",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="A fresh random batch every step, as the official code (--num-train is then unused). Default: off.",
    )
    data.add_argument("--num-train", type=int, default=20_000, help="Training examples. Default: 20000.")
    data.add_argument("--num-eval", type=int, default=1_000, help="Evaluation examples. Default: 1000.")
    add_training_args(parser, batch_size=32, max_steps=600, eval_every=200, save_every=200)
    args = parse_recipe_args(parser, argv, task="bit_xor")
    from fpt_peft.data import load_task  # the ML stack loads only once the arguments are good
    from fpt_peft.training import train

    task = load_task(
        "bit_xor",
        num_train=None if args.stream else args.num_train,
        num_eval=args.num_eval,
        n_bits=args.n_bits,
        patch_size=args.patch_size,
        n_strings=args.n_strings,
        values=args.values,
        stream=args.stream,
        seed=args.seed,
    )
    return train(task, args)


if __name__ == "__main__":
    run_recipe(main)
