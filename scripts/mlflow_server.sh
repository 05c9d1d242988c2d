#!/bin/bash
# An MLflow tracking server for many jobs at once (a job array, a table on SLURM): the jobs talk HTTP
# to one server, and only the server's processes, all on one machine, open its database. Run it on
# the login node, or as a SLURM job; either way its address is published in $STORE_DIR/uri once it
# answers (and removed when it stops):
#
#   bash scripts/mlflow_server.sh &                                   # here (login node)
#   sbatch scripts/mlflow_server.sh                                   # as a job on a compute node
#   python train.py -m hydra/launcher=slurm ... logger.mlflow.tracking_uri=$(cat logs/mlflow_server/uri)
#   python scripts/reproduce.py table=textcaps --slurm mlflow_uri=$(cat logs/mlflow_server/uri)
#   mlflow ui / a browser: the same address
#
# The database: SQLite behind the server by default (nothing to administer; one machine opens the
# file, where SQLite's locking is reliable: point STORE_DIR at a disk of that machine, or at your
# home / project folder when the server stays on the login node). A PostgreSQL you have:
# BACKEND=postgresql://user:password@host/db (pip install psycopg2-binary). Run folders keep their
# artifacts on the shared filesystem (each experiment's artifact location is a path under logs/).
#SBATCH --job-name=loramcl-mlflow
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=4              # the server's worker processes
#SBATCH --mem=8G
#SBATCH --time=7-00:00:00              # CHANGE: as long as the jobs that log to it
#SBATCH --output=slurm-%x-%j.out
set -euo pipefail

PROJECT_DIR=${PROJECT_DIR:-${SLURM_SUBMIT_DIR:-$(pwd)}}   # the loramcl checkout
MLFLOW=${MLFLOW:-$PROJECT_DIR/.venv/bin/mlflow}          # its environment (bash setup_env.sh)
STORE_DIR=${STORE_DIR:-$PROJECT_DIR/logs/mlflow_server}  # database, address file, server log
BACKEND=${BACKEND:-sqlite:///$STORE_DIR/mlflow.db}
PORT=${PORT:-5000}                                        # 0: any free port
WORKERS=${WORKERS:-4}
HOST=${HOST:-$(hostname -f 2>/dev/null || hostname)}     # the name jobs reach this machine by

mkdir -p "$STORE_DIR"
uri_file="$STORE_DIR/uri"
if [[ -s "$uri_file" ]] && curl -sf -m 5 "$(cat "$uri_file")/health" >/dev/null 2>&1; then
    echo "error: a server already answers at $(cat "$uri_file") ($uri_file); stop it first" >&2
    exit 1
fi
if [[ "$PORT" == 0 ]]; then
    PORT=$("${MLFLOW%/mlflow}/python" -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])')
fi
address="http://$HOST:$PORT"
"$MLFLOW" server --backend-store-uri "$BACKEND" --host 0.0.0.0 --port "$PORT" --workers "$WORKERS" \
    --allowed-hosts "$HOST,$HOST:$PORT,$(hostname),$(hostname):$PORT,localhost,localhost:$PORT,127.0.0.1:$PORT" &
server=$!
trap 'kill "$server" 2>/dev/null; wait "$server" 2>/dev/null; rm -f "$uri_file"' EXIT
trap 'exit 143' TERM INT
for _ in $(seq 120); do  # publish the address once it answers
    if curl -sf -m 2 "$address/health" >/dev/null 2>&1; then
        echo "$address" > "$uri_file.tmp" && mv "$uri_file.tmp" "$uri_file"
        echo "MLflow server at $address (database $BACKEND); its address is in $uri_file"
        break
    fi
    if ! kill -0 "$server" 2>/dev/null; then
        echo "error: mlflow server exited before answering (see the lines above)" >&2
        exit 1
    fi
    sleep 1
done
[[ -s "$uri_file" ]] || { echo "error: no answer from $address after 120 s" >&2; exit 1; }
wait "$server"
