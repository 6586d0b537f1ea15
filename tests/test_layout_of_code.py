"""The code's own architecture: layers that import one way, short modules, commands that load no
Keras backend when they need no model, flags that are checked, and a configuration fingerprint
that no setting can slip past."""

import ast
import dataclasses
import gc
import importlib.util
import os
import subprocess
import sys
from typing import Optional

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Folder -> installed package, bottom layer first; each may import only itself and those before.
LAYERS = (("core", "segbeam"), ("models", "segbeam.models"),
          ("transforms", "segbeam.transforms"), ("pipeline", "segbeam.pipeline"))
SEGBEAM = os.path.join(os.path.dirname(sys.executable), "segbeam")


def _modules() -> dict[str, str]:
    """Installed module name -> file, for every module of the four folders."""
    found = {}
    for folder, package in LAYERS:
        for name in sorted(os.listdir(os.path.join(ROOT, folder))):
            if name.endswith(".py"):
                module = package if name == "__init__.py" else f"{package}.{name[:-3]}"
                found[module] = os.path.join(ROOT, folder, name)
    return found


def _layer(module: str) -> Optional[int]:
    """The index in LAYERS of the layer a segbeam module belongs to (None: not segbeam's)."""
    for index in range(len(LAYERS) - 1, -1, -1):
        package = LAYERS[index][1]
        if module == package or module.startswith(package + "."):
            return index
    return None


def _imports(path: str) -> set[str]:
    """Every module a file imports, at the top or inside functions."""
    names = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_every_layer_imports_only_itself_and_the_layers_below():
    wrong = []
    for module, path in _modules().items():
        own = _layer(module)
        for imported in _imports(path):
            if imported.split(".")[0] in ("pipeline", "transforms", "models"):
                wrong.append(f"{module} imports {imported} (use segbeam.*)")
            layer = _layer(imported)
            if layer is not None and layer > own:
                wrong.append(f"{module} imports {imported}")
    assert not wrong, wrong


def test_no_import_cycles_between_modules():
    modules = _modules()
    graph = {module: {name for name in _imports(path) if name in modules and name != module}
             for module, path in modules.items()}
    visiting, done, cycles = set(), set(), []

    def visit(module, trail):
        if module in visiting:
            cycles.append(trail[trail.index(module):] + [module])
            return
        if module in done:
            return
        visiting.add(module)
        for imported in sorted(graph[module]):
            visit(imported, trail + [module])
        visiting.discard(module)
        done.add(module)

    for module in sorted(graph):
        visit(module, [])
    # A package's __init__ importing its own submodules is how packages re-export.
    cycles = [c for c in cycles if not any(a.startswith(b + ".") or b.startswith(a + ".")
                                           for a, b in zip(c, c[1:]))]
    assert not cycles, cycles


def test_no_module_is_over_400_lines():
    long = {module: n for module, path in _modules().items()
            if (n := sum(1 for _ in open(path))) > 400}
    assert not long, long


def test_no_line_is_over_100_columns():
    folders = ("core", "transforms", "pipeline", "models", "tests", "benchmarks")
    paths = [os.path.join(ROOT, folder, name) for folder in folders
             for name in sorted(os.listdir(os.path.join(ROOT, folder))) if name.endswith(".py")]
    long = [f"{os.path.relpath(path, ROOT)}:{number}" for path in paths
            for number, line in enumerate(open(path, encoding="utf-8"), 1)
            if len(line.rstrip("\n")) > 100]
    assert not long, long


def _loaded_backends(argv: list[str]) -> list[str]:
    code = ("import sys\nfrom segbeam.pipeline.cli import main\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'keras', 'tensorflow', 'jax', 'torch'}))")
    result = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("argv", [["report", "--help"], ["models", "--no_counts"],
                                  ["run", "--help"], ["train", "--help"], ["shard", "--help"]])
def test_commands_that_need_no_model_load_no_keras_backend(argv):
    assert _loaded_backends(argv) == "[]"


