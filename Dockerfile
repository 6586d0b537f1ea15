# segbeam's worker image for Dataflow GPU jobs: a custom SDK container.
#
# CUDA and cuDNN come from NVIDIA's base image. Beam's SDK harness (/opt/apache/beam, whose
# `boot` Dataflow starts on each worker) is copied from Beam's own SDK image of the same Beam
# and Python versions as the launcher, and the same Beam is pip-installed: a worker must run the
# SDK that built the job. TensorFlow with GPU support, pydensecrf2 (compiled here) and segbeam
# are installed into one virtual environment on the PATH. Build from the repository root,
# passing the launcher's versions (README, "Running on Dataflow"):
#
#   docker build -t IMAGE \
#     --build-arg BEAM_VERSION="$(python -c 'import apache_beam; print(apache_beam.__version__)')" \
#     --build-arg PYTHON_VERSION="$(python -c 'import sys; print("%d.%d" % sys.version_info[:2])')" .
#
# A CPU-only image of the same code: --build-arg BASE_IMAGE=ubuntu:22.04
# --build-arg TENSORFLOW=tensorflow-cpu --build-arg ONNXRUNTIME=onnxruntime.
# ONNX Runtime serves .onnx models (`--model model.onnx`; the onnx package reads their external
# weight files); its GPU build uses the CUDA provider.

# No default: the image must match the launcher's Beam (`docker build` fails without it).
ARG BEAM_VERSION
ARG PYTHON_VERSION=3.11
ARG BASE_IMAGE=nvidia/cuda:12.5.1-cudnn-runtime-ubuntu22.04

FROM apache/beam_python${PYTHON_VERSION}_sdk:${BEAM_VERSION} AS beam

FROM ${BASE_IMAGE}
ARG BEAM_VERSION
ARG PYTHON_VERSION
ARG TENSORFLOW="tensorflow[and-cuda]"
ARG ONNXRUNTIME="onnxruntime-gpu"
ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1

# Python from the deadsnakes archive (Ubuntu 22.04 ships 3.10 only); compilers and headers for
# pydensecrf2, which builds from source. Their apt versions move with the archive: not pinned.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends software-properties-common gpg-agent \
 && add-apt-repository -y ppa:deadsnakes/ppa \
 && apt-get update \
 && apt-get install -y --no-install-recommends \
      "python${PYTHON_VERSION}" "python${PYTHON_VERSION}-venv" "python${PYTHON_VERSION}-dev" \
      build-essential \
 && rm -rf /var/lib/apt/lists/*

RUN "python${PYTHON_VERSION}" -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH VIRTUAL_ENV=/opt/venv

# Beam is pinned to the launcher's; the build tools, TensorFlow and ONNX Runtime take the newest
# release.
# hadolint ignore=DL3013
RUN pip install --upgrade pip setuptools wheel \
 && pip install "apache-beam[gcp]==${BEAM_VERSION}" "${TENSORFLOW}" "${ONNXRUNTIME}" onnx

WORKDIR /opt/segbeam
COPY setup.py README.md ./
COPY core ./core
COPY pipeline ./pipeline
COPY transforms ./transforms
COPY models ./models
RUN pip install . "apache-beam[gcp]==${BEAM_VERSION}" \
 && python -c "import apache_beam, keras, pydensecrf.densecrf, segbeam.pipeline.graph; \
assert apache_beam.__version__ == '${BEAM_VERSION}', apache_beam.__version__"

COPY --from=beam /opt/apache/beam /opt/apache/beam
WORKDIR /
ENTRYPOINT ["/opt/apache/beam/boot"]
