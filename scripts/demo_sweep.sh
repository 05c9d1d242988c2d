#!/usr/bin/env bash
# A CPU demo's whole evaluation sweep: the rehearsal of the paper table of its task
# (scripts/reproduce.py ... scale=demo: train every row on the demo data, decode with every method,
# collect CSV / LaTeX / plot into results/rehearsal_<table>/). Finished trainings and evaluations
# are found and reused, so running it again only does what is missing.
#   bash scripts/demo_sweep.sh translation            # table mt_ende;  or: audio (audio_quality_diversity),
#                                                     # bilingual (textcaps_bilingual), images (textcaps), toy
#   bash scripts/demo_sweep.sh audio scale.max_items=50 --status   # any scripts/reproduce.py argument
set -euo pipefail
cd "$(dirname "$0")/.."
demo=${1:?usage: bash scripts/demo_sweep.sh translation|audio|bilingual|images|toy [reproduce.py arguments]}
shift
case $demo in
  translation) table=mt_ende ;;
  audio) table=audio_quality_diversity ;;
  bilingual) table=textcaps_bilingual ;;
  images) table=textcaps ;;
  toy) table=toy ;;
  *) echo "error: unknown demo '$demo' (translation, audio, bilingual, images, toy)" >&2; exit 2 ;;
esac
exec "${PYTHON:-.venv/bin/python}" scripts/reproduce.py table=$table scale=demo "$@"
