#!/usr/bin/env bash
# The whole evaluation sweep of one CPU demo: train LoRA-MCL, LoRA-MLE and LoRA-MoE (or reuse the
# newest finished runs), decode the test split with every method, collect CSV / LaTeX / plot.
#   bash scripts/demo_sweep.sh translation            # or: audio | bilingual
#   RETRAIN=1 bash scripts/demo_sweep.sh audio        # train again even if runs exist
#   bash scripts/demo_sweep.sh audio max_items=20     # extra eval.py overrides for every job
# Results: results/demo_<name>/eval_demo_<name>.{csv,tex,_quality_diversity.png}; MLflow
# experiment eval_demo_<name> in logs/mlflow.db; every job's predictions under logs/eval/multiruns/.
set -euo pipefail
cd "$(dirname "$0")/.."
demo=${1:?usage: bash scripts/demo_sweep.sh translation|audio|bilingual [eval overrides]}
shift
case $demo in translation|audio|bilingual) ;; *) echo "error: unknown demo '$demo' (translation, audio, bilingual)" >&2; exit 2;; esac
PY=${PYTHON:-.venv/bin/python}
exp=eval_demo_$demo

newest_run() {  # the newest run folder of an experiment that finished (has metrics.json or summary.json)
  for d in $(ls -td logs/"$1"/runs/*/ 2>/dev/null); do
    if [ -f "$d/metrics.json" ] || [ -f "$d/summary.json" ]; then echo "${d%/}"; return; fi
  done
}
train() {  # train experiment $1 unless a finished run exists (RETRAIN=1 forces it)
  if [ -z "${RETRAIN:-}" ] && [ -n "$(newest_run "$1")" ]; then
    echo "[demo_sweep] reusing $(newest_run "$1")" >&2
  else
    echo "[demo_sweep] training $1" >&2
    "$PY" train.py experiment="$1" extras.print_config=false >&2
  fi
  newest_run "$1"
}

one_output="mle_beam,mle_beam_2K,mle_beam_K2,mle_dbs,mle_dbs_08,mle_dbs_10"
one_output+=",mle_sampling_top_k,mle_sampling_nucleus,mle_sampling_typical,mle_sampling_ancestral"
[ "$demo" != translation ] && one_output+=",tta_beam1,tta_beam2,tta_beamK"  # TTA: audio and images only
moe="moe_standard,moe_sampled_expert,moe_forced,mle_dbs"

mcl_run=$(train demo_${demo}_mcl)
if [ "$demo" = bilingual ]; then  # one run trains the MLE and the MCL model
  mle_run=$mcl_run; mcl_sel=(model_name=mcl); mle_sel=(model_name=mle)
else
  mle_run=$(train demo_${demo}_mle); mcl_sel=(); mle_sel=()
fi
moe_run=$(train demo_${demo}_moe)

common=(mlflow.experiment=$exp "$@")
"$PY" eval.py -m ckpt_path="$mcl_run" "${mcl_sel[@]}" decoding=mcl_beam1,mcl_beam2,mcl_beamK "${common[@]}"
"$PY" eval.py -m ckpt_path="$mle_run" "${mle_sel[@]}" decoding=$one_output "${common[@]}"
"$PY" eval.py -m ckpt_path="$moe_run" decoding=$moe "${common[@]}"
"$PY" scripts/collect_results.py --experiment $exp --out results/demo_$demo
