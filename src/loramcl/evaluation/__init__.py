"""Evaluation of trained runs, one module per part (none imports another's caller):

    main.py         `run_eval`: eval.py's entry (decoding sweep with `decoding=`, else validation)
    checks.py       which model of a run folder, and whether a decoding method suits it (fail fast)
    decoding_run.py decode the test split into K candidates per item and score them
    validation.py   recompute the validation losses of a run's checkpoints
    report.py       write predictions.jsonl / metrics.json and log the evaluation to MLflow
    collect.py      MLflow evaluation runs -> CSV, LaTeX table and quality-vs-diversity plot
"""
