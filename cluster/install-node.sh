#!/usr/bin/env bash
# install-node.sh - make a Debian/Ubuntu node ready to run tpllm ranks: the Debian packages
# the build needs (the top-level Makefile's APT_PKGS, read from it: one list for both) and
# the build itself. Idempotent: installs only packages that are missing, and re-running the
# build rebuilds only what changed. Every node needs the packages (Open MPI's runtime at
# least) and the binary at the same path: build on each node into the same local path, or
# once on a shared file system, e.g.
#   cluster/install-node.sh                                        # this node
#   pdsh -w node[1-4] 'cd /opt/tpllm && cluster/install-node.sh'   # each node, local checkouts
#   srun --nodes=4 --ntasks-per-node=1 cluster/install-node.sh --no-build   # packages only, every
#                                                                  # node (then build once, shared)
#
# usage: cluster/install-node.sh [--build-dir DIR] [--cuda auto|on|off] [--jobs N] [--no-build] [--dry-run]
#   --build-dir DIR  build directory, relative to the checkout (default build)
#   --cuda MODE      TPLLM_CUDA: auto (default: the CUDA backend when nvcc and NCCL are found),
#                    on (fail without them) or off
#   --jobs N         parallel compile jobs (default: the number of CPUs)
#   --no-build       packages only
#   --dry-run        print what would be done, change nothing
# The CUDA toolkit and NCCL are not installed here (their versions belong to the site's driver):
# install them from NVIDIA's repositories first (cuda-toolkit, libnccl2, libnccl-dev) for GPU nodes.
# Exit status: 0 ready; 1 a step failed (the message says which).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
build_dir=build cuda=auto jobs=$(nproc 2>/dev/null || echo 2) do_build=1 dry=0
while [ $# -gt 0 ]; do
    case $1 in
    --build-dir) build_dir=${2:?--build-dir needs a directory}; shift 2 ;;
    --cuda) cuda=${2:?--cuda needs auto, on or off}; shift 2 ;;
    --jobs) jobs=${2:?--jobs needs a number}; shift 2 ;;
    --no-build) do_build=0; shift ;;
    --dry-run) dry=1; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "install-node.sh: unknown option '$1' (see --help)" >&2; exit 1 ;;
    esac
done
case $cuda in auto) cuda=AUTO ;; on) cuda=ON ;; off) cuda=OFF ;; *) echo "install-node.sh: --cuda must be auto, on or off" >&2; exit 1 ;; esac
case $jobs in '' | *[!0-9]*) echo "install-node.sh: --jobs must be a number" >&2; exit 1 ;; esac

say() { echo "install-node.sh: $*"; }
run() {
    if [ "$dry" = 1 ]; then echo "  would run: $*"; else "$@"; fi
}

# the package list: APT_PKGS in the Makefile (with its continuation lines)
pkgs=$(awk '/^APT_PKGS[[:space:]]*:?=/ { on = 1; sub(/^APT_PKGS[[:space:]]*:?=/, "") }
            on { cont = sub(/\\[[:space:]]*$/, ""); printf "%s ", $0; if (!cont) exit }' "$root/Makefile")
pkgs=$(printf '%s\n' "$pkgs" | tr -s ' ' | sed 's/^ //; s/ $//')
[ -n "$pkgs" ] || { echo "install-node.sh: no APT_PKGS in $root/Makefile" >&2; exit 1; }
command -v dpkg >/dev/null 2>&1 || { echo "install-node.sh: this is not a Debian-based system (no dpkg): install the equivalents of: $pkgs" >&2; exit 1; }

missing=""
for p in $pkgs; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
    sudo=""
    if [ "$(id -u)" != 0 ]; then
        command -v sudo >/dev/null 2>&1 || { echo "install-node.sh: missing packages:$missing; run as root or install sudo" >&2; exit 1; }
        sudo=sudo
    fi
    say "installing:$missing"
    # shellcheck disable=SC2086 # $sudo may be empty, $missing is a list
    run $sudo apt-get update -qq
    # shellcheck disable=SC2086
    run $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing
else
    say "packages: all $(echo "$pkgs" | wc -w) present ($pkgs)"
fi

if [ "$do_build" = 1 ]; then
    cd "$root"
    say "building in $root/$build_dir (TPLLM_CUDA=$cuda, $jobs jobs)"
    run cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=Release -DTPLLM_CUDA="$cuda"
    run cmake --build "$build_dir" -j"$jobs" --target tpllm
    if [ "$dry" = 0 ]; then
        "$build_dir/tpllm" --version >/dev/null || { echo "install-node.sh: the build did not produce a working $build_dir/tpllm" >&2; exit 1; }
        say "ready: $root/$build_dir/tpllm ($("$build_dir/tpllm" --version); $(mpirun --version 2>&1 | head -n 1))"
    fi
fi
