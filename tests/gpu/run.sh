#!/usr/bin/env bash
# run.sh - the CUDA checks of tpllm on a lent GPU machine (H100/H200), in one call, with
# every log under $OUT. Two modes:
#
#   tests/gpu/run.sh prepare   on the CPU machine (nvcc, NCCL and apt here): builds tpllm
#                              for sm_90 into build-gpu/ and stages what the GPU machine
#                              lacks - the binaries (build-gpu/carry) and Debian's Open MPI,
#                              zmq, Criterion, jansson and microhttpd runtimes (.device-debs).
#                              Both paths are git-ignored; name them in the call's `carry`.
#   tests/gpu/run.sh [run]     on the GPU machine (no package access, no MPI): unpacks the
#                              debs into /opt/ompi, puts the CUDA runtime, cuBLAS and NCCL
#                              of the machine (CUDA toolkit or Python wheels) on
#                              LD_LIBRARY_PATH, uses the carried binaries (or, failing that,
#                              tries to build there), then runs:
#                                1. ctest -L gpu              (test_cuda_* against the CPU ops)
#                                   and test_cuda_ops under compute-sanitizer memcheck
#                                2. an end-to-end smoke test  (synthetic models, greedy
#                                   tokens of --backend cuda vs --backend cpu)
#                                3. tpllm verify              (when the program has it)
#                                4. tpllm bench / bench_*     (when present)
#                              Every check counts: the last line is "N passed, N failed"
#                              and the exit status is 0 only when none failed.
#
# Device call (see /work/shared/device/README.md):
#   run(command="bash tests/gpu/run.sh", carry=[".device-debs", "build-gpu/carry"])
# Files back: $OUT/run.log (everything), $OUT/ctest.log, $OUT/memcheck.log, $OUT/e2e.log,
# $OUT/verify.log, $OUT/bench.log. Set TPLLM_VERIFY_ARGS / TPLLM_BENCH_ARGS to override those steps' flags.
set -u -o pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
MODE=${1:-run}

