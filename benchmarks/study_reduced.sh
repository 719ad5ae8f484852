#!/usr/bin/env bash
# The quiet-features study at reduced scale (benchmarks/sweeps/study_reduced.toml) in slices that fit a lent
# GPU's calls of at most ten minutes: each slice resumes from the table the slices before it left (runs
# marked done are not redone; the runs of a pack cut off by the time limit are still pending and start over
# in the next slice), trains for SECONDS, then copies the table (sweep.sqlite, the whole table in one file)
# and its printout to $OUT. Only the table travels between slices: the frontier needs nothing else.
#
#   bash benchmarks/study_reduced.sh none 480                                     # the first slice
#   bash benchmarks/study_reduced.sh benchmarks/results/.../sweep.sqlite 480      # every later one
#   quietlab frontier DIR_WITH_THE_LAST_SWEEP_SQLITE                              # here, when all are done
# A third argument runs another spec the same way. WORKERS=N runs N packs at once (worker processes sharing
# the GPU: `quietlab sweep --workers`); the default is one. PACK_SIZE=N overrides the spec's pack_size (the runs
# and their ids are the same, so slices of either kind share one table). Smaller packs spend less time on runs
# that outlast the rest of their pack, but with compile = true a GPU pack whose runs all end together compiles
# its forward and update, a cost paid once per pack (at N = 2 every pack: two learning rates of one budget).
set -u
previous=$1 seconds=$2 spec=${3:-benchmarks/sweeps/study_reduced.toml}
out=${OUT:-/tmp/study_reduced_out}
sweep=/tmp/study_reduced
mkdir -p "$sweep" "$out"
if [ "$previous" != none ]; then cp "$previous" "$sweep/sweep.sqlite" && chmod u+w "$sweep/sweep.sqlite"; fi
if [ -n "${PACK_SIZE:-}" ]; then
  sed "s/^pack_size *=.*/pack_size = $PACK_SIZE/" "$spec" > "$sweep.spec.toml" && spec=$sweep.spec.toml
  grep -q "^pack_size = $PACK_SIZE" "$spec" || echo "pack_size = $PACK_SIZE" >> "$spec"
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
start=$(date +%s)
timeout "$seconds" python -m quietlab.cli sweep "$spec" --out "$sweep" --workers "${WORKERS:-1}" --json \
  > "$out/sweep.log" 2>&1
echo "exit $? after $(( $(date +%s) - start )) s (124: the time limit)" >> "$out/sweep.log"
pkill -f multiprocessing.spawn  # a timed-out sweep's worker processes (the table is written by the sweep alone)
cp "$sweep/sweep.sqlite" "$out/sweep.sqlite"
python - "$out/sweep.sqlite" <<'PY'
import sqlite3, sys
con = sqlite3.connect(sys.argv[1])
print("runs by status:", dict(con.execute("SELECT status, count(*) FROM runs GROUP BY status")))
for task, done, n in con.execute("SELECT task, sum(status = 'done'), count(*) FROM runs GROUP BY task ORDER BY min(rowid)"):
    print(f"  {task}: {done} of {n} done")
# a pack's runs share its wall time: each pack finished here, with its longest run
for task, d, runs, wall, steps in con.execute(
        "SELECT task, d_model, count(*), wall_s, max(total_steps) FROM runs WHERE status = 'done' "
        "GROUP BY task, d_model, wall_s ORDER BY min(finished_at)"):
    print(f"  pack {task} d_model {d}: {runs} runs, longest {steps} steps, {wall:.0f} s")
PY
grep -v "Online softmax" "$out/sweep.log" | tail -5
