"""ListOps (Long Range Arena): evaluate nested MAX / MIN / MED / SM expressions over digits; 10 classes.

Symbols enter through a new embedding (the model's own token embedding stays unused). By default expressions are
generated offline with LRA's grammar, at most 128 tokens long; the default 2000 steps take about half an hour on 2 CPU
cores with the packaged MiniLM (26 minutes measured on the development machine). LRA's own files
(500-2000 tokens, truncated to 512 by the official FPT code, which needs ``--model gpt2`` or another model with 512+
positions) load with ``--data-dir``:

    python recipes/listops.py
    accelerate launch recipes/listops.py --data-dir lra_release/listops-1000 --max-tokens 512 --truncation
"""

from __future__ import annotations

import argparse

from fpt_peft.arguments import add_training_args, parse_recipe_args, run_recipe


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Parse the arguments, build the task and train."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = parser.add_argument_group("data")
    data.add_argument("--num-train", type=int, default=5_000, help="Generated training examples. Default: 5000.")
    data.add_argument("--num-eval", type=int, default=500, help="Generated evaluation examples. Default: 500.")
    data.add_argument("--max-tokens", type=int, default=128, help="Longest sequence (official: 512). Default: 128.")
    data.add_argument("--data-dir", default=None, help="Folder with LRA's basic_train.tsv / basic_test.tsv.")
    data.add_argument("--truncation", action="store_true", help="Cut longer sequences to --max-tokens.")
    add_training_args(parser, batch_size=16, max_steps=2000, eval_every=500)
    args = parse_recipe_args(parser, argv, task="listops")
    from fpt_peft.data import load_task  # the ML stack loads only once the arguments are good
    from fpt_peft.training import train

    task = load_task(
        "listops",
        num_train=args.num_train,
        num_eval=args.num_eval,
        max_tokens=args.max_tokens,
        seed=args.seed,
        data_dir=args.data_dir,
        truncation=args.truncation,
    )
    return train(task, args)


if __name__ == "__main__":
    run_recipe(main)
