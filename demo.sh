#!/usr/bin/env bash
# The first ten minutes on a CPU: render a synthetic MOT17, convert it, train, print val metrics.
# Usage: bash demo.sh [WORKDIR]   (an existing WORKDIR resumes; a finished one is only evaluated)
set -euo pipefail
cd "$(dirname "$0")"
export TF_CPP_MIN_LOG_LEVEL=3 TF_ENABLE_ONEDNN_OPTS=0
workdir="${1:-runs/synthetic}"
python=${PYTHON:-python}

stamp() { date +%s; }
t0=$(stamp)
if [ ! -d data/SYNTH17/train ]; then
  "$python" synthetic_mot.py --output_dir=data/SYNTH17 --seed=0
fi
t1=$(stamp)
if [ ! -d data/SYNTH17/reid/meta ]; then
  "$python" convert_mot17.py --input_dir=data/SYNTH17 --val_split=0.2 --vis_threshold=0.3
fi
t2=$(stamp)
"$python" train.py --config=configs/synthetic.py --workdir="$workdir" --alsologtostderr
t3=$(stamp)
echo "render $((t1 - t0)) s, convert $((t2 - t1)) s, train+eval $((t3 - t2)) s"
