#!/usr/bin/env bash
# Runs the fuzz targets in fuzz/ (cargo-fuzz, libFuzzer, AddressSanitizer) for a bounded time
# each: docs/SECURITY.md, "Fuzzing".
#
#   scripts/fuzz.sh [--smoke] [SECONDS_PER_TARGET] [TARGET...]   (default: 60 s, every target)
#   scripts/fuzz.sh --report        the executions so far per target, as a markdown table
#
# The default build is cargo-fuzz's: release with AddressSanitizer, the speed that reaches
# millions of runs (a cold build is about 15 minutes on 2 cores). `--smoke` (what `make test`
# runs) builds without a sanitizer in the dev profile, with overflow checks and debug
# assertions, in about half the time: coverage-guided all the same, and Rust's own checks are
# the ones these parsers need (none of them has unsafe code of its own).
#
# Each target's corpus grows in $CORDON_FUZZ_DIR/corpus/<target> (default
# ~/.cache/cordon/fuzz, kept across runs and clones) on top of the committed seeds in
# fuzz/seeds/<target>. A crash stops the run and names the input that caused it and the
# command that replays it. Every run appends one line per target to $CORDON_FUZZ_DIR/ledger.tsv
# (date, target, seconds, executions, result), which docs/SECURITY.md's table is made from.
#
# As root, every target runs in a private mount namespace in which every filesystem is
# read-only except a scratch tmpfs (the targets' temporary directories) and the corpus: a
# parser that wrote anywhere else (the OCI unpacker, which runs as root in production) fails
# with EROFS, which the harness reports as a finding, and cannot damage this machine.
#
# The stable toolchain builds the sanitizer flags with RUSTC_BOOTSTRAP=1 (as cargo-fuzz
# needs nightly-only -Z flags); nothing else in the build uses it.
set -euo pipefail

cd "$(dirname "$0")/.."
fuzz_dir="${CORDON_FUZZ_DIR:-$HOME/.cache/cordon/fuzz}"
ledger="$fuzz_dir/ledger.tsv"

# `--report`: the ledger's totals per target as the markdown table docs/SECURITY.md carries.
if [[ "${1:-}" == --report ]]; then
    [[ -f "$ledger" ]] || { echo "fuzz: no runs recorded yet ($ledger)" >&2; exit 1; }
    echo "| target | executions | seconds | runs | failed runs |"
    echo "|---|---:|---:|---:|---:|"
    awk -F'\t' 'NR > 1 { runs[$2] += $4; secs[$2] += $3; n[$2]++; if ($5 != "ok") bad[$2]++ }
        END { for (t in runs) printf "| `%s` | %d | %d | %d | %d |\n", t, runs[t], secs[t], n[t], bad[t] }' \
        "$ledger" | sort
    exit 0
fi

mode=full
if [[ "${1:-}" == --smoke ]]; then
    mode=smoke
    shift
fi
seconds="${1:-60}"
shift || true
target_dir="${CORDON_FUZZ_TARGET_DIR:-$HOME/.cache/cordon/target-fuzz}"
build_flags=()
profile=release
if [[ $mode == smoke ]]; then
    target_dir="$target_dir-smoke"
    build_flags=(--dev --sanitizer none)
    profile=debug
    # Built once per change and never edited in place: incremental state would only fill the disk.
    export CARGO_INCREMENTAL=0
