#!/usr/bin/env bash
# A real single-node SLURM cluster (slurmctld + slurmd + munged) that lives entirely in one folder.
#
# What it is for: the test suite's real SLURM (the `slurm` fixture of tests/conftest.py starts one
# in a fresh temp folder and stops it at the end), so the SLURM code is tested against SLURM itself,
# not a mock. A developer can use it too, to try the scripts/slurm/*.sh jobs locally:
#
#     bash scripts/slurm/local_cluster.sh start            # installs (root, first time), starts
#     eval "$(bash scripts/slurm/local_cluster.sh env)"     # SLURM_CONF + PATH (for the sacct stand-in)
#     sbatch ...; squeue; ...
#     bash scripts/slurm/local_cluster.sh stop
#
# Usage: bash scripts/slurm/local_cluster.sh {start|stop|status|env} [DIR]
#   DIR: default $LORAMCL_SLURM_DIR, else /tmp/loramcl-slurm. Everything lives under it: slurm.conf,
#        munge key / socket / seed, controller state, slurmd spool, pid files (run/), daemon logs
#        (log/) and bin/sacct, a stand-in for `sacct` (there is no slurmdbd; submitit polls sacct).
#   start  installs slurm-wlm + munge with apt-get if a daemon is missing (needs root the first
#          time; without root it stops with one line saying what is missing), writes slurm.conf,
#          starts munged, slurmctld and slurmd in the background and waits until the node is idle.
#          Starting a cluster that already runs does nothing. Ports: the first free pair of
#          6817/6818, 6827/6828, ... (so two clusters in two folders can run side by side).
#   stop   cancels this cluster's unfinished jobs (so no job outlives it), then ends its three
#          daemons by their saved pids and waits until they are gone. Idempotent.
#   status whether each daemon runs, and `sinfo`.
#   env    prints `export SLURM_CONF=...` and `export PATH=DIR/bin:$PATH` for `eval`.
# LOCAL_CLUSTER_CPUS=16 (at start): the node offers 16 CPUs whatever the machine has, so that many
# one-CPU jobs run at once (a tracking store under 16 concurrent jobs); default: the machine's cores.
# LOCAL_CLUSTER_NODES=2 (at start): two nodes <host>-1, <host>-2, one slurmd each on this machine
# (Debian's slurmd 22.05 runs several: `slurmd -N <node>`), sharing its cores; their names do not
# resolve, so multi-node jobs set MASTER_ADDR=127.0.0.1 for torch.distributed.
# The daemons run as the user who starts them (root on CI). Once installed, a non-root user can run
# a cluster too (SlurmUser = SlurmdUser = that user; it can then run only that user's jobs).
set -euo pipefail

CMD=${1:-}
DIR=${2:-${LORAMCL_SLURM_DIR:-/tmp/loramcl-slurm}}
case "$CMD" in start|stop|status|env) ;; *)
    echo "usage: bash $0 {start|stop|status|env} [DIR]" >&2; exit 2 ;;
esac
[[ "$CMD" == start ]] && mkdir -p "$DIR"
DIR=$(realpath -m "$DIR")
CONF=$DIR/slurm.conf
RUN=$DIR/run
LOG=$DIR/log
MUNGE=$DIR/munge
# start order; stop goes the other way. Several nodes: one slurmd per node (slurmd, slurmd2, ...),
# as many as the running cluster's slurm.conf has, else LOCAL_CLUSTER_NODES (at start)
count_nodes() { if [[ -f "$CONF" ]] && [[ -f "$RUN/slurmctld.pid" ]]; then grep -c '^NodeName=' "$CONF"; else echo "${LOCAL_CLUSTER_NODES:-1}"; fi; }
NODE_DAEMONS=(slurmd)
for ((n = 2; n <= $(count_nodes); n++)); do NODE_DAEMONS+=("slurmd$n"); done
DAEMONS=(munged slurmctld "${NODE_DAEMONS[@]}")

pid_of() { cat "$RUN/$1.pid" 2>/dev/null || true; }
# A pid that exists and is no zombie (the container's init may reap orphans only every few seconds).
live_pid() { local st; st=$(cat "/proc/$1/stat" 2>/dev/null) || return 1; [[ "${st##*) }" != Z* ]]; }
# A saved pid counts only while it is still that daemon (a stale pid file may name a reused pid).
alive() { local p; p=$(pid_of "$1"); [[ -n "$p" && "$(cat "/proc/$p/comm" 2>/dev/null)" == "${1%%[0-9]*}" ]] && live_pid "$p"; }
client() { SLURM_CONF=$CONF PATH="$DIR/bin:$PATH" "$@"; }