# ------------------------------------------------------------------ prepare (CPU machine)
if [ "$MODE" = prepare ]; then
    set -e
    cd "$ROOT"
    if [ ! -d .device-debs ] || [ -z "$(ls .device-debs/*.deb 2>/dev/null)" ]; then
        apt-get update -q >/dev/null
        bash /work/shared/device/openmpi-debs.sh .device-debs
    fi
    (cd .device-debs && apt-get download -q libjansson4 libmicrohttpd12 libcurl4 >/dev/null 2>&1) ||
        echo "note: could not fetch libjansson4/libmicrohttpd12 debs (the GPU image may have them)"
    cmake -S "$ROOT" -B "$ROOT/build-gpu" -DTPLLM_CUDA=ON -DTPLLM_CUDA_ARCHS=90 -DCMAKE_BUILD_TYPE=Release >/dev/null
    targets="tpllm"
    for t in $(cd tests/unit && ls test_cuda_*.c 2>/dev/null | sed 's/\.c$//'); do targets="$targets $t"; done
    for t in $(cd tests/perf && ls bench_*cuda*.c 2>/dev/null | sed 's/\.c$//'); do targets="$targets $t"; done
    # shellcheck disable=SC2086 # several targets
    cmake --build "$ROOT/build-gpu" -j2 --target $targets
    rm -rf build-gpu/carry && mkdir -p build-gpu/carry
    for t in $targets; do
        f=$(find build-gpu -path build-gpu/carry -prune -o -type f -name "$t" -perm -u+x -print | head -1)
        [ -n "$f" ] && cp "$f" build-gpu/carry/
    done
    strip --strip-debug build-gpu/carry/* 2>/dev/null || true
    du -sh .device-debs build-gpu/carry
    echo "ready: run(command=\"bash tests/gpu/run.sh\", carry=[\".device-debs\", \"build-gpu/carry\"])"
    exit 0
fi

# ------------------------------------------------------------------ run (GPU machine)
OUT=${OUT:-$ROOT/out/gpu}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/run.log") 2>&1
step() { printf '\n== %s (%s)\n' "$*" "$(date -u +%H:%M:%S)"; }
N_PASS=0 N_FAIL=0 FAILED=""
# check NAME OK(0|1) [detail]: one counted check
check() {
    if [ "$2" = 0 ]; then N_PASS=$((N_PASS + 1)); echo "PASS: $1${3:+ ($3)}"
    else N_FAIL=$((N_FAIL + 1)); FAILED="$FAILED; $1"; echo "FAIL: $1${3:+ ($3)}"; fi
}

step "machine"
uname -a
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 || echo "nvidia-smi failed"
command -v nvcc >/dev/null && nvcc --version | tail -2

step "Open MPI, zmq, Criterion, jansson, microhttpd from the carried debs"
PFX=${TPLLM_DEBS_PREFIX:-/opt/ompi}
if ls "$ROOT"/.device-debs/*.deb >/dev/null 2>&1; then
    mkdir -p "$PFX"
    for f in "$ROOT"/.device-debs/*.deb; do dpkg -x "$f" "$PFX"; done
    export OPAL_PREFIX=$PFX/usr PATH=$PFX/usr/bin:$PATH
    export LD_LIBRARY_PATH=$PFX/usr/lib/x86_64-linux-gnu:$PFX/usr/lib/x86_64-linux-gnu/openmpi/lib:${LD_LIBRARY_PATH:-}
    echo "unpacked $(find "$ROOT"/.device-debs -name '*.deb' | wc -l) debs into $PFX"
else
    echo "no .device-debs carried: MPI-linked binaries may not start"
fi

step "CUDA runtime, cuBLAS and NCCL libraries"
libdirs=$(find / \( -path /proc -o -path /sys -o -path "$PFX" \) -prune -o \
    \( -name 'libnccl.so*' -o -name 'libcublas.so*' -o -name 'libcublasLt.so*' -o -name 'libcudart.so*' \) \
    -print 2>/dev/null | xargs -r -n1 dirname | sort -u)
for d in /usr/local/cuda/lib64 $libdirs; do
    [ -d "$d" ] && case ":${LD_LIBRARY_PATH:-}:" in *":$d:"*) ;; *) LD_LIBRARY_PATH=$d:${LD_LIBRARY_PATH:-} ;; esac
done
export LD_LIBRARY_PATH
echo "$libdirs"
NCCL_LIB=$(echo "$libdirs" | while read -r d; do ls "$d"/libnccl.so* >/dev/null 2>&1 && echo "$d"; done | head -1)

step "binaries"
BIN="$ROOT/build-gpu/carry"
BUILD=""
if [ ! -x "$BIN/tpllm" ]; then
    echo "no carried build-gpu/carry: building here (needs the -dev headers of MPI, zmq, jansson, pcre2, criterion)"
    BUILD=/tmp/tpllm-build
    NCCL_ROOT_GUESS=$( [ -n "$NCCL_LIB" ] && dirname "$NCCL_LIB" )
    if cmake -S "$ROOT" -B "$BUILD" -DTPLLM_CUDA=ON -DTPLLM_CUDA_ARCHS=90 -DCMAKE_BUILD_TYPE=Release \
        ${NCCL_ROOT_GUESS:+-DNCCL_ROOT=$NCCL_ROOT_GUESS} >"$OUT/build.log" 2>&1 &&
        cmake --build "$BUILD" -j16 >>"$OUT/build.log" 2>&1; then
        BIN="$BUILD"
    else
        tail -30 "$OUT/build.log"
        echo "build failed: run 'tests/gpu/run.sh prepare' on the CPU machine and carry build-gpu/carry"
        exit 2
    fi
fi
find_bin() { find "$BIN" -type f -name "$1" -perm -u+x 2>/dev/null | head -1; }
TPLLM=$(find_bin tpllm)
for b in $(find "$BIN" -maxdepth 2 -type f -perm -u+x \( -name 'tpllm' -o -name 'test_cuda_*' -o -name 'bench_*' \)); do
    missing=$(ldd "$b" 2>/dev/null | grep 'not found' || true)
    [ -n "$missing" ] && { echo "$(basename "$b") is missing libraries:"; echo "$missing"; }
done
echo "tpllm: ${TPLLM:-absent}"

step "1. ctest -L gpu"
CT="$OUT/ctest"
rm -rf "$CT" && mkdir -p "$CT"
if [ -n "$BUILD" ]; then
    CTDIR="$BUILD"
else
    CTDIR="$CT"
    for t in $(find "$BIN" -maxdepth 2 -type f -perm -u+x -name 'test_cuda_*'); do
        n=$(basename "$t")
        {
            echo "add_test($n \"$t\" \"--jobs\" \"1\")"
            echo "set_tests_properties($n PROPERTIES LABELS gpu SKIP_RETURN_CODE 77 TIMEOUT 180 ENVIRONMENT \"TPLLM_SOURCE_DIR=$ROOT\")"
        } >>"$CT/CTestTestfile.cmake"
    done
fi
(cd "$CTDIR" && ctest -L gpu --output-on-failure)
CTEST_RC=$?
cp "$CTDIR/Testing/Temporary/LastTest.log" "$OUT/ctest.log" 2>/dev/null || true
echo "ctest exit status $CTEST_RC"
check "ctest -L gpu" "$([ "$CTEST_RC" = 0 ] && echo 0 || echo 1)" "exit $CTEST_RC"

step "1b. compute-sanitizer memcheck of the CUDA op tests (out-of-bounds and misaligned accesses)"
SAN=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null | head -1)
OPS=$(find "$BIN" -maxdepth 2 -type f -perm -u+x -name test_cuda_ops | head -1)
if [ -n "$SAN" ] && [ -n "$OPS" ] && [ "${TPLLM_SKIP_SANITIZER:-0}" != 1 ]; then
    timeout 200 "$SAN" --tool memcheck --target-processes all --error-exitcode 99 --print-limit 20 \
        "$OPS" --jobs 1 >"$OUT/memcheck.log" 2>&1
    MC_RC=$?
    echo "memcheck exit status $MC_RC (0: clean; 99: errors; 124: timed out) - $OUT/memcheck.log"
    check "compute-sanitizer memcheck" "$([ "$MC_RC" = 0 ] && echo 0 || echo 1)" "exit $MC_RC"
    grep -E "ERROR SUMMARY|Invalid|out of bounds|misaligned" "$OUT/memcheck.log" | sort | uniq -c | head -20
else
    echo "skipped (no compute-sanitizer, no test_cuda_ops, or TPLLM_SKIP_SANITIZER=1)"
fi

step "2. end to end: synthetic models, greedy tokens and logits cuda vs cpu"
if [ -n "$TPLLM" ]; then
    for ty in f16 q8_0 q4_k q6_k; do
        m=/tmp/tpllm-synth-$ty.gguf
        "$TPLLM" synth --arch llama -o "$m" --type "$ty" --dim 512 --ff 1536 --heads 8 --kv-heads 4 --layers 2 \
            --vocab 2048 --seed 7 >/dev/null || { check "synth $ty" 1; continue; }
        for be in cpu cuda; do
            "$TPLLM" generate -m "$m" --backend "$be" -p "hello world" -n 24 --temp 0 --ignore-eos --show-tokens \
                --dump-logits "/tmp/gen-$ty-$be.logits" >"/tmp/gen-$ty-$be.out" 2>"/tmp/gen-$ty-$be.err"
            echo "$ty $be: exit $?"
        done
        tc=$(grep '^tokens:' /tmp/gen-$ty-cpu.err | tail -1)
        tg=$(grep '^tokens:' /tmp/gen-$ty-cuda.err | tail -1)
        grep -h '^prompt:' /tmp/gen-$ty-cpu.err /tmp/gen-$ty-cuda.err
        if [ -n "$tc" ] && [ "$tc" = "$tg" ]; then check "$ty: greedy tokens cuda = cpu" 0; else
            check "$ty: greedy tokens cuda = cpu" 1 "cpu: $tc | cuda: $tg"
            tail -3 /tmp/gen-$ty-cuda.err
        fi
        # the design's rule: GPU output that drifts from the CPU is a bug, not a tolerance
        if cmp -s /tmp/gen-$ty-cpu.logits /tmp/gen-$ty-cuda.logits; then check "$ty: last-prompt logits cuda = cpu, bit for bit" 0
        else
            d=$(python3 -c "import array,sys; a=array.array('f'); b=array.array('f'); a.frombytes(open(sys.argv[1],'rb').read()); b.frombytes(open(sys.argv[2],'rb').read()); print('max |diff| %.3g' % max(abs(x-y) for x,y in zip(a,b)) if len(a)==len(b) and a else 'missing')" /tmp/gen-$ty-cpu.logits /tmp/gen-$ty-cuda.logits 2>&1)
            check "$ty: last-prompt logits cuda = cpu, bit for bit" 1 "$d"
        fi
    done 2>&1 | tee "$OUT/e2e.log"
    # the loop ran in a pipeline's subshell: count its checks here
    N_PASS=$((N_PASS + $(grep -c '^PASS' "$OUT/e2e.log")))
    N_FAIL=$((N_FAIL + $(grep -c '^FAIL' "$OUT/e2e.log")))
    FAILED="$FAILED$(sed -n 's/^FAIL: \([^(]*\).*/; \1/p' "$OUT/e2e.log" | tr -d '\n')"
