"""How much MAUVE moves with the seeded half-split of the contexts: per-split values of 04's replies.

python bench/mauve_splits.py outputs/04_eval                      # the twin and the real replies of one 04 run
python bench/mauve_splits.py RUN_A RUN_B --splits 40              # two runs on the same contexts, paired

Reads `samples.jsonl` of each 04 output folder (the same split and --max_examples, so the contexts match), embeds
the replies with 04's all-MiniLM-L6-v2 and scores MAUVE as 04 does (replies to half A vs real replies of half B)
for each seeded split: mean, standard deviation and range per column, and for two runs the per-split difference
and the 95 % interval of its mean that 04's gate uses. Prints only numbers, never reply text.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from simme_common import gate, metrics  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="04 output folders (one or two)")
    parser.add_argument("--splits", type=int, default=metrics.MAUVE_SPLITS)
    parser.add_argument("--seed", type=int, default=42, help="04's --seed (the first split)")
    args = parser.parse_args()

    rows = [[json.loads(line) for line in (Path(r) / "samples.jsonl").read_text(encoding="utf-8").splitlines()]
            for r in args.runs[:2]]
    if any([r["real"] for r in rows[0]] != [r["real"] for r in other] for other in rows[1:]):
        raise SystemExit("error: the runs scored different contexts (same --eval_split, --max_examples and --seed?)")
    encoder = metrics.load_text_encoder()
    real = metrics.encode_texts(encoder, [r["real"] for r in rows[0]])
    columns = {"real": real} | {f"twin {i + 1}": metrics.encode_texts(encoder, [r["twin"] for r in run])
                                for i, run in enumerate(rows)}
    splits = metrics.mauve_halves(len(real), args.seed, args.splits)
    values = {name: metrics.mauve_per_split(emb, real, splits, args.seed) for name, emb in columns.items()}
    if len(rows) == 2:
        values["twin 2 - twin 1"] = [y - x for x, y in zip(values["twin 1"], values["twin 2"])]
    print(f"{len(real)} contexts, {args.splits} seeded half-splits; per-split MAUVE:")
    for name, v in values.items():
        print(f"  {name:16} mean {statistics.mean(v):.3f}  sd {statistics.stdev(v):.3f}  range {min(v):.3f} .. {max(v):.3f}")
    if len(rows) == 2:
        lo, hi = gate.split_interval(values["twin 2"], values["twin 1"], seed=args.seed)
        print(f"  95 % interval of the mean difference (04's gate): [{lo:.3f}, {hi:.3f}]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
