"""ListOps (Long Range Arena): evaluate nested MAX / MIN / MED / SM expressions over digits; 10 classes.

Symbols enter through a new embedding (the model's own token embedding stays unused). By default expressions are
generated offline with LRA's grammar, at most 128 tokens long; the default 2000 steps take about half an hour on 2 CPU
cores with the packaged MiniLM (26 minutes measured on the development machine). LRA's own files
(``basic_train.tsv``, ``basic_val.tsv``, ``basic_test.tsv``: 500-2000 tokens) load with ``--data-dir``.

``--formulation official`` reproduces the official FPT code's loader: its tokenizer drops ``]`` (15 ids), every
sequence is cut to its first 512 tokens and padded to exactly 512 with no attention mask, and the output layer reads
the last position; the official code evaluates on the validation split (``--eval-split validation``) and needs
``--model gpt2`` or another model with 512+ positions. ``--formulation fixed`` is the same with the two loader bugs
Rothermel et al. (2021) found fixed: ``]`` kept, and longer sequences refused unless ``--length-policy`` says
``truncate`` or ``drop``:

    python recipes/listops.py
    accelerate launch recipes/listops.py --model gpt2 --data-dir lra_release/listops-1000 \\
        --formulation official --eval-split validation
    accelerate launch recipes/listops.py --model gpt2 --data-dir lra_release/listops-1000 \\
        --formulation fixed --length-policy drop --eval-split validation

``--preset paper`` sets the official set-up (GPT-2, official formulation, validation split; see ``--help``).
"""

from __future__ import annotations

import argparse

from fpt_peft.arguments import add_training_args, parse_recipe_args, run_recipe

FORMULATIONS = ("default", "official", "fixed")  # fpt_peft.data.listops.FORMULATIONS, without importing datasets
LENGTH_POLICIES = ("error", "truncate", "drop")
EVAL_SPLITS = ("test", "validation", "val", "valid")


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Parse the arguments, build the task and train."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = parser.add_argument_group("data")
    data.add_argument("--num-train", type=int, default=5_000, help="Generated training examples. Default: 5000.")
    data.add_argument("--num-eval", type=int, default=500, help="Generated evaluation examples. Default: 500.")
    data.add_argument(
        "--max-tokens",
        type=int,
        default=None,
        help="Longest sequence (official: 512). Default: 128, or 512 with --formulation official/fixed.",
    )
    data.add_argument("--data-dir", default=None, help="Folder with LRA's basic_train.tsv / basic_{test,val}.tsv.")
    data.add_argument(
        "--eval-split",
        choices=EVAL_SPLITS,
        default="test",
        help="LRA file to evaluate on: basic_test.tsv, or basic_val.tsv (validation; the official code's). "
        "Default: test.",
    )
    data.add_argument(
        "--formulation",
        choices=FORMULATIONS,
        default="default",
        help="default: ']' kept, padded to the longest sequence with an attention mask; official: the official "
        "loader (']' dropped, cut and padded to --max-tokens, no mask, read at the last position); fixed: official "
        "with ']' kept and no silent cut. Default: default.",
    )
    data.add_argument(
        "--length-policy",
        choices=LENGTH_POLICIES,
        default=None,
        help="Sequences longer than --max-tokens: refuse them (error), cut them (truncate) or leave them out (drop). "
        "Default: truncate with --formulation official, else error.",
    )
    data.add_argument("--truncation", action="store_true", help="Cut longer sequences (--length-policy truncate).")
    add_training_args(parser, batch_size=16, max_steps=2000, eval_every=500)
    args = parse_recipe_args(parser, argv, task="listops")
    if args.truncation and args.length_policy not in (None, "truncate"):
        parser.error(f"--truncation contradicts --length-policy {args.length_policy}; pass one of them.")
    from fpt_peft.data import load_task  # the ML stack loads only once the arguments are good
    from fpt_peft.training import train

    max_tokens = args.max_tokens
    if max_tokens is None:
        max_tokens = 128 if args.formulation == "default" else 512
    task = load_task(
        "listops",
        num_train=args.num_train,
        num_eval=args.num_eval,
        max_tokens=max_tokens,
        seed=args.seed,
        data_dir=args.data_dir,
        truncation=args.truncation,
        eval_split=args.eval_split,
        formulation=args.formulation,
        length_policy=args.length_policy,
    )
    return train(task, args)


if __name__ == "__main__":
    run_recipe(main)
