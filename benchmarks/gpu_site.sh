# Sourced by the GPU-machine scripts (gpu_vllm_run.sh, gpu_pytest.sh), from the repo root.
# Installs the carried .gpu/whl/*.whl (ModelOpt's run-time dependencies for python 3.12,
# transformers 5.14.1 among them) into /tmp/mo-site once per machine, gives the carried
# modelopt/ tree its distribution metadata, and unpacks .gpu/base-tree.tgz (another generated
# tree, e.g. pristine 0.47.0) into /tmp/base when BASE=1. Sets SITE (the ModelOpt side's path)
# and BASE_TREE (empty unless BASE=1).
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
if [ ! -d /tmp/mo-site/transformers ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/mo-site .gpu/whl/*.whl \
    > "$OUT/mo-site-install.log" 2>&1 || { echo "mo-site install failed"; tail -5 "$OUT/mo-site-install.log"; }
fi
# modelopt reads its version from the distribution's metadata: give the carried tree one
D=/tmp/mo-site/nvidia_modelopt-0.47.0+moe.1.dist-info
[ -f $D/METADATA ] || { mkdir -p $D && printf 'Metadata-Version: 2.1\nName: nvidia-modelopt\nVersion: 0.47.0+moe.1\n' > $D/METADATA; }
SITE=/tmp/mo-site
BASE_TREE=
if [ "${BASE:-}" = 1 ]; then
  rm -rf /tmp/base && mkdir -p /tmp/base && tar xzf .gpu/base-tree.tgz -C /tmp/base
  SITE=/tmp/base:/tmp/mo-site
  BASE_TREE=/tmp/base
fi
