#!/usr/bin/env bash
# Build the dpnbids image from ./Dockerfile with buildah (no Docker engine, no
# registry) and run it: --version, a tiny synthetic cohort, participant and
# group levels, then check the outputs.
#
# Usage: tests/container/build_and_run.sh [--build-only]
#   (root, buildah and debootstrap: apt-get install -y buildah debootstrap)
#
# Environment:
#   IMAGE          image to build (default localhost/dpn-bids:test)
#   BASE_IMAGE     base image (default localhost/dpnbids-base:bookworm, made by make_base.sh)
#   TF_VARIANT     cpu (default here, ~3 GB smaller) or and-cuda (the Dockerfile default)
#   WORK           host folder for the data and outputs (default: a new temp folder)
#   KEEP=1         keep WORK and the working container afterwards
#   RUN_UID        uid:gid the runs use inside (default 4242:4242, any uid must work)
#   NPROCS         processes for the runs (default 2)
#
# Exit status: 0 when everything passed; the failing step is named otherwise.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
IMAGE="${IMAGE:-localhost/dpn-bids:test}"
BASE_IMAGE="${BASE_IMAGE:-localhost/dpnbids-base:bookworm}"
TF_VARIANT="${TF_VARIANT:-cpu}"
RUN_UID="${RUN_UID:-4242:4242}"
NPROCS="${NPROCS:-2}"
BUILD_ONLY=0
[ "${1:-}" = "--build-only" ] && BUILD_ONLY=1

step() { printf '\n=== %s (%s)\n' "$*" "$(date -u +%H:%M:%S)"; }
fail() { printf '\nFAILED: %s\n' "$*" >&2; exit 1; }

command -v buildah >/dev/null || fail "buildah is not installed (apt-get install -y buildah debootstrap)"

step "base image $BASE_IMAGE"
if [ "$BASE_IMAGE" = "localhost/dpnbids-base:bookworm" ]; then
    bash "$here/make_base.sh" "$BASE_IMAGE"
fi

version="$(cd "$repo" && python3 -c 'import re,sys; print(re.search(r"__version__ = \"(.+?)\"", open("dpnbids/__init__.py").read()).group(1))')"
step "build $IMAGE (dpnbids $version, TF_VARIANT=$TF_VARIANT)"
t0=$(date +%s)
# --format docker: keep SHELL (pipefail); --layers: reuse unchanged steps.
# The TemplateFlow server is not reachable from every build host: build without
# MNI152NLin2009cAsym here (MNI152NLin2009aSym is always seeded offline).
buildah bud --isolation chroot --format docker --layers \
    --build-arg BASE_IMAGE="$BASE_IMAGE" \
    --build-arg TF_VARIANT="$TF_VARIANT" \
    --build-arg VERSION="$version" \
    --build-arg IMAGE_TAG="$IMAGE" \
    --build-arg TEMPLATEFLOW_STRICT="${TEMPLATEFLOW_STRICT:-0}" \
    -t "$IMAGE" "$repo" || fail "buildah bud"
build_s=$(( $(date +%s) - t0 ))
size="$(buildah images --format '{{.Size}}' "$IMAGE" | head -1)"
echo "build time: ${build_s} s; image size: ${size}"