print_env() {
    echo "export SLURM_CONF='$CONF'"
    echo "export PATH='$DIR/bin':\"\$PATH\""
}

write_sacct() {
    mkdir -p "$DIR/bin"
    cat > "$DIR/bin/sacct" <<'EOF'
#!/usr/bin/env bash
# Stand-in for `sacct` on a cluster without slurmdbd (written by scripts/slurm/local_cluster.sh).
# Answers what submitit asks, `sacct -o JobID,State,NodeList --parsable2 -j ID [-j ID ...]`, from
# `squeue -h -a -t all` (slurm.conf keeps finished jobs for an hour: MinJobAge=3600):
#     JobID|State|NodeList
#     12|COMPLETED|vm
#     13_0|RUNNING|vm
# Fields: JobID JobName State NodeList Partition User (others: error). Other options are ignored.
set -uo pipefail
fields=JobID,State,NodeList
ids=()
while (( $# )); do
    case "$1" in
        -o|--format) fields=$2; shift ;;
        -o*) fields=${1#-o} ;;
        --format=*) fields=${1#--format=} ;;
        -j|--jobs) ids+=("$2"); shift ;;
        -j*) ids+=("${1#-j}") ;;
        --jobs=*) ids+=("${1#--jobs=}") ;;
        -S|-E|-u|-A|-M|-r|-s|--starttime|--endtime|--user|--account|--clusters|--partition|--state) shift ;;
        *) ;;
    esac
    shift
done
fmt=""
IFS=, read -ra names <<< "$fields"
for i in "${!names[@]}"; do
    name=${names[$i]%%%*}   # sacct allows Field%width
    names[$i]=$name
    case "${name,,}" in
        jobid) f=%i ;; jobname) f=%j ;; state) f=%T ;; nodelist) f=%N ;; partition) f=%P ;; user) f=%u ;;
        *) echo "sacct (stand-in): unsupported field '$name'" >&2; exit 1 ;;
    esac
    fmt+=${fmt:+|}$f
