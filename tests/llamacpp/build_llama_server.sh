#!/usr/bin/env bash
# Build llama.cpp's llama-server on CPU for the end-to-end tests in tests/llamacpp/.
#
# The sources are the llama.cpp tree vendored in the llama-cpp-python sdist (vendor/llama.cpp),
# fetched with `pip download --no-binary :all: --no-deps`, so the build needs nothing but a
# package registry. The version is pinned so that CI builds the same server every time.
#
# Idempotent: when the binary for the pinned version is already in the cache it only says so.
# Output: <cache>/<version>/llama-server, where <cache> is $TOKENERGY_LLAMA_CACHE or
# .cache/llama-server at the repository root (gitignored). The tests find it there, or wherever
# $TOKENERGY_LLAMA_SERVER points.
#
# Environment: LLAMA_CPP_PYTHON_VERSION (default: llama-cpp-python.version), TOKENERGY_LLAMA_CACHE,
# LLAMA_BUILD_JOBS (default: number of CPUs). Takes about 6 minutes on 2 cores.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
# The pinned version lives in one file that the tests read too.
VERSION="${LLAMA_CPP_PYTHON_VERSION:-$(tr -d '[:space:]' <"$HERE/llama-cpp-python.version")}"
CACHE="${TOKENERGY_LLAMA_CACHE:-$ROOT/.cache/llama-server}"
DEST="$CACHE/$VERSION"
BIN="$DEST/llama-server"
JOBS="${LLAMA_BUILD_JOBS:-$(nproc 2>/dev/null || echo 2)}"
PYTHON="$(command -v python3 || command -v python || true)"
START=$SECONDS

say() { printf '[build-llama-server +%ds] %s\n' "$((SECONDS - START))" "$*"; }
die() { printf '[build-llama-server] ERROR: %s\n' "$*" >&2; exit 1; }

if [[ -x "$BIN" ]] && "$BIN" --version >/dev/null 2>&1; then
    say "llama-server for llama-cpp-python $VERSION already built: $BIN"
    exit 0
fi

# Toolchain: install what is missing when we may (CI runs as root on Debian/Ubuntu).
missing=()
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
command -v g++ >/dev/null 2>&1 || missing+=(g++)
command -v make >/dev/null 2>&1 || missing+=(make)
if ((${#missing[@]})); then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        say "installing ${missing[*]} with apt-get"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq || die "apt-get update failed"
        apt-get install -y -qq "${missing[@]}" >/dev/null || die "apt-get install ${missing[*]} failed"
    else
        die "missing ${missing[*]}; install them (or run as root on Debian/Ubuntu)"
    fi
fi

[[ -n "$PYTHON" ]] || die "no python3 or python on PATH (pip downloads the sources)"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/llama-server-build.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

say "downloading the llama-cpp-python $VERSION sdist"
"$PYTHON" -m pip download --progress-bar off --no-binary :all: --no-deps \
    "llama-cpp-python==$VERSION" -d "$WORK/sdist" \
    || die "pip download of llama-cpp-python==$VERSION failed (registry reachable?)"
SDIST="$(ls "$WORK"/sdist/llama_cpp_python-*.tar.gz 2>/dev/null | head -n1)"
[[ -n "$SDIST" ]] || die "pip download produced no llama_cpp_python-*.tar.gz in $WORK/sdist"

say "extracting vendor/llama.cpp from $(basename "$SDIST")"
tar -xzf "$SDIST" -C "$WORK" --wildcards '*/vendor/llama.cpp/*' \
    || die "could not extract vendor/llama.cpp from $SDIST"
SRC="$(ls -d "$WORK"/llama_cpp_python-*/vendor/llama.cpp 2>/dev/null | head -n1)"
[[ -f "$SRC/CMakeLists.txt" ]] || die "no vendor/llama.cpp/CMakeLists.txt in $SDIST"

say "configuring (cmake, CPU only, static)"
cmake -S "$SRC" -B "$WORK/build" -DCMAKE_BUILD_TYPE=Release \
    -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF -DBUILD_SHARED_LIBS=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF >"$WORK/configure.log" 2>&1 \
    || { tail -n 40 "$WORK/configure.log" >&2; die "cmake configure failed (log above)"; }

say "compiling target llama-server with $JOBS jobs (about 6 minutes on 2 cores)"
# cmake prints one "[ NN%] Building ..." line per object: that is the progress output.
# The full log is kept beside the cache for a post-mortem.
mkdir -p "$CACHE"
LOG="$CACHE/build-$VERSION.log"
status=0
nice cmake --build "$WORK/build" --target llama-server -j "$JOBS" 2>&1 | tee "$LOG" \
    | grep --line-buffered -E '^\[ *[0-9]+%\]' || status=$?
BUILT="$WORK/build/bin/llama-server"
if [[ $status -ne 0 || ! -x "$BUILT" ]]; then
    grep -E -m 20 'error' "$LOG" >&2 || tail -n 40 "$LOG" >&2
    die "compiling llama-server failed (full log: $LOG)"
fi
"$BUILT" --version >/dev/null 2>&1 || die "the built llama-server does not run: $BUILT --version failed"

mkdir -p "$DEST"
# Copy then rename, so a concurrent reader never sees half a binary.
cp "$BUILT" "$BIN.tmp.$$" && mv -f "$BIN.tmp.$$" "$BIN"
say "done: $BIN ($("$BIN" --version 2>&1 | grep -m1 -i version || true))"