def _segbeam(args, cwd=None, **variables):
    """Runs the installed command in a user's environment (conftest sets TensorFlow's log
    level for this process; a user who sets it is shown TensorFlow's lines), with
    ``variables`` added to it."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("TF_CPP_MIN_LOG_LEVEL", "SEGBEAM_QUIETED_TF_LOG_LEVEL")}
    return subprocess.run([SEGBEAM, *args], capture_output=True, text=True, timeout=600,
                          cwd=cwd, env={**env, **variables})


@pytest.mark.parametrize("flag, suggestion", [("--inptu", "--input"),
                                               ("--mask", "--masks"),
                                               ("--fail_on_error", "--fail_on_errors"),
                                               ("--direct_num_worker", "--direct_num_workers")])
def test_an_unknown_or_abbreviated_flag_exits_2_naming_the_closest(tmp_path, flag, suggestion):
    result = _segbeam(["run", "--input", f"{tmp_path}/*.png", "--model", "tiny_fcn",
                       "--num_classes", "3", flag, "x"])
    assert result.returncode == 2
    assert result.stderr.strip() == (f"segbeam run: error: unknown flag {flag}; did you mean "
                                      f"{suggestion}?")


def test_a_keras_backend_that_is_not_installed_is_a_one_line_error(tmp_path):
    """KERAS_BACKEND=torch without PyTorch was an internal error with a traceback file."""
    if importlib.util.find_spec("torch") is not None:
        pytest.skip("PyTorch is installed here; the test needs a backend that is not")
    (tmp_path / "a.png").write_bytes(b"never read")
    result = _segbeam(["run", "--input", f"{tmp_path}/*.png", "--model", "tiny_fcn",
                       "--num_classes", "3"], KERAS_BACKEND="torch")
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert result.stderr.startswith("segbeam run: error: cannot import Keras: No module named "
                                    "'torch' (KERAS_BACKEND=torch); install the backend")
    listing = _segbeam(["models"], KERAS_BACKEND="torch")  # counting builds the models
    assert listing.returncode == 2
    assert listing.stderr.startswith("segbeam models: error: cannot import Keras")


def test_a_mistyped_keras_backend_is_a_one_line_error_naming_the_backends(tmp_path):
    (tmp_path / "a.png").write_bytes(b"never read")
    result = _segbeam(["run", "--input", f"{tmp_path}/*.png", "--model", "tiny_fcn",
                       "--num_classes", "3"], KERAS_BACKEND="jaxx")
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert result.stderr.startswith("segbeam run: error: KERAS_BACKEND=jaxx is not a Keras "
                                    "backend (Unable to import backend : jaxx); set it to "
                                    "tensorflow, jax or torch")


def test_flags_of_templated_options_classes_are_known():
    """An options class may declare ValueProvider flags through Beam's parser; their flags pass,
    and a mistyped one is still named."""
    from apache_beam.options.pipeline_options import PipelineOptions

    from segbeam.pipeline.flags import UsageError, reject_unknown_flags
    from segbeam.pipeline.options import run_parser

    class TemplatedOptions(PipelineOptions):
        @classmethod
        def _add_argparse_args(cls, parser):
            parser.add_value_provider_argument("--templated_input", type=str)

    try:
        reject_unknown_flags(["--templated_input", "gs://b/x"], run_parser())
        with pytest.raises(UsageError, match="did you mean --templated_input"):
            reject_unknown_flags(["--templated_inptu", "gs://b/x"], run_parser())
    finally:  # Beam finds options classes through __subclasses__: unregister this one
        del TemplatedOptions
        gc.collect()
    assert "TemplatedOptions" not in {c.__name__ for c in PipelineOptions.__subclasses__()}


def test_beam_flags_pass_through_and_dry_runs_build_the_graph(tmp_path):
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    result = _segbeam(["run", "--input", f"{tmp_path}/*.png", "--model", "tiny_fcn",
                       "--num_classes", "3", "--input_size", "32", "--output",
                       str(tmp_path / "out"), "--direct_num_workers", "1", "--dry_run=True"])
    assert result.returncode == 0, result.stderr[-2000:]
    assert "dry run" in result.stdout


def test_fingerprint_is_derived_from_classified_fields():
    from segbeam.config import Effect, classified_fields, fingerprint_entries, setting
    from segbeam.pipeline.options import Settings

    fields = classified_fields(Settings)
    assert fields["model.spec"] is Effect.MODEL and fields["crf"] is Effect.OUTPUT
    assert fields["inference.batch_size"] is Effect.NONE
    assert fields["layout.write_raw_masks"] is Effect.OUTPUT

    @dataclasses.dataclass(frozen=True)
    class Forgotten:
        classified: int = setting(Effect.OUTPUT, 1)
        new_flag: int = 2  # added without a classification

    with pytest.raises(TypeError, match="Forgotten.new_flag is not classified"):
        fingerprint_entries(Forgotten())
    with pytest.raises(TypeError, match="Forgotten.new_flag is not classified"):
        classified_fields(Forgotten)


def _settings(*extra):
    from apache_beam.options.pipeline_options import PipelineOptions

    from segbeam.pipeline.options import SegmentationOptions, settings_from

    argv = ["--input", "/data/*.png", "--model", "tiny_fcn", "--num_classes", "3", *extra]
    return settings_from(PipelineOptions(argv).view_as(SegmentationOptions))


@pytest.mark.parametrize("change, affects", [
    (["--crf_iterations", "3"], True), (["--resize_mode", "letterbox", "--input_size", "32"],
                                        True),
    (["--ignore_index", "2"], True), (["--write_raw_masks"], True), (["--seed", "1"], True),
    (["--no-crf"], True), (["--strict_labels", "--masks", "/masks"], True),
    (["--label_map", "0:0,1:1,2:2"], True),
    (["--batch_size", "2"], False), (["--output", "/elsewhere"], False),
    (["--masks", "/masks"], False), (["--fail_on_errors"], False), (["--run_date", "today"],
                                                                     False)])
def test_each_setting_changes_the_fingerprint_exactly_when_it_changes_results(change, affects):
    base = _settings("--input_size", "32") if "--input_size" in change else _settings()
    changed = _settings(*change)
    assert (changed.config_fingerprint() != base.config_fingerprint()) is affects


@pytest.mark.parametrize("change, affects", [
    (["--preprocess", "torch"], True), (["--data_format", "channels_last"], True),
    (["--unsafe_model_loading"], False)])
def test_saved_model_settings_change_the_fingerprint_when_they_change_results(tmp_path, change,
                                                                               affects):
    """Flags that apply to saved models only (a registry model refuses them)."""
    import keras

    inputs = keras.Input((None, None, 3))
    model = tmp_path / "model.keras"
    keras.Model(inputs, keras.layers.Conv2D(3, 1)(inputs)).save(model)
    base = _settings("--model", str(model))
    changed = _settings("--model", str(model), *change)
    assert (changed.config_fingerprint() != base.config_fingerprint()) is affects


def test_runs_from_a_folder_holding_an_empty_models_folder(tmp_path):
    """A user's own models/ (or pipeline/, transforms/) folder cannot shadow segbeam's code,
    also in Beam's worker processes, which put the working directory first on their path."""
    from PIL import Image

    work = tmp_path / "work"
    for folder in ("models", "pipeline", "transforms"):
        (work / folder).mkdir(parents=True)
    (work / "images").mkdir()
    for index in range(3):
        Image.new("RGB", (24, 32), (index * 40, 90, 200)).save(work / "images" / f"i{index}.png")
    result = _segbeam(["run", "--input", "images/*.png", "--model", "tiny_fcn",
                       "--num_classes", "3", "--input_size", "32", "--output", "out",
                       "--direct_running_mode", "multi_processing", "--direct_num_workers", "2"],
                      cwd=work)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "3 inputs -> 3 segmented, 0 dead letters (counts add up)" in result.stdout
    # TensorFlow's start-up lines are not shown (nor its DT_HALF notice).
    for noise in ("absl::InitializeLog", "oneDNN", "cpu_feature_guard", "DT_HALF",
                  "triggered tf.function retracing"):
        assert noise not in result.stderr, result.stderr[-2000:]


