#!/usr/bin/env bash
# mpirun.sh - run mpirun with the flags tpllm's multi-rank tests need on one host or a container.
#
# usage: tests/mpi/mpirun.sh -np N cmd args...
#
# With Open MPI it adds:
#   --oversubscribe          more ranks than cores (CI machines have 2)
#   --bind-to none           no per-core binding: oversubscribed ranks must float, and a rank's
#                            thread pool may use every CPU it is given (comm topo divides them)
#   --mca btl self,vader     shared memory + self only ("sm" on Open MPI 5): no TCP, no warnings
#                            about InfiniBand/OFI devices a container does not have
#   --mca btl_vader_single_copy_mechanism none
#                            no CMA (process_vm_readv): it fails in containers without
#                            CAP_SYS_PTRACE or with Yama ptrace_scope > 0; costs one extra copy
#                            for messages above the eager limit
#   --allow-run-as-root      only when running as root (id -u = 0), plus the OMPI_ALLOW_RUN_AS_ROOT
#                            environment variables for mpiruns that read those instead
# Extra flags come from TPLLM_MPIRUN_FLAGS (word-split), e.g. TPLLM_MPIRUN_FLAGS="--mca btl self,tcp".
# Set TPLLM_MPI_CMA=1 to keep CMA where it works (faster large messages).
# Other MPIs (MPICH, Intel MPI) get only the arguments given. Exits 77 (skip) without mpirun.
set -u
if ! command -v mpirun >/dev/null 2>&1; then
    echo "mpirun.sh: mpirun not found: install Open MPI (apt-get install openmpi-bin libopenmpi-dev)" >&2
    exit 77
fi
flags=()
version=$(mpirun --version 2>&1 | head -n 1)
case "$version" in
*"Open MPI"* | *OpenRTE*)
    major=$(printf '%s\n' "$version" | sed -n 's/.* \([0-9][0-9]*\)\.[0-9][0-9]*.*/\1/p')
    flags+=(--oversubscribe --bind-to none)
    if [ "${major:-4}" -ge 5 ]; then
        flags+=(--mca btl self,sm)
        [ "${TPLLM_MPI_CMA:-0}" = 1 ] || flags+=(--mca smsc ^cma)
    else
        flags+=(--mca btl self,vader)
        [ "${TPLLM_MPI_CMA:-0}" = 1 ] || flags+=(--mca btl_vader_single_copy_mechanism none)
    fi
    if [ "$(id -u)" = 0 ]; then
        flags+=(--allow-run-as-root)
        export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
    fi
    ;;
esac
# shellcheck disable=SC2206 # word splitting of the extra flags is intended
[ -n "${TPLLM_MPIRUN_FLAGS:-}" ] && flags+=(${TPLLM_MPIRUN_FLAGS})
exec mpirun "${flags[@]}" "$@"