fi
all_targets=(client_hello relay_head connect_head authority sse webhook dns_query secrets_file tools_file oci_unpack)
targets=("$@")
((${#targets[@]} > 0)) || targets=("${all_targets[@]}")

if ! [[ "$seconds" =~ ^[0-9]+$ ]] || ((seconds == 0)); then
    echo "fuzz: SECONDS_PER_TARGET must be a positive whole number, not '$seconds'" >&2
    exit 2
fi
for t in "${targets[@]}"; do
    if [[ ! -f "fuzz/fuzz_targets/$t.rs" ]]; then
        echo "fuzz: no target '$t'; the targets are: ${all_targets[*]}" >&2
        exit 2
    fi
done
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: cargo-fuzz is missing; scripts/install-deps.sh installs it (make deps)" >&2
    exit 1
fi

mkdir -p "$fuzz_dir"
# All targets at once: they share one build of the crates.
if ! RUSTC_BOOTSTRAP=1 cargo fuzz build "${build_flags[@]}" --target-dir "$target_dir" \
    >"$fuzz_dir/build.log" 2>&1; then
    grep -v '^\s*Compiling ' "$fuzz_dir/build.log" | tail -30 >&2
    echo "fuzz: the build failed (log $fuzz_dir/build.log)" >&2
    exit 1
fi
bin_dir="$target_dir/x86_64-unknown-linux-gnu/$profile"

[[ -f "$ledger" ]] || printf 'date\ttarget\tseconds\texecutions\tresult\tbuild\n' >"$ledger"

# Runs "$@" with every filesystem read-only but the fuzz directory and a scratch tmpfs.
confined() {
    if [[ $(id -u) -ne 0 ]]; then
        "$@"
        return
    fi
    unshare --mount --propagation private -- bash -c '
        set -e
        fuzz_dir="$1"; shift
        scratch="$fuzz_dir/scratch"
        mkdir -p "$scratch"
        mount --bind "$fuzz_dir" "$fuzz_dir"
        mount -t tmpfs -o size=1g,mode=1777 cordon-fuzz-scratch "$scratch"
        # Every other mount point (deepest last does not matter: remount is per mount).
        while read -r _ _ _ _ point _; do
            case "$point" in
                "$fuzz_dir" | "$scratch" | /proc | /proc/* | /sys | /sys/* | /dev | /dev/*) continue ;;
            esac
            mount -o remount,bind,ro "$point" 2>/dev/null || true
        done </proc/self/mountinfo
        if touch /.cordon-fuzz-write-check 2>/dev/null; then
            rm -f /.cordon-fuzz-write-check
            echo "fuzz: could not make / read-only in the fuzzing namespace" >&2
            exit 1
        fi
        TMPDIR="$scratch" exec "$@"
    ' confined "$fuzz_dir" "$@"
}

failed=()
printf '%-14s %8s %14s %12s\n' target seconds executions "exec/s"
for t in "${targets[@]}"; do
    corpus="$fuzz_dir/corpus/$t"
    artifacts="$fuzz_dir/artifacts/$t/"
    mkdir -p "$corpus" "$artifacts"
    # Written under a name of this run's own (a smoke run beside a long campaign must not
    # write into the same file), then kept as the target's latest log.
    running="$fuzz_dir/$t-$mode-$$.log"
    log="$fuzz_dir/$t-$mode.log"
    result=ok
    # -timeout: an input that takes more than 10 s is a finding (a hang), as is one that needs
    # more than libFuzzer's default 2 GiB.
    if ! confined "$bin_dir/$t" "$corpus" "fuzz/seeds/$t" -max_total_time="$seconds" \
        -timeout=10 -print_final_stats=1 -artifact_prefix="$artifacts" >"$running" 2>&1; then
        result=crash
        failed+=("$t")
    fi
    mv -f "$running" "$log"
    runs=$(grep -ao 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -n 1 || true)
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$(date -u +%FT%TZ)" "$t" "$seconds" "${runs:-0}" "$result" "$mode" >>"$ledger"
    printf '%-14s %8s %14s %12s %s\n' "$t" "$seconds" "${runs:-0}" "$(( ${runs:-0} / seconds ))" "$result"
    if [[ $result != ok ]]; then
        grep -aE 'panicked|ERROR: (libFuzzer|AddressSanitizer)|Test unit written|SUMMARY' "$log" | head -8 >&2 || true
        input=$(grep -ao "Test unit written to [^ ]*" "$log" | tail -1 | cut -d' ' -f5 || true)
        echo "fuzz: $t failed (log $log); replay: $bin_dir/$t ${input:-<input>}" >&2
    fi
done

# Totals across every run on this machine, per target.
echo
echo "executions so far (all runs in $ledger):"
awk -F'\t' 'NR > 1 { runs[$2] += $4; secs[$2] += $3; if ($5 != "ok") bad[$2]++ }
    END { for (t in runs) printf "  %-14s %14d executions in %7d s, %d failed runs\n", t, runs[t], secs[t], bad[t] }' \
    "$ledger" | sort

if ((${#failed[@]} > 0)); then
    echo "fuzz: findings in: ${failed[*]}" >&2
    exit 1
fi