else
    check "tpllm binary present" 1
fi

step "3. tpllm verify"
if [ -n "$TPLLM" ] && "$TPLLM" --help 2>/dev/null | grep -qw verify; then
    m=${TPLLM_GEMMA:-$ROOT/models/gemma-3-270m-q4_k_m.gguf}
    [ -f "$m" ] || m=/tmp/tpllm-synth-q4_k.gguf
    # shellcheck disable=SC2086
    "$TPLLM" verify -m "$m" --backend cuda ${TPLLM_VERIFY_ARGS:-} 2>&1 | tee "$OUT/verify.log"
    check "tpllm verify --backend cuda" "$([ "${PIPESTATUS[0]}" = 0 ] && echo 0 || echo 1)"
else
    echo "this tpllm has no verify command yet: skipped"
fi

step "3b. communicator and tensor parallelism on the GPU"
{
    TPLLM_BINARY_DIR="$BUILD" OUT="$OUT" bash "$ROOT/tests/gpu/comm_check.sh"
    echo "comm_check exit $?"
    MPIRUN=$(command -v orterun || command -v mpirun || true)
    if [ -n "$TPLLM" ] && [ -n "$MPIRUN" ]; then
        m=${TPLLM_GEMMA:-$ROOT/models/gemma-3-270m-q4_k_m.gguf}
        [ -f "$m" ] || m=/tmp/tpllm-synth-q4_k.gguf
        # two ranks on one GPU: host-staged collectives (NCCL refuses a shared GPU)
        "$MPIRUN" --allow-run-as-root --oversubscribe -np 2 "$TPLLM" verify -m "$m" --backend cuda >"$OUT/tp-verify.log" 2>&1
        echo "tp=2 verify exit $?"
        tail -6 "$OUT/tp-verify.log"
    fi
} 2>&1 | tee "$OUT/tp.log"
rc=$(sed -n 's/^comm_check exit //p' "$OUT/tp.log"); check "comm_check.sh" "$([ "$rc" = 0 ] && echo 0 || echo 1)" "exit $rc"
rc=$(sed -n 's/^tp=2 verify exit //p' "$OUT/tp.log")
[ -n "$rc" ] && check "tp=2 verify --backend cuda" "$([ "$rc" = 0 ] && echo 0 || echo 1)" "exit $rc"

