#!/bin/bash
# Issue 38's per-seed runs: for each seed, train that seed's teacher on its own split, then run the
# search, one run at a time. Run from an empty work folder with the project on PYTHONPATH:
#
#   DEADLINE=08:50 bash run_seeds.sh WORKLOAD SEED...
#   (WORKLOAD: user, r18digits, mnv2digits, mnv2digits-default, r18fm3000)
#
# The image folders come from make_data.py (written to ./data on first use). Every command runs
# under a timeout that ends it by DEADLINE (UTC, default: 2 hours from now), and a seed starts only
# if the previous one's time fits before it; a search cut by the deadline resumes when rerun.
# Afterwards: python seed_table.py --csv seeds.csv STUDY=logs/STUDY.err ...
set -u
here=$(cd "$(dirname "$0")" && pwd)
workload=$1; shift
py=${PYTHON:-python}
deadline=$(date -u -d "${DEADLINE:-$(date -u -d '+2 hours' +%H:%M)}" +%s)
left() { echo $(( deadline - $(date -u +%s) )); }
mkdir -p logs teachers
case $workload in
  user) model=$PWD/user_model.py:build; data=(--dataset digits); train=(--optimizer adamw --epochs 30); trials=12 ;;
  # The tables were run with train's default of that day, 5 epochs (it now trains small sets longer).
  r18digits) model=resnet18; data=(--dataset imagefolder --data-root data/digits-png); train=(--epochs 5); trials=8 ;;
  mnv2digits) model=mobilenet_v2; data=(--dataset digits); train=(--epochs 5); trials=12 ;;
  # The same with train's default now: 36 epochs on digits, where 5 left the teachers at 65-82 %.
  mnv2digits-default) model=mobilenet_v2; data=(--dataset digits); train=(); trials=12 ;;
  r18fm3000) model=resnet18; data=(--dataset imagefolder --data-root data/fmnist-3000); train=(--epochs 5); trials=16 ;;
  *) echo "unknown workload $workload (user, r18digits, mnv2digits, mnv2digits-default, r18fm3000)" >&2; exit 2 ;;
esac
[ -d data/digits-png ] || $py "$here/make_data.py" data
# The user model is the one of tests/search/test_analysis.py, without its fixed seed: each seed's
# teacher starts from weights of its own (train seeds them with --seed).
[ "$workload" != user ] || [ -f user_model.py ] || $py -c "
from tests.search.test_analysis import USER_MODEL
print(USER_MODEL.lstrip().replace('    torch.manual_seed(0)\n', ''), end='')" > user_model.py
estimate=${ESTIMATE:-600}
for s in "$@"; do
  study=$workload-seed$s
  if [ "$(left)" -lt "$estimate" ]; then echo "$(date -u +%T) skip $study: $(left) s left, a seed took ${estimate} s"; break; fi
  t0=$(date -u +%s)
  if [ ! -f teachers/$study.pt ]; then
    echo "$(date -u +%T) $study: train"
    timeout "$(left)" $py -m search.cli train "${data[@]}" --seed "$s" --model "$model" "${train[@]}" \
      --out teachers/$study.pt --no-progress > logs/train-$study.log 2>&1
    echo "$(date -u +%T) train rc=$? $(tail -1 logs/train-$study.log)"
  fi
  [ -f teachers/$study.pt ] || continue
  echo "$(date -u +%T) $study: search"
  timeout "$(left)" $py -m search.cli --model "$model" --weights teachers/$study.pt "${data[@]}" \
    --target size --max-drop 1 --seed "$s" --trials $trials --study $study --json \
    > logs/$study.json 2>> logs/$study.err
  echo "$(date -u +%T) search rc=$?"
  estimate=$(( $(date -u +%s) - t0 + 60 ))
done
