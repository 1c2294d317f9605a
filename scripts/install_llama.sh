#!/usr/bin/env bash
# Installs llama-cpp-python (the bundled model's server) into a virtual environment, built for a portable CPU
# baseline, and smoke-tests it; used by `make setup` and `make setup-rebuild`.
#
#   scripts/install_llama.sh PYTHON install   build (or reuse) the wheel for these build flags and install it
#   scripts/install_llama.sh PYTHON check     `harness smoke`; when the library crashes, rebuild it from source
#                                             without any cache, reinstall and check again
#   scripts/install_llama.sh PYTHON rebuild   rebuild from source without any cache, reinstall, check
#
# The default build runs on any CPU of its architecture: on x86-64 the AVX2/FMA baseline (every x86-64 server
# and desktop CPU since 2013-2015), with AVX-512 and AMX off (a llama.cpp built with GGML_NATIVE=ON on an AVX-512 /
# AMX Xeon crashed with SIGSEGV on its first multi-token prompt, and AMX also needs the kernel to grant tile state,
# which many VMs do not); on ARM64 and Apple Silicon, llama.cpp's normal build. NATIVE=1 builds for this machine's
# CPU instead (GGML_NATIVE=ON): faster on some CPUs, crashes on others; the smoke test tells.
#
# pip caches a wheel it built by package version, not by build flags, so a wheel built natively once would be
# reused for every later install. The wheels are kept instead in a folder keyed by version, flags and
# architecture ($LLAMA_WHEEL_CACHE, default ~/.cache/shadow-harness/llama-wheels), and pip's own cache is never
# used for this package.
set -euo pipefail

PY=${1:?usage: install_llama.sh PYTHON install|check|rebuild}
ACTION=${2:-install}
VERSION=${LLAMA_CPP_VERSION:-0.3.36}
if [ "${NATIVE:-0}" = 1 ]; then
    FLAGS="-DGGML_NATIVE=ON"
else
    case "$(uname -m)" in
        x86_64|amd64)
            FLAGS="-DGGML_NATIVE=OFF -DGGML_SSE42=ON -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
            FLAGS="$FLAGS -DGGML_BMI2=ON -DGGML_AVX512=OFF -DGGML_AVX_VNNI=OFF -DGGML_AMX_TILE=OFF"
            FLAGS="$FLAGS -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF" ;;
        *) FLAGS="" ;;
    esac
fi
KEY=$(printf '%s|%s|%s' "$VERSION" "$FLAGS" "$(uname -m)" | sha256sum | cut -c1-16)
DIR="${LLAMA_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/shadow-harness/llama-wheels}/$VERSION-$KEY"

build() {
    local target="a portable CPU baseline"
    [ "${NATIVE:-0}" = 1 ] && target="this machine's CPU (NATIVE=1)"
    echo "building llama-cpp-python $VERSION for $target: CMAKE_ARGS=\"$FLAGS\" (5-10 minutes on 2 cores)"
    rm -rf "$DIR"
    mkdir -p "$DIR.tmp"
    CMAKE_ARGS="$FLAGS" "$PY" -m pip wheel --quiet --no-deps --no-cache-dir --no-binary llama-cpp-python \
        "llama-cpp-python==$VERSION" -w "$DIR.tmp"
    mv "$DIR.tmp" "$DIR"
}

install() {
    if ! ls "$DIR"/llama_cpp_python-*.whl >/dev/null 2>&1; then
        build
    else
        echo "llama-cpp-python $VERSION: reusing the wheel built with these flags ($DIR)"
    fi
    "$PY" -m pip install --quiet --no-deps --force-reinstall "$DIR"/llama_cpp_python-*.whl
}

check() {  # exit 0: passed; 1: the library crashed (worth a rebuild); 2: another failure
    local out
    if out=$("$(dirname "$PY")/harness" smoke 2>&1); then
        echo "$out"
        return 0
    fi
    echo "$out" >&2
    if echo "$out" | grep -qE "exited with (SIGSEGV|SIGILL|SIGBUS|SIGABRT)"; then
        return 1
    fi
    return 2
}

case "$ACTION" in
    install) install ;;
    check)
        status=0
        check || status=$?
        if [ "$status" = 1 ]; then
            echo "the llama.cpp library crashed on this CPU: rebuilding it from source without any cache" >&2
            build
            "$PY" -m pip install --quiet --no-deps --force-reinstall "$DIR"/llama_cpp_python-*.whl
            check
        elif [ "$status" != 0 ]; then
            exit "$status"
        fi ;;
    rebuild)
        build
        "$PY" -m pip install --quiet --no-deps --force-reinstall "$DIR"/llama_cpp_python-*.whl
        check ;;
    *) echo "unknown action '$ACTION': install, check or rebuild" >&2; exit 2 ;;
esac