step "4. benchmarks"
{
    for b in $(find "$BIN" -maxdepth 2 -type f -perm -u+x -name 'bench_cuda_copy'); do "$b"; done
    # batch-1 decode of a Llama-3-8B-shaped model (weights are zeros: the kernels read every
    # byte all the same); GB/s = weight bytes read per token x tokens/s
    if [ -n "$TPLLM" ]; then
        for ty in q4_0 q8_0 f16; do
            f=/tmp/bench8b-$ty.gguf
            [ -f "$f" ] || "$TPLLM" synth --arch llama --dim 4096 --layers 32 --heads 32 --kv-heads 8 --ff 14336 \
                --vocab 128256 --ctx 4096 --type $ty --zeros -o "$f" >/dev/null
            wb=$(stat -c %s "$f")
            "$TPLLM" generate -m "$f" -p "$(printf 'word %.0s' $(seq 1 500))" -n 64 --temp 0 --ignore-eos \
                --backend cuda -c 1024 --max-batch-tokens 512 -q 2>&1 | grep -E '^prompt' | \
                awk -v ty=$ty -v wb=$wb '{print "8B " ty ": " $0; for (i=1;i<=NF;i++) if ($i ~ /tok\/s\)$/) last=$(i-1);
                     gsub(/\(/,"",last); printf "8B %s: decode %.1f tok/s = %.0f GB/s of weights\n", ty, last, last*wb/1e9}'
        done
    fi

    if [ -n "$TPLLM" ] && "$TPLLM" --help 2>/dev/null | grep -qw bench; then
        m=${TPLLM_GEMMA:-$ROOT/models/gemma-3-270m-q4_k_m.gguf}
        [ -f "$m" ] || m=/tmp/tpllm-synth-q4_k.gguf
        # shellcheck disable=SC2086
        "$TPLLM" bench -m "$m" --backend cuda ${TPLLM_BENCH_ARGS:-}
    else
        echo "this tpllm has no bench command yet"
    fi
    for b in $(find "$BIN" -maxdepth 2 -type f -perm -u+x -name 'bench_*cuda*'); do
        echo "-- $(basename "$b")"
        timeout 300 "$b"
    done
} 2>&1 | tee "$OUT/bench.log"

step "done"
[ -n "$FAILED" ] && echo "failed:${FAILED#;}"
echo "$N_PASS passed, $N_FAIL failed"
[ "$N_FAIL" = 0 ]
