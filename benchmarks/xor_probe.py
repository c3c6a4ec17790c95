"""What XOR information the frozen network carries before any training: a linear probe on its hidden states.

The data is ``fpt-peft-compare --task bit_xor``'s (two 10-bit strings in patches of 5, 2000 training and 200 test
examples, most test inputs never trained on). For each backbone init (pretrained MiniLM, BERT's random init, the
pretrained weights shuffled within each tensor), the FPT model is built as training starts (random input layer,
untrained norms), and a logistic regression per output bit is fitted on its final hidden states of the training
examples and scored on the test examples (per-bit accuracy). Two readings: every token's state (all the network
holds), and the last token's only (what FPT's output layer reads), each with dropout off and on (on: the noise
training sees). The raw inputs, probed the same way, give what a linear model of the inputs reaches (chance on XOR).

    python -m benchmarks.xor_probe            # about 5 minutes on one CPU core
    python -m benchmarks.xor_probe --quick    # 200 training examples, one init: checks the benchmark runs
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import RESULTS_DIR, bar_plot, environment, format_table, write_json
from fpt_peft.compare import TASK_DEFAULTS
from fpt_peft.data import load_task
from fpt_peft.modeling import Init, build_model

INITS: tuple[Init, ...] = ("pretrained", "random", "shuffled")
READINGS = ("all tokens", "last token")


def probe(train: np.ndarray, train_labels: np.ndarray, test: np.ndarray, test_labels: np.ndarray) -> float:
    """Mean over output bits of a logistic regression's test accuracy (one per bit, fitted on ``train``)."""
    from sklearn.linear_model import LogisticRegression

    scores = [
        LogisticRegression(max_iter=5000).fit(train, train_labels[:, b]).score(test, test_labels[:, b])
        for b in range(train_labels.shape[1])
    ]
    return float(np.mean(scores))


def hidden_states(model: torch.nn.Module, inputs: torch.Tensor, reading: str, dropout: bool) -> np.ndarray:
    """The final hidden states of ``inputs`` (every token's, flattened, or the last token's), dropout on or off."""
    model.train(dropout)
    out = []
    with torch.no_grad():
        for start in range(0, len(inputs), 250):
            hidden = model(inputs_embeds=inputs[start : start + 250]).last_hidden_state.float()
            out.append(hidden.flatten(1) if reading == "all tokens" else hidden[:, -1])
    return torch.cat(out).numpy()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Probe every init and reading; print the table and write ``<out-dir>/<name>.json``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="200 training examples, the pretrained init only")
    parser.add_argument("--seed", type=int, default=0, help="seed of the new layers, the random init and dropout")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--name", default="xor_probe", help="result file name")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    options = {**TASK_DEFAULTS["bit_xor"], **({"num_train": 200} if args.quick else {})}
    task = load_task("bit_xor", **options)
    x_train, x_test = (
        torch.as_tensor(np.array(s["inputs_embeds"]), dtype=torch.float32) for s in (task.train, task.eval)
    )
    y_train, y_test = (np.array(s["labels"]) for s in (task.train, task.eval))
    started = time.perf_counter()
    probes: dict[str, Any] = {
        "raw inputs": probe(x_train.flatten(1).numpy(), y_train, x_test.flatten(1).numpy(), y_test)
    }
    for init in INITS[:1] if args.quick else INITS:
        torch.manual_seed(args.seed)
        model = build_model(task.spec, "minilm", init=init, seed=args.seed)
        for reading in READINGS:
            for dropout in (False, True):
                torch.manual_seed(args.seed + 1)  # the same dropout masks for every init
                train = hidden_states(model, x_train, reading, dropout)
                test = hidden_states(model, x_test, reading, dropout)
                key = f"{init}, {reading}, dropout {'on' if dropout else 'off'}"
                probes[key] = probe(train, y_train, test, y_test)
                print(f"{key}: {probes[key]:.3f}", flush=True)
    rows = [[name, f"{score:.3f}"] for name, score in probes.items()]
    print(format_table(["features", "probe per-bit test accuracy"], rows))
    data = {
        "benchmark": "xor_probe",
        "command": "python -m benchmarks.xor_probe " + " ".join(sys.argv[1:] if argv is None else argv),
        "quick": args.quick,
        "settings": {"task": "bit_xor", "task_options": options, "model": "minilm", "seed": args.seed},
        "environment": environment("cpu"),
        "seconds": time.perf_counter() - started,
        "probes": probes,
    }
    groups: dict[str, dict[str, float]] = {"raw inputs": {"raw inputs": probes["raw inputs"]}}
    for key, score in probes.items():
        if key != "raw inputs":
            backbone, reading = key.split(", ", 1)
            groups.setdefault(reading, {})[backbone] = score
    bar_plot(args.name, [("probe per-bit test accuracy (chance 0.5)", groups)], args.out_dir)
    print(f"Wrote {write_json(args.name, data, args.out_dir)} and its plot")
    return data


if __name__ == "__main__":
    main()
