"""Time-series classification on the UCR/UEA archives (``--dataset``, any archive name), as GPT4TS feeds GPT-2.

Each series (optionally normalised per instance and channel, ``--normalize``) is cut into patches (``--patch-len``,
``--stride``; GPT4TS's replication padding at the end) whose channels share a token (``--channels mix``) or get one
token each (``separate``), and read by the frozen backbone through FPT's new input layer; ``--num-layers 6`` keeps
GPT-2's first 6 blocks as GPT4TS does. Uses the archive's own train/test split. The datasets bundled with aeon
(JapaneseVowels, BasicMotions, GunPoint, ItalyPowerDemand, ArrowHead, OSULeaf, ...) train offline in about a minute on
2 CPU cores; other archive datasets load from ``--data-dir`` (``<dir>/<Name>/<Name>_TRAIN.ts``) or are downloaded by
aeon where the network allows. Needs ``pip install 'fpt-peft[timeseries]'``.

    python recipes/time_series.py --dataset JapaneseVowels
    accelerate launch recipes/time_series.py --dataset BasicMotions --patch-len 16 --stride 8
    accelerate launch recipes/time_series.py --dataset JapaneseVowels --init random   # the paper's baseline
"""

from __future__ import annotations

import argparse

from fpt_peft.arguments import add_training_args, parse_recipe_args, run_recipe


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Parse the arguments, build the task and train."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", default="JapaneseVowels", help="UCR/UEA archive name. Default: JapaneseVowels.")
    data.add_argument("--data-dir", default=None, help="Folder of archive .ts files (<dir>/<Name>/<Name>_TRAIN.ts).")
    data.add_argument("--patch-len", type=int, default=8, help="Time steps per patch. Default: 8.")
    data.add_argument("--stride", type=int, default=4, help="Steps between patch starts. Default: 4.")
    data.add_argument(
        "--normalize",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="Per-instance, per-channel normalisation (measured worse on JapaneseVowels). Default: off.",
    )
    data.add_argument(
        "--channels",
        choices=("mix", "separate"),
        default="mix",
        help="All channels of a patch in one token (mix, GPT4TS), or one token per channel. Default: mix.",
    )
    add_training_args(parser, batch_size=16, max_steps=500, eval_every=100, save_every=250)
    args = parse_recipe_args(parser, argv, task="time_series")
    from fpt_peft.data import load_task  # the ML stack loads only once the arguments are good
    from fpt_peft.training import train

    task = load_task(
        "time_series",
        dataset=args.dataset,
        data_dir=args.data_dir,
        patch_len=args.patch_len,
        stride=args.stride,
        normalize=args.normalize,
        channels=args.channels,
    )
    return train(task, args)


if __name__ == "__main__":
    run_recipe(main)
