"""What does each hypothesis learn? Identifiability, a 2-D map and word statistics of the K outputs.

    python scripts/analyse_hypotheses.py logs/eval/runs/<time>                   # one eval.py run folder
    python scripts/analyse_hypotheses.py logs/eval/multiruns/<time>              # every evaluation of a sweep
    python scripts/analyse_hypotheses.py logs/demo_bilingual_mcl/runs/<time>     # a bilingual run's predictions_*.jsonl
    python scripts/analyse_hypotheses.py <mcl eval> <dbs eval> --out results/hypotheses   # compare with a baseline

For each evaluation (its predictions.jsonl; candidates labelled by hypothesis, DBS group, beam rank,
sample index, ...) it writes `hypothesis_analysis/` beside the predictions: report.md (identifiability
of the index from the candidates' sentence embeddings against chance 1 / K, with a 95 % interval, the
confusion matrix, per index the mean length, vocabulary, most distinctive words and, for bilingual
data, language shares), analysis.json, confusion.png and projection.png; adds them and the
`identifiability_*` metrics to the evaluation's MLflow run; and prints one comparison table over all
the evaluations given (also written to --out/comparison.md). The method is in
src/loramcl/evaluation/hypotheses.py.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from loramcl.cli import ArgumentParser, arg  # one-line errors
    from loramcl.schema.fields import Int

    parser = ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("paths", nargs="+", type=Path, help="eval.py run folders, predictions files, or folders holding them")
    parser.add_argument("--embedding-model", default=None,
                        help="sentence-embedding model (default: the semantic metrics' all-MiniLM-L6-v2)")
    parser.add_argument("--batch-size", type=arg(Int(1)), default=64, help="sentences per embedding batch")
    parser.add_argument("--seed", type=arg(Int(0, 2**32 - 1)), default=0, help="seeds the bootstrap interval and the projection")
    parser.add_argument("--out", type=Path, default=None, help="also write the comparison table to OUT/comparison.md")
    parser.add_argument("--no-mlflow", action="store_true", help="do not add the report to the evaluations' MLflow runs")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s] %(message)s")

    from loramcl.errors import MissingResource
    from loramcl.evaluation import hypotheses as H
    from loramcl.interrupts import doing
    from loramcl.metrics.semantic import DEFAULT_MODEL, load_embedder

    try:  # every input is read before the model loads: a bad path fails in a second
        evaluations = [H.load_candidates(p) for p in H.find_evaluations(args.paths)]
        embedder = load_embedder(args.embedding_model or DEFAULT_MODEL)
    except (FileNotFoundError, ValueError, MissingResource) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    results = []
    for evaluation in evaluations:
        doing(f"analysing {evaluation.source}")
        result = H.analyse(evaluation, embedder, args.batch_size, args.seed)
        files = H.write_report(result, evaluation.folder)
        run = None if args.no_mlflow else H.log_to_mlflow(evaluation.source, result, files)
        ident = result["identifiability"]
        print(f"{evaluation.name}: " + (f"identifiability {ident['accuracy']:.1%} (chance {ident['chance']:.1%})"
                                  if ident else result.get("note", "")) + f" -> {evaluation.folder / 'report.md'}"
              + (f" (MLflow run {run})" if run else ""))
        results.append(result)
    table = H.comparison(results)
    print("\n" + table)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        from loramcl.utils.atomic import publish_files

        def write(stage: Path) -> list[Path]:  # a comparison.md it replaces is kept in previous/<time>/
            (stage / "comparison.md").write_text(table + "\n")
            return [stage / "comparison.md"]

        publish_files(args.out, write, "comparison.md")
    return 0


if __name__ == "__main__":
    from loramcl.cli import run_script
    from loramcl.interrupts import stop_on_signals

    with stop_on_signals():  # Ctrl+C / SIGTERM: one `error:` line, exit status 130 / 143
        sys.exit(run_script(main))
