"""Remote homology (TAPE fold classification): protein sequence -> one of 1195 folds (Lu et al., 2021).

Amino acids enter through a new embedding. ``--source`` is the Hub dataset (default ``proteinglm/fold_prediction``) or
a local folder of parquet/csv files in its schema (``seq``, ``label``; files named ``train*`` / ``valid*`` /
``test*``). The paper trains with learning rate 1e-4. Sequences are cut to ``--max-tokens`` (MiniLM holds 512
positions; ``--model gpt2 --max-tokens 1024`` is the paper's setup; ``--no-truncation`` refuses longer sequences):

    accelerate launch recipes/homology.py
    accelerate launch recipes/homology.py --model gpt2 --max-tokens 1024
"""

from __future__ import annotations

import argparse

from fpt_peft.arguments import add_training_args, parse_recipe_args, run_recipe


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Parse the arguments, build the task and train."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = parser.add_argument_group("data")
    data.add_argument("--source", default="proteinglm/fold_prediction", help="Hub id or local folder.")
    data.add_argument("--max-tokens", type=int, default=512, help="Longest sequence. Default: 512.")
    data.add_argument(
        "--truncation", action=argparse.BooleanOptionalAction, default=True, help="Cut longer sequences. Default: on."
    )
    data.add_argument("--num-train", type=int, default=None, help="Use only the first N training sequences.")
    data.add_argument("--num-eval", type=int, default=None, help="Use only the first N evaluation sequences.")
    add_training_args(parser, learning_rate=1e-4, batch_size=8, max_steps=10_000, eval_every=2000, save_every=2000)
    args = parse_recipe_args(parser, argv, task="homology")
    from fpt_peft.data import load_task  # the ML stack loads only once the arguments are good
    from fpt_peft.training import train

    task = load_task(
        "homology",
        source=args.source,
        max_tokens=args.max_tokens,
        truncation=args.truncation,
        num_train=args.num_train,
        num_eval=args.num_eval,
    )
    return train(task, args)


if __name__ == "__main__":
    run_recipe(main)