done
(IFS='|'; echo "${names[*]}")
(( ${#ids[@]} )) || exit 0
joined=$(IFS=,; echo "${ids[*]}")
err=$(mktemp)
trap 'rm -f "$err"' EXIT
if ! squeue -h -a -t all -j "$joined" -o "$fmt" 2>"$err"; then
    # An unknown (or purged) job id: real sacct prints only the header.
    grep -qi "invalid job id" "$err" && exit 0
    cat "$err" >&2
    exit 1
fi
EOF
    chmod 755 "$DIR/bin/sacct"
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

install_if_missing() {
    local missing=() b
    for b in munged mungekey slurmctld slurmd sinfo sbatch squeue scontrol srun scancel; do
        command -v "$b" >/dev/null 2>&1 || [[ -x /usr/sbin/$b ]] || missing+=("$b")
    done
    (( ${#missing[@]} )) || return 0
    if [[ $(id -u) != 0 ]]; then
        echo "error: SLURM is not installed (missing: ${missing[*]}); run 'bash scripts/slurm/local_cluster.sh start' once as root (it runs apt-get install slurm-wlm munge), or deselect the SLURM tests with -m \"not slow and not slurm\"" >&2
        exit 1
    fi
    echo "installing slurm-wlm and munge (missing: ${missing[*]}) ..."
    local t0=$SECONDS
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y --no-install-recommends slurm-wlm munge >"$LOG/apt.log" 2>&1; then
        apt-get update >>"$LOG/apt.log" 2>&1 || true
        if ! apt-get install -y --no-install-recommends slurm-wlm munge >>"$LOG/apt.log" 2>&1; then
            tail -n 20 "$LOG/apt.log" >&2
            echo "error: apt-get install slurm-wlm munge failed (log: $LOG/apt.log)" >&2
            exit 1
        fi
    fi
    echo "installed in $((SECONDS - t0)) s"
}

write_conf() {
    local node cpus mem base
    node=$(hostname -s)
    cpus=${LOCAL_CLUSTER_CPUS:-$(nproc)}  # more than the machine has: jobs share its cores (many at once)
    mem=$(awk '/^MemTotal:/ {printf "%d", $2 / 1024 * 0.8}' /proc/meminfo)
    # First free port pair, so a second cluster (another folder) can run beside this one.
    for base in 6817 6827 6837 6847 6857 6867 6877 6887 6897 6907; do
        port_busy "$base" || port_busy $((base + 1)) || break
    done
    cat > "$CONF" <<EOF
# Written by scripts/slurm/local_cluster.sh: a single-node cluster living in $DIR.
ClusterName=loramcl
SlurmctldHost=$node
SlurmctldPort=$base
SlurmdPort=$((base + 1))
SlurmUser=$(id -un)
SlurmdUser=$(id -un)
AuthType=auth/munge
CredType=cred/munge
# cred_expire also sets how long a requeued job waits before it starts again (about 12 s here).
AuthInfo=socket=$MUNGE/munge.socket,cred_expire=10
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool$( ((${#NODE_DAEMONS[@]} > 1)) && echo /%n)
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd$( ((${#NODE_DAEMONS[@]} > 1)) && echo -%n).pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd$( ((${#NODE_DAEMONS[@]} > 1)) && echo -%n).log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
# Finished jobs stay visible to squeue (and the bin/sacct stand-in) for an hour: without slurmdbd
# this is the only job history (a real cluster keeps it in its accounting database).
MinJobAge=3600
# Otherwise stock semantics: no DependencyParameters (a job whose dependency failed stays PENDING,
# DependencyNeverSatisfied, unless it was submitted with --kill-on-invalid-dep=yes).
SchedulerParameters=bf_interval=1,sched_interval=2,batch_sched_delay=0
JobRequeue=1
KillWait=5
ReturnToService=2
InactiveLimit=0
MailProg=/bin/true
$( ((cpus > $(nproc) || ${#NODE_DAEMONS[@]} > 1)) && echo "SlurmdParameters=config_overrides  # $cpus CPUs on $(nproc) cores")
$(node_lines "$node" "$cpus" "$mem" "$base")
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

node_lines() {  # hostname cpus mem base: one NodeName line per node (several: slurmd per node, own port)
    local n count=${#NODE_DAEMONS[@]}
    if ((count == 1)); then
        echo "NodeName=$1 NodeAddr=127.0.0.1 CPUs=$2 RealMemory=$3 State=UNKNOWN"
        return
    fi
    for ((n = 1; n <= count; n++)); do  # the nodes share this machine's cores and memory
        echo "NodeName=$1-$n NodeHostname=$1 NodeAddr=127.0.0.1 Port=$(($4 + n)) CPUs=$(( $2 / count > 0 ? $2 / count : 1 )) RealMemory=$(($3 / count)) State=UNKNOWN"
    done
}

start_daemon() {  # name, command...
    local name=$1; shift
    nohup setsid "$@" </dev/null >"$LOG/$name.out" 2>&1 &
    echo $! > "$RUN/$name.pid"
}

show_logs() {
    local f
    for f in "$LOG"/*.out "$LOG"/*.log; do
        [[ -f "$f" ]] || continue
        echo "---- tail $f" >&2
        tail -n 20 "$f" >&2
    done
}

stop_daemons() {  # all three at once (each takes 1.5-2 s to exit), then wait; SIGKILL after 10 s
    local name p i pids=()
    for name in "${NODE_DAEMONS[@]}" slurmctld munged; do
        if alive "$name"; then p=$(pid_of "$name"); kill "$p" 2>/dev/null || true; pids+=("$p"); fi
    done
    for p in "${pids[@]}"; do
        for ((i = 0; i < 100; i++)); do live_pid "$p" || break; sleep 0.1; done
        if live_pid "$p"; then kill -9 "$p" 2>/dev/null || true; sleep 0.2; fi
    done
    for name in "${NODE_DAEMONS[@]}" slurmctld munged; do rm -f "$RUN/$name.pid"; done
}

cancel_jobs() {  # this cluster's unfinished jobs; waits (at most 20 s) until they have left the node
    alive slurmctld || return 0
    local ids i
    ids=$(client squeue -h -o %A -t PENDING,RUNNING,SUSPENDED,COMPLETING,CONFIGURING,REQUEUED 2>/dev/null || true)
    [[ -n "$ids" ]] || return 0
    client scancel $ids 2>/dev/null || true
    for ((i = 0; i < 80; i++)); do
        [[ -z $(client squeue -h -o %A -t RUNNING,COMPLETING,CONFIGURING,SUSPENDED 2>/dev/null) ]] && break
        sleep 0.25
    done
}

do_start() {
    # Unix socket paths (munge, slurmd's spool) must stay under 108 bytes (tests/slurm_cluster.py
    # MAX_DIR_CHARS mirrors this limit).
    if (( ${#DIR} > 70 )); then
        echo "error: DIR is too long for SLURM's unix sockets (${#DIR} > 70 characters): $DIR" >&2; exit 1
    fi
    mkdir -p "$RUN" "$LOG" "$MUNGE" "$DIR/state" "$DIR/spool"
    chmod 755 "$MUNGE"
    write_sacct
    local name all=1 any=0
    for name in "${DAEMONS[@]}"; do if alive "$name"; then any=1; else all=0; fi; done
    if (( all )); then
        echo "cluster already running in $DIR"
        return 0
    fi
    (( any )) && { echo "restarting a partly running cluster in $DIR"; stop_daemons; }
    install_if_missing
    local t0 now
    t0=$(date +%s.%N)
    if [[ ! -s "$MUNGE/munge.key" ]]; then
        if command -v mungekey >/dev/null 2>&1 || [[ -x /usr/sbin/mungekey ]]; then
            PATH=$PATH:/usr/sbin mungekey --create --keyfile="$MUNGE/munge.key"
        else
            dd if=/dev/urandom of="$MUNGE/munge.key" bs=1024 count=1 2>/dev/null
        fi
    fi
    chmod 600 "$MUNGE/munge.key"
    write_conf
    export SLURM_CONF=$CONF
    export PATH=$PATH:/usr/sbin
    # --force: start even over a stale socket left by a killed munged.
    start_daemon munged munged -F --force --key-file="$MUNGE/munge.key" --socket="$MUNGE/munge.socket" \
        --pid-file="$MUNGE/munged.pid" --seed-file="$MUNGE/munged.seed" --log-file="$LOG/munged.log"
    local i
    for ((i = 0; i < 100; i++)); do [[ -S "$MUNGE/munge.socket" ]] && break; sleep 0.1; done
    start_daemon slurmctld slurmctld -D -i
    if ((${#NODE_DAEMONS[@]} == 1)); then
        start_daemon slurmd slurmd -D
    else
        local n
        for ((n = 1; n <= ${#NODE_DAEMONS[@]}; n++)); do
            mkdir -p "$DIR/spool/$(hostname -s)-$n"
            start_daemon "${NODE_DAEMONS[n - 1]}" slurmd -D -N "$(hostname -s)-$n"
        done
    fi
    local state=""
    for ((i = 0; i < 240; i++)); do
        state=$(sinfo -h -o %T 2>/dev/null || true)
        [[ "$state" == idle ]] && break
        for name in "${DAEMONS[@]}"; do
            alive "$name" || { echo "error: $name exited while starting (logs in $LOG)" >&2; show_logs; stop_daemons; exit 1; }
        done
        sleep 0.25
    done
    if [[ "$state" != idle ]]; then
        echo "error: the SLURM node is not idle after 60 s (state: '${state:-none}'; logs in $LOG)" >&2
        show_logs
        stop_daemons
        exit 1
    fi
    now=$(date +%s.%N)
    echo "SLURM cluster up in $DIR ($(awk -v a="$t0" -v b="$now" 'BEGIN {printf "%.1f", b - a}') s, port $(awk -F= '/^SlurmctldPort=/ {print $2}' "$CONF"))"
}

do_status() {
    local name rc=0
    for name in "${DAEMONS[@]}"; do
        if alive "$name"; then echo "$name: running (pid $(pid_of "$name"))"; else echo "$name: stopped"; rc=3; fi
    done
    if alive slurmctld; then client sinfo || true; fi
    return $rc
}

case "$CMD" in
    start) do_start ;;
    stop) cancel_jobs; stop_daemons; echo "SLURM cluster in $DIR stopped" ;;
    status) do_status ;;
    env) print_env ;;
esac
