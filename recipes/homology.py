"""Remote homology (TAPE fold classification): protein sequence -> one of 1195 folds (Lu et al., 2021).

Amino acids enter through a new embedding. ``--source`` is the Hub dataset (default ``proteinglm/fold_prediction``) or
a local folder of parquet/csv files in its schema (``seq``, ``label``; files named ``train*`` / ``valid*`` /
``test*``; only the train files and those of ``--eval-split`` are needed). The paper trains with learning rate 1e-4.
Sequences are cut to ``--max-tokens`` (MiniLM holds 512 positions; ``--no-truncation`` refuses longer sequences).

The official FPT code's set-up: TAPE's vocabulary with ``<cls>``/``<sep>`` (``--vocabulary tape``), up to 1024 tokens
with longer sequences left out (``--length-policy drop``; the official code skips whole batches), evaluated on the
``valid`` split, on GPT-2:

    accelerate launch recipes/homology.py
    accelerate launch recipes/homology.py --model gpt2 --max-tokens 1024 --vocabulary tape --length-policy drop \\
        --eval-split valid

``--preset paper`` sets all of it, with the paper's learning rate 1e-4 (see ``--help``).
"""

from __future__ import annotations

import argparse

from fpt_peft.arguments import add_training_args, parse_recipe_args, run_recipe

VOCABULARIES = ("compact", "tape")  # fpt_peft.data.homology.VOCABULARIES, without importing datasets
LENGTH_POLICIES = ("error", "truncate", "drop")
EVAL_SPLITS = ("test", "valid", "validation", "val")


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Parse the arguments, build the task and train."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = parser.add_argument_group("data")
    data.add_argument("--source", default="proteinglm/fold_prediction", help="Hub id or local folder.")
    data.add_argument("--max-tokens", type=int, default=512, help="Longest sequence. Default: 512.")
    data.add_argument(
        "--truncation",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Cut longer sequences (--length-policy truncate); --no-truncation refuses them. Default: on.",
    )
    data.add_argument(
        "--length-policy",
        choices=LENGTH_POLICIES,
        default=None,
        help="Sequences longer than --max-tokens: refuse them (error), cut them (truncate) or leave them out of "
        "both splits (drop). Default: truncate.",
    )
    data.add_argument(
        "--vocabulary",
        choices=VOCABULARIES,
        default="compact",
        help="compact: one of 27 ids per residue; tape: TAPE's 30-id vocabulary with <cls> and <sep> around each "
        "sequence (the official code's). Default: compact.",
    )
    data.add_argument(
        "--eval-split",
        choices=EVAL_SPLITS,
        default="test",
        help="Split to evaluate on: test, or valid (the official code's; validation and val name it too). "
        "Default: test.",
    )
    data.add_argument("--num-train", type=int, default=None, help="Use only the first N training sequences.")
    data.add_argument("--num-eval", type=int, default=None, help="Use only the first N evaluation sequences.")
    add_training_args(parser, learning_rate=1e-4, batch_size=8, max_steps=10_000, eval_every=2000, save_every=2000)
    args = parse_recipe_args(parser, argv, task="homology")
    given = args.length_policy is not None and args.truncation is not None
    if given and args.truncation != (args.length_policy == "truncate"):
        flag = "--truncation" if args.truncation else "--no-truncation"
        hint = " (set by --preset paper; pass --length-policy instead)" if args.preset == "paper" else ""
        parser.error(f"{flag} contradicts --length-policy {args.length_policy}{hint}; pass one of them.")
    policy = args.length_policy or ("error" if args.truncation is False else "truncate")
    from fpt_peft.data import load_task  # the ML stack loads only once the arguments are good
    from fpt_peft.training import train

    task = load_task(
        "homology",
        source=args.source,
        max_tokens=args.max_tokens,
        length_policy=policy,
        num_train=args.num_train,
        num_eval=args.num_eval,
        eval_split=args.eval_split,
        vocabulary=args.vocabulary,
    )
    return train(task, args)


if __name__ == "__main__":
    run_recipe(main)