RUN = ["run", "--model", "tiny_fcn", "--num_classes", "3"]


@pytest.mark.parametrize("argv, message", [
    (RUN + ["--input", "a/*.png", "--input", "b/*.png"], "--input is given again"),
    (RUN + ["--input=a/*.png", "--crf", "--no-crf"], "--no-crf is given after --crf"),
    (RUN + ["--input", "a/*.png", "--runner", "DirectRunner", "--runner=DaskRunner"],
     "--runner is given again"),
    (["train", "--model", "tiny_fcn", "--model", "unet", "--input_size", "32", "--output",
      "o"], "--model is given again"),
    (["report", "out", "--output", "r1", "--output", "r2"], "--output is given again"),
    (["shard", "--input", "a", "--input", "b", "--output", "s/x"], "--input is given again"),
    (["models", "--num_classes", "3", "--num_classes", "4"], "--num_classes is given again")])
def test_a_setting_given_twice_is_an_error_not_the_last_one_silently(argv, message, capsys):
    """argparse keeps the last value: `--input a --input b` read b alone, without a word."""
    from segbeam.pipeline.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "only the last would count" in err


def test_flags_that_collect_values_may_repeat(tmp_path):
    from segbeam.pipeline.options import parse_run_argv

    options = parse_run_argv(["--input", "a/*.png", "--experiments", "x", "--experiments", "y"])
    assert options.get_all_options()["experiments"] == ["x", "y"]


def test_the_demo_leaves_the_flags_a_user_gives_to_the_user(tmp_path, demo_model_path):
    """`segbeam run --output DIR` (no --input) ran the demo with --output given twice."""
    import shutil

    from segbeam.pipeline.demo import demo_argv
    from segbeam.pipeline.options import parse_run_argv

    folder = tmp_path / "demo" / "demo_inputs"
    folder.mkdir(parents=True)
    shutil.copy(demo_model_path, folder / "tiny_fcn_demo.keras")  # not trained again
    argv = demo_argv(str(tmp_path / "demo"), ["--output", str(tmp_path / "demo"),
                                              "--input_size=64"])
    assert argv.count("--output") == 1 and "--input_size" not in argv
    assert argv[-1] == "--input_size=64"
    parse_run_argv(argv)
    # A model of the user's: the demo's own is not trained (about 20 s) only to go unused.
    other = tmp_path / "other"
    argv = demo_argv(str(other), ["--model", demo_model_path])
    assert argv[argv.index("--model") + 1] == demo_model_path and argv.count("--model") == 1
    assert not (other / "demo_inputs" / "tiny_fcn_demo.keras").exists()
