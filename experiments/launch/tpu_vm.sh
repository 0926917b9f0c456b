#!/bin/bash
# One jxr run on a Cloud TPU VM slice (e.g. v5litepod-16: 4 hosts x 4 chips).
# Every host runs the same command; jax.distributed.initialize() discovers the
# slice from the TPU metadata (JXR_DISTRIBUTED=1 asks jxr to call it), and
# attention runs through pallas_kernels' splash path on TPU.
#
#   TPU=my-slice ZONE=us-west4-a experiments/launch/tpu_vm.sh --attn local --window 16 --out /mnt/shared/runs/tpu-local16
#
# --out must be on storage every host sees (a Filestore/NFS mount, or gcsfuse):
# checkpoints are written collectively; only process 0 writes the reports.
#
# Preemption (spot / preemptible slices, maintenance events): the VM gets SIGTERM
# first; every host finishes its step, saves a checkpoint and exits 143 (the pod
# preset also checkpoints every 2 minutes, so a hard stop loses at most that).
# When the slice is back (or recreated with the same --out), run this script again
# with the same flags plus --resume: training continues from the newest complete
# checkpoint with no lost or repeated step, and finished stages are not redone.
set -euo pipefail
: "${TPU:?set TPU to the TPU VM name}" "${ZONE:?set ZONE to its zone}"
REPO="${REPO:-jxr}"

# Once: install jxr on every host (TPU jax wheels) and fetch LAReQA.
gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" --worker=all --command "
  cd $REPO && python3 -m venv .venv && . .venv/bin/activate &&
  pip install -q -e . 'jax[tpu]' -f https://storage.googleapis.com/jax-releases/libtpu_releases.html &&
  python -c 'import jxr.data as d; d.load_lareqa(\"xquad-r\"); d.load_lareqa(\"mlqa-r\")'"

# The run (same flags on every host; add --resume after a preemption, see above).
gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" --worker=all --command "
  cd $REPO && . .venv/bin/activate && JXR_DISTRIBUTED=1 JXR_QUIET=1 python -m experiments.run --preset pod $*"
