#!/usr/bin/env bash
# test_configs.sh - --config FILE and the files under configs/:
#   1. every file under configs/ runs with the commands it is meant for, through the real
#      option parser: device profiles (configs/devices/) with generate, bench, perplexity and
#      verify, serve profiles (configs/serve/) with `tpllm serve` (started, checked, stopped);
#      their values take effect (the serve report's sequences per batch and context);
#   2. the command line wins over the file, a later file over an earlier one;
#   3. bad files fail with exit 2 and a message naming the file, the line and the option:
#      an unknown option (with a suggestion), a bad value (the parser's message, then the
#      line), a serve option in a file given to generate, syntax errors;
#   4. every option in each command's --help can be set from a file (none is "unknown").
# A mismatch fails (exit 1); without mpirun the test is skipped (77).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
bin=${TPLLM_BIN:-$root/build/tpllm}
command -v mpirun >/dev/null 2>&1 || { echo "skipped: no mpirun (install Open MPI)"; exit 77; }
work=$(mktemp -d)
srv_pid=""
# shellcheck disable=SC2317 # run by the trap
cleanup() {
    [ -n "$srv_pid" ] && kill -KILL "$srv_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT
cd "$root" || exit 1

fail=0
bad() { echo "FAIL: $*"; fail=1; }
model=$work/synth.gguf
"$bin" synth --arch llama --dim 256 --layers 2 --heads 4 --kv-heads 2 --ff 512 --vocab 1003 --type q8_0 --seed 2 \
    -o "$model" >/dev/null || { echo "FAIL: synth"; exit 1; }
for _ in $(seq 1 40); do echo "The quick brown fox jumps over the lazy dog near the river bank."; done >"$work/text.txt"

# run NAME CMD...: one rank, output in $work/NAME.{out,log}; returns the status
run() {
    local name=$1
    shift
    timeout 300 "$here/mpirun.sh" -np 1 "$@" </dev/null >"$work/$name.out" 2>"$work/$name.log"
}
# expect_fail NAME PATTERN CMD...: exit 2 (bad arguments) and PATTERN (grep -E) in stderr
expect_fail() {
    local name=$1 pat=$2
    shift 2
    timeout 60 "$@" </dev/null >"$work/$name.out" 2>"$work/$name.log"
    local rc=$?
    if [ "$rc" != 2 ] || ! grep -Eq -- "$pat" "$work/$name.log"; then
        bad "$name: expected exit 2 and /$pat/, got exit $rc:"
        sed 's/^/    /' "$work/$name.log"
    else
        echo "$name: exit 2: $(grep -E -- "$pat" "$work/$name.log" | head -n 1)"
    fi
}
# the value of KEY in config FILE (last setting)
conf_get() { sed -n "s/^[[:space:]]*$2[[:space:]]*=[[:space:]]*\([^#[:space:]]*\).*/\1/p" "$1" | tail -n 1; }

# serve_check NAME EXPECT_SEQS EXPECT_CTX ARGS...: start serve, read its report, stop it
serve_check() {
    local name=$1 seqs=$2 ctx=$3
    shift 3
    "$here/mpirun.sh" -np 1 "$bin" serve -m "$model" --port 0 --threads 1 "$@" </dev/null >"$work/$name.out" 2>"$work/$name.log" &
    srv_pid=$!
    local line="" pid
    for _ in $(seq 1 600); do
        line=$(grep -m 1 'serving http://' "$work/$name.log" || true)
        [ -n "$line" ] && break
        kill -0 "$srv_pid" 2>/dev/null || break
        sleep 0.1
    done
    if [ -z "$line" ]; then
        bad "$name: tpllm serve $* did not start:"
        sed 's/^/    /' "$work/$name.log" | grep -v '^    loading' | tail -n 20
        kill -KILL "$srv_pid" 2>/dev/null
        wait "$srv_pid" 2>/dev/null
        srv_pid=""
        return
    fi
    pid=$(printf '%s' "$line" | sed -n 's/.*pid \([0-9]*\).*/\1/p')
    local got_seqs got_ctx
    got_seqs=$(printf '%s' "$line" | sed -n 's/.*, \([0-9]*\) sequences per batch.*/\1/p')
    got_ctx=$(sed -n 's/.*, ctx \([0-9]*\),.*/\1/p' "$work/$name.log" | head -n 1)
    kill -TERM "$pid" 2>/dev/null
    local rc=0
    for _ in $(seq 1 300); do kill -0 "$srv_pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$srv_pid" 2>/dev/null; then
        bad "$name: serve did not stop within 30 s of SIGTERM"
        kill -KILL "$srv_pid" 2>/dev/null
    fi
    wait "$srv_pid"
    rc=$?
    srv_pid=""
    [ "$rc" = 0 ] || bad "$name: serve exited $rc after SIGTERM"
    if [ "$got_seqs" != "$seqs" ] || [ "$got_ctx" != "$ctx" ]; then
        bad "$name: expected $seqs sequences per batch and ctx $ctx, the report says $got_seqs and $got_ctx: $line"
    else
        echo "$name: serve $*: $got_seqs sequences per batch, ctx $got_ctx, stopped by SIGTERM (status $rc)"
    fi
}

model_ctx=2048 # synth's training context: ctx beyond it is cut to it

# 1. every file under configs/, with the commands it is meant for
n_files=0
while IFS= read -r f; do
    n_files=$((n_files + 1))
    case $f in
    configs/devices/*)
        name=$(basename "$f" .conf)
        if run "dev-$name-generate" "$bin" generate -m "$model" -p "The capital of France is" -n 4 --threads 1 --temp 0 --config "$f"; then
            echo "$f: generate ran ($(grep -c . "$work/dev-$name-generate.out") line(s) of text)"
        else
            bad "$f with generate:"; grep -v '^loading' "$work/dev-$name-generate.log" | tail -n 10
        fi
        run "dev-$name-verify" "$bin" verify -m "$model" -n 2 --threads 1 --config "$f" ||
            { bad "$f with verify:"; tail -n 10 "$work/dev-$name-verify.log"; }
        run "dev-$name-bench" "$bin" bench -m "$model" -p 16 -n 4 -b 1 -r 1 --threads 1 --config "$f" ||
            { bad "$f with bench:"; tail -n 10 "$work/dev-$name-bench.log"; }
        run "dev-$name-ppl" "$bin" perplexity -m "$model" -f "$work/text.txt" --ctx 64 --chunks 2 --threads 1 --config "$f" ||
            { bad "$f with perplexity:"; tail -n 10 "$work/dev-$name-ppl.log"; }
        echo "$f: verify, bench and perplexity ran"
        ;;
    configs/serve/*)
        name=$(basename "$f" .conf)
        seqs=$(conf_get "$f" max-seqs)
        ctx=$(conf_get "$f" ctx)
        [ -n "$seqs" ] || seqs=8
        [ -n "$ctx" ] || ctx=2048
        [ "$ctx" -gt "$model_ctx" ] && ctx=$model_ctx
        serve_check "serve-$name" "$seqs" "$ctx" --config "$f"
        ;;
    *)
        bad "$f: no command known for files in $(dirname "$f")/ (teach tests/mpi/test_configs.sh which command it is for)"
        ;;
    esac
done < <(find configs -name '*.conf' | sort)
[ "$n_files" -ge 5 ] || bad "only $n_files config files under configs/"

# 2. the command line wins; a later file wins over an earlier one
serve_check "serve-cmdline-wins" 3 1024 --config configs/serve/low-latency.conf --max-seqs 3 --ctx 1024
printf 'max-seqs = 5\nctx = 512\n' >"$work/a.conf"
printf 'max-seqs = 6\n' >"$work/b.conf"
serve_check "serve-later-file-wins" 6 512 --config "$work/a.conf" --config "$work/b.conf"
printf 'device-mem = 1MiB\n' >"$work/tiny.conf"
if run tiny "$bin" generate -m "$model" -p hi -n 1 --threads 1 --config "$work/tiny.conf"; then
    bad "device-mem = 1MiB from a file did not take effect (the job ran)"
elif grep -q 'does not fit' "$work/tiny.log"; then
    echo "device-mem = 1MiB from a file: refused as it should be ($(grep -o 'the model does not fit' "$work/tiny.log" | head -n 1))"
else
    bad "device-mem = 1MiB from a file: unexpected failure:"; tail -n 5 "$work/tiny.log"
fi
if run tiny-wins "$bin" generate -m "$model" -p hi -n 1 --threads 1 --config "$work/tiny.conf" --device-mem 1GiB; then
    echo "device-mem = 1MiB in the file, --device-mem 1GiB on the command line: the job ran"
else
    bad "the command line's --device-mem did not win over the file's:"; tail -n 5 "$work/tiny-wins.log"
fi
printf 'seed = 5\ntemp = 1.0\nshow-tokens = true\n' >"$work/seed.conf"
run seed5 "$bin" generate -m "$model" -p hi -n 8 --threads 1 --config "$work/seed.conf"
run seed5b "$bin" generate -m "$model" -p hi -n 8 --threads 1 --temp 1.0 --seed 5 --show-tokens
run seed6 "$bin" generate -m "$model" -p hi -n 8 --threads 1 --config "$work/seed.conf" --seed 6
t5=$(grep '^tokens:' "$work/seed5.log") t5b=$(grep '^tokens:' "$work/seed5b.log") t6=$(grep '^tokens:' "$work/seed6.log")
if [ -z "$t5" ] || [ "$t5" != "$t5b" ] || [ "$t5" = "$t6" ]; then
    bad "sampling options from a file: seed 5 from the file '$t5', from the command line '$t5b', file + --seed 6 '$t6'"
else
    echo "seed = 5 from a file gives the tokens of --seed 5 ($t5); --seed 6 on the command line wins ($t6)"
fi

# 3. bad files
printf '# a serve profile with a typo\nctx = 256\nmax-sequences = 3\n' >"$work/typo.conf"
expect_fail unknown "^$work/typo.conf:3: unknown option 'max-sequences' for 'tpllm serve'; did you mean 'max-seqs'" \
    "$bin" serve -m "$model" --config "$work/typo.conf"
printf 'ctx = 256\n\nmax-seqs = 0\n' >"$work/range.conf"
expect_fail range-value "^$work/range.conf:3: that is this line of the config file: max-seqs = 0" \
    "$bin" serve -m "$model" --config "$work/range.conf"
grep -q "max-seqs expects an integer in \[1, 1024\], got '0'" "$work/range-value.log" ||
    bad "range-value: the parser's own message is missing"
printf 'mem-fraction = 1.5\n' >"$work/frac.conf"
expect_fail frac-value "^$work/frac.conf:1: that is this line of the config file: mem-fraction = 1.5" \
    "$bin" generate -m "$model" -p hi --config "$work/frac.conf"
line=$(grep -n '^max-seqs' configs/serve/low-latency.conf | head -n 1 | cut -d: -f1)
expect_fail serve-opt-in-generate "^configs/serve/low-latency.conf:$line: 'max-seqs' is an option of 'tpllm serve', not of 'tpllm generate'" \
    "$bin" generate -m "$model" -p hi --config configs/serve/low-latency.conf
printf 'ctx 256\n' >"$work/syntax.conf"
expect_fail syntax "^$work/syntax.conf:1: expected 'option = value', got 'ctx 256'" \
    "$bin" generate -m "$model" -p hi --config "$work/syntax.conf"
printf '\n--ctx = 256\n' >"$work/dashes.conf"
expect_fail dashes "^$work/dashes.conf:2: write option names without their dashes: 'ctx', not '--ctx'" \
    "$bin" generate -m "$model" -p hi --config "$work/dashes.conf"
printf 'ignore-eos = maybe\n' >"$work/switch.conf"
expect_fail switch "^$work/switch.conf:1: 'ignore-eos' is a switch: its value is true or false, got 'maybe'" \
    "$bin" generate -m "$model" -p hi --config "$work/switch.conf"
printf 'system = "unterminated\n' >"$work/quote.conf"
expect_fail quote "^$work/quote.conf:1: the value of 'system' has no closing" \
    "$bin" generate -m "$model" -p hi --config "$work/quote.conf"
expect_fail missing "--config $work/nonexistent.conf: cannot read it" \
    "$bin" generate -m "$model" -p hi --config "$work/nonexistent.conf"

# 4. every option of every command's --help can come from a file
for cmd in generate serve bench perplexity verify; do
    n=0
    while read -r key kind; do
        case $key in model | help | config) continue ;; esac
        if [ "$kind" = switch ]; then val=true; else val=1; fi
        printf '%s = %s\n' "$key" "$val" >"$work/opt.conf"
        "$bin" "$cmd" --config "$work/opt.conf" </dev/null >/dev/null 2>"$work/opt.log"
        rc=$?
        if grep -Eq "opt.conf:1: (unknown option|'$key' is an option of|'$key' is a switch|'$key' needs a value)" "$work/opt.log" ||
            [ "$rc" != 2 ]; then
            bad "tpllm $cmd: '$key = $val' in a config file (exit $rc): $(head -n 2 "$work/opt.log")"
        fi
        n=$((n + 1))
    done < <("$bin" "$cmd" --help | awk '
        /^  -/ {
            line = $0; sub(/^  /, "", line)
            split(line, w, /  +/)            # the option column, then the description
            nopts = split(w[1], opts, /, /)  # "-p, --prompt TEXT" or "--json, --csv"
            for (i = 1; i <= nopts; i++) {
                o = opts[i]; meta = o; sub(/ .*/, "", o)
                kind = (meta ~ / [A-Z]/) ? "value" : "switch"
                if (o ~ /^--/) { sub(/^--/, "", o); print o, kind }
                else if (nopts == 1) { sub(/^-/, "", o); print o, kind }  # a short option with no long form
            }
        }')
    [ "$n" -ge 3 ] || bad "tpllm $cmd --help: found only $n options to try"
    echo "tpllm $cmd: all $n options of --help accepted in a config file"
done

[ "$fail" = 0 ] && echo "configs: all checks passed" || echo "FAILED: see the FAIL lines above"
exit $fail