ctr="$(buildah from --pull-never "$IMAGE")"
WORK="${WORK:-$(mktemp -d /var/tmp/dpnbids-container.XXXXXX)}"
cleanup() {
    if [ "${KEEP:-0}" = 1 ]; then
        echo "kept: container $ctr, folder $WORK"
        return
    fi
    buildah rm "$ctr" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT
mkdir -p "$WORK/data" "$WORK/out" "$WORK/work" "$WORK/tmp"
chmod 0777 "$WORK/data" "$WORK/out" "$WORK/work" "$WORK/tmp"

# buildah run ignores ENTRYPOINT; call the console script by its absolute path, as
# the image's ENTRYPOINT does, as an arbitrary non-root uid with a private /tmp.
inside() {
    buildah run --isolation chroot --user "$RUN_UID" \
        -v "$WORK/data:/data" -v "$WORK/out:/out" -v "$WORK/work:/work" -v "$WORK/tmp:/tmp" \
        "$ctr" -- "$@"
}

step "dpnbids --version inside"
got="$(inside /opt/venv/bin/dpnbids --version)" || fail "dpnbids --version"
echo "$got"
[ "$got" = "dpnbids $version" ] || fail "--version printed '$got', expected 'dpnbids $version'"

step "image contract"
inside /opt/venv/bin/python - <<'EOF' || fail "image contract check"
import os, pathlib, subprocess, sys
assert os.getuid() != 0, "runs as root"
home = pathlib.Path(os.environ["HOME"])
(home / ".probe").write_text("ok")  # HOME writable by any uid
assert os.environ["DPNBIDS_CONTAINER"], "DPNBIDS_CONTAINER unset"
from dpnbids.templates import get_template
for res in (1, 2):
    for kind in ("T1w", "mask", "GM", "WM", "CSF"):
        p = get_template("MNI152NLin2009aSym", res, kind)
        assert p.is_relative_to("/opt/templateflow") and p.stat().st_size > 0, p
c = pathlib.Path("/opt/templateflow/tpl-MNI152NLin2009cAsym")
have_c = any(f.stat().st_size > 0 for f in c.glob("*_T1w.nii.gz")) if c.is_dir() else False
print("MNI152NLin2009cAsym in the image:", have_c)
assert pathlib.Path("/opt/venv/pip-freeze.txt").is_file()
import tensorflow as tf, keras
print("tensorflow", tf.__version__, "keras", keras.__version__, "GPUs:", tf.config.list_physical_devices("GPU"))
exe = subprocess.run(["bids-validator-deno", "--version"], capture_output=True, text=True)
print("bids-validator-deno:", (exe.stdout or exe.stderr).strip())
print("contract OK")
EOF

if [ "$BUILD_ONLY" = 1 ]; then
    step "done (--build-only)"
    exit 0
fi

step "synthetic cohort inside"
inside /opt/venv/bin/dpnbids-synth /data/bids --space template --seed 0 \
    --n-responders 3 --n-nonresponders 3 \
    || fail "dpnbids-synth (see its --help: the generator's options may have changed)"
[ -f "$WORK/data/bids/dataset_description.json" ] || fail "no synthetic dataset_description.json"
[ -f "$WORK/data/bids/participants.tsv" ] || fail "no synthetic participants.tsv"

common=(--output-resolution 4 --fmriprep-dir /data/bids/derivatives/fmriprep -w /work
        --random-seed 0 --nprocs "$NPROCS" --omp-nthreads 1 --n-components 4 --pca-dim 8)

step "participant level inside"
inside /opt/venv/bin/dpnbids /data/bids /out participant "${common[@]}" \
    || fail "participant level (logs: $WORK/out/logs)"

step "group level inside"
inside /opt/venv/bin/dpnbids /data/bids /out group "${common[@]}" \
    --folds 3 --epochs 2 --patience 1 --n-bootstrap 20 --n-permutations 0 --input-sets ASC \
    || fail "group level (logs: $WORK/out/logs)"

step "check outputs"
python3 - "$WORK/out" "$IMAGE" <<'EOF' || fail "output check"
import json, pathlib, sys
out, image = pathlib.Path(sys.argv[1]), sys.argv[2]
desc = json.loads((out / "dataset_description.json").read_text())
assert desc.get("DatasetType") == "derivative", desc
gen = desc["GeneratedBy"][0]
assert gen["Name"] == "dpnbids", gen
assert gen.get("Container") == {"Type": "docker", "Tag": image}, f"GeneratedBy[0].Container = {gen.get('Container')}"
subjects = sorted(p.name for p in out.glob("sub-*") if p.is_dir())
assert len(subjects) == 6, f"expected 6 subject folders, found {subjects}"
logs = out / "logs"
assert any(logs.rglob("*.toml")), "no config TOML in logs/"
assert any("freeze" in p.name for p in logs.rglob("*")), "no pip freeze in logs/"
group = sorted(str(p.relative_to(out)) for p in out.rglob("*") if "group" in p.parts or p.name.startswith("group"))
assert group, "no group-level outputs"
print(f"{len(subjects)} subjects, {len(group)} group outputs, GeneratedBy.Container = {gen['Container']}")
EOF

step "read-only root: participant level with only /tmp, /out and /work writable"
# docker run --read-only --tmpfs /tmp: buildah has no read-only root, so chroot into a
# read-only bind mount of the container's root with a tmpfs /tmp, in a private mount
# namespace, as a non-root uid, with the image's environment.
mnt="$(buildah mount "$ctr")"
mkdir -p "$mnt/data" "$mnt/out" "$mnt/work" "$WORK/ro_out" "$WORK/ro_work"
chmod 0777 "$WORK/ro_out" "$WORK/ro_work"
buildah inspect --type image --format '{{range .OCIv1.Config.Env}}{{println .}}{{end}}' "$IMAGE" \
    | grep -v '^$' > "$WORK/env.list"
first_sub="$(cd "$WORK/data/bids" && ls -d sub-* | head -1)"
unshare -m bash -euc '
    mnt=$1 work=$2 uid=$3 sub=$4
    root=$(mktemp -d)
    mount --bind "$mnt" "$root"
    mount -o remount,bind,ro "$root"
    mount --bind "$work/data" "$root/data"
    mount --bind "$work/ro_out" "$root/out"
    mount --bind "$work/ro_work" "$root/work"
    mount -t tmpfs -o mode=1777 tmpfs "$root/tmp"
    mount --rbind /dev "$root/dev"
    mount -t proc proc "$root/proc"
    if touch "$root/usr/.probe" 2>/dev/null; then echo "root is writable" >&2; exit 1; fi
    mapfile -t envs < "$work/env.list"
    chroot --userspec="$uid" "$root" /usr/bin/env -i "${envs[@]}" \
        /opt/venv/bin/dpnbids /data/bids /out participant --participant-label "${sub#sub-}" \
        --output-resolution 4 --fmriprep-dir /data/bids/derivatives/fmriprep -w /work \
        --random-seed 0 --nprocs 1 --skip-bids-validation
' _ "$mnt" "$WORK" "$RUN_UID" "$first_sub" || fail "participant level on a read-only root"
buildah umount "$ctr" >/dev/null
ls "$WORK/ro_out/$first_sub/func/"*desc-denoised_bold.nii.gz >/dev/null \
    || fail "no denoised output from the read-only run"

step "all container checks passed (build ${build_s} s, image ${size})"
