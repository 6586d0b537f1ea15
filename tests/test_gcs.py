"""gs:// inputs, model and outputs through Beam's FileSystems, against a Cloud Storage emulator
(gcp-storage-emulator) started by the test on a loopback port; nothing leaves this machine."""

import contextlib
import gc
import io
import json
import os
from typing import Optional

import numpy as np
import pytest
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from PIL import Image

from segbeam.pipeline.demo import synthetic_scene
from segbeam.pipeline.report import write_report
from segbeam.pipeline.run import run
from tests.conftest import assert_close_calibration, get, png_bytes, put, \
    without_calibration


def test_pipeline_reads_and_writes_cloud_storage(gcs_bucket, demo_model_path):
    gcs = gcs_bucket()
    rng = np.random.default_rng(9)
    truth = {}
    for index in range(5):
        image, mask = synthetic_scene(rng, 40 + 8 * index, 64)
        put(f"{gcs}/data/images/scene{index}.png", png_bytes(image))
        if index != 4:
            put(f"{gcs}/data/masks/scene{index}.png", png_bytes(mask))
        truth[f"scene{index}"] = mask
    put(f"{gcs}/data/images/broken.png", b"\x89PNG\r\n\x1a\nbroken")
    put(f"{gcs}/models/demo.keras", open(demo_model_path, "rb").read())
    argv = ["--input", f"{gcs}/data/images/*.png", "--masks", f"{gcs}/data/masks",
            "--model", f"{gcs}/models/demo.keras", "--num_classes", "3", "--input_size", "64",
            "--ignore_index", "-1", "--crf_iterations", "2", "--output", f"{gcs}/out",
            "--no_auth", "--skip_existing"]
    outcome = run(argv)

    summary = json.loads(get(f"{gcs}/out/summary.json"))
    assert summary == outcome.summary
    assert summary["counts"] | {"dead_letters_by_stage": None} == {
        "inputs": 6, "outputs": 5, "segmented": 5, "reused": 0, "skipped": 0,
        "dead_letters": 1, "dead_letters_by_stage": None, "images_with_mask": 4,
        "masks_without_image": 0, "multi_frame_images": 0, "dark_16_bit_images": 0,
        "accounted_for": True}
    assert summary["evaluation"]["crf"]["miou"] > 0.5
    metrics = FileSystems.match([f"{gcs}/out/metrics/*.parquet"])[0].metadata_list
    rows = [row for m in metrics for row in pq.read_table(io.BytesIO(get(m.path))).to_pylist()]
    assert sorted(row["key"] for row in rows) == sorted(truth)
    for row in rows:
        assert row["mask_path"] == f"{gcs}/out/masks/{row['key']}.png"
        labels = np.asarray(Image.open(io.BytesIO(get(row["mask_path"]))))
        assert labels.shape == truth[row["key"]].shape and labels.max() < 3
    dead = FileSystems.match([f"{gcs}/out/dead_letters/*.jsonl"])[0].metadata_list
    letters = [json.loads(line) for m in dead for line in get(m.path).splitlines() if line]
    assert [(d["key"], d["stage"]) for d in letters] == [("broken", "decode")]
    manifest = json.loads(get(f"{gcs}/out/manifest.json"))
    assert manifest["model_fingerprint"].startswith("sha256:")

    # A second night on the bucket: the history is read back from gs://, nothing is redone;
    # a mask no input of it claims (an earlier run's) is deleted, as on a local disk.
    # A mask deleted from the bucket is found missing by one listing of the masks, not a
    # request per reused row, and that image alone is segmented again; so is one whose mask
    # the listing gives at another size than the one written (cut short by a partial copy).
    put(f"{gcs}/out/masks/gone/old.png", b"an earlier run's")
    FileSystems.delete([f"{gcs}/out/masks/scene2.png"])
    put(f"{gcs}/out/masks/scene3.png", get(f"{gcs}/out/masks/scene3.png")[:100])
    again = run(argv)
    assert (again.summary["counts"]["segmented"], again.summary["counts"]["reused"]) == (2, 3)
    assert again.manifest["beam_counters"]["reused_rows_without_mask_file"] == 1
    assert again.manifest["beam_counters"]["reused_rows_with_damaged_mask_file"] == 1
    assert len(get(f"{gcs}/out/masks/scene3.png")) > 100
    assert again.manifest["beam_counters"]["stale_outputs_removed"] == 1
    assert sorted(m.path.rsplit("/", 1)[1] for m in FileSystems.match(
        [f"{gcs}/out/masks/**"])[0].metadata_list) == sorted(f"{key}.png" for key in truth)
    # Two images went through the model again, in another batch: calibration (from float
    # probabilities) agrees closely, every other figure exactly.
    assert without_calibration(again.summary["evaluation"])[0] == \
        without_calibration(outcome.summary["evaluation"])[0]
    assert_close_calibration(again.summary, outcome.summary)
    # And the report reads the run from the bucket and writes beside it.
    report, folder = write_report(f"{gcs}/out")
    assert folder == f"{gcs}/out/report"
    assert b"<html" in get(f"{folder}/report.html")[:200].lower()
    leftovers = [m.path for m in FileSystems.match([f"{gcs}/out/**"])[0].metadata_list
                 if ".tmp-" in m.path or "beam-temp" in m.path]
    assert leftovers == []


def _put_scenes(root: str, count: int, seed: int) -> None:
    """``count`` generated 48x64 scenes: ``root/images/sceneN.png`` and ``root/masks/...``."""
    rng = np.random.default_rng(seed)
    for index in range(count):
        image, mask = synthetic_scene(rng, 48, 64)
        put(f"{root}/images/scene{index}.png", png_bytes(image))
        put(f"{root}/masks/scene{index}.png", png_bytes(mask))


def test_a_masks_listing_takes_the_folder_name_literally(gcs_bucket, tmp_path):
    """--skip_existing lists a run's masks with one glob; a folder named ``out[1]`` was read
    as a pattern (``out1``), so the listing held another folder's masks, not its own, and
    every reused row was segmented again."""
    from segbeam.layout import files_under

    gcs = gcs_bucket()
    for path in ("out[1]/masks/a.png", "out[1]/masks/sub/b.png", "out1/masks/c.png",
                 "out*/masks/d.png"):
        put(f"{gcs}/{path}", b"png")
    assert sorted(files_under(f"{gcs}/out[1]/masks")) == [f"{gcs}/out[1]/masks/a.png",
                                                           f"{gcs}/out[1]/masks/sub/b.png"]
    assert list(files_under(f"{gcs}/out*/masks")) == [f"{gcs}/out*/masks/d.png"]
    (tmp_path / "out[1]" / "masks").mkdir(parents=True)
    (tmp_path / "out[1]" / "masks" / "e.png").write_bytes(b"png")
    assert list(files_under(str(tmp_path / "out[1]" / "masks"))) == [
        str(tmp_path / "out[1]" / "masks" / "e.png")]


def test_change_detection_by_stamp_reads_no_unchanged_object(gcs_bucket, demo_model_path,
                                                             monkeypatch):
    """On Cloud Storage the stamps (size, update time) come with the listing: a night with
    nothing new reads no object, and an object written again is read and segmented."""
    import segbeam.matching

    monkeypatch.setattr(segbeam.matching, "RECENT_SECONDS", 0.0)  # objects written just now
    gcs = gcs_bucket()
    _put_scenes(f"{gcs}/data", 3, seed=4)
    put(f"{gcs}/models/demo.keras", open(demo_model_path, "rb").read())
    argv = ["--input", f"{gcs}/data/images/*.png", "--masks", f"{gcs}/data/masks",
            "--model", f"{gcs}/models/demo.keras", "--num_classes", "3", "--input_size", "64",
            "--ignore_index", "-1", "--crf_iterations", "2", "--output", f"{gcs}/out",
            "--no_auth", "--skip_existing", "--change_detection", "stamp"]
    first = run(argv)
    assert first.manifest["beam_counters"]["inputs_hashed"] == 3
    again = run(argv)
    assert again.summary["counts"]["reused"] == 3
    assert again.manifest["beam_counters"].get("inputs_hashed", 0) == 0
    assert again.manifest["beam_counters"]["inputs_unchanged_by_stamp"] == 3

    image, _ = synthetic_scene(np.random.default_rng(5), 48, 64)
    put(f"{gcs}/data/images/scene1.png", png_bytes(image))
    changed = run(argv)
    counts = changed.summary["counts"]
    assert (counts["segmented"], counts["reused"]) == (1, 2)
    assert changed.manifest["beam_counters"]["inputs_hashed"] == 1


def test_cloud_storage_that_cannot_be_reached_is_refused_at_once(tmp_path, monkeypatch,
                                                                 capsys, demo_model_path):
    """Without the check, each command waited out the storage client's 120 s of retries per
    file (a model on gs://: two of them, over four minutes) and ended in "internal error"."""
    import socket

    from segbeam.pipeline.cli import main

    with socket.socket() as closed:  # bound, never listening: connections are refused
        closed.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{closed.getsockname()[1]}"
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", endpoint)
        (tmp_path / "images").mkdir()
        (tmp_path / "images" / "a.png").write_bytes(png_bytes(np.zeros((8, 8, 3), np.uint8)))
        commands = {
            "gs://b/images/*.png": ["run", "--input", "gs://b/images/*.png", "--model",
                                    demo_model_path, "--output", str(tmp_path / "out")],
            "gs://b/m.keras": ["run", "--input", str(tmp_path / "images"), "--model",
                               "gs://b/m.keras", "--output", str(tmp_path / "out")],
            "gs://b/out": ["report", "gs://b/out"],
            "gs://b/data/*.png": ["train", "--model", "tiny_fcn", "--num_classes", "3",
                                  "--images=gs://b/data/*.png", "--masks", str(tmp_path),
                                  "--output", str(tmp_path / "m.keras")],
        }
        for path, argv in commands.items():
            code = main(argv)
            error = capsys.readouterr().err
            assert code == 2, (argv, error)
            assert error.splitlines() == [
                f"segbeam {argv[0]}: error: {path} is on Cloud Storage ({endpoint}), which this "
                f"machine cannot reach: 127.0.0.1:{endpoint.rsplit(':', 1)[1]}: Connection "
                f"refused; check the network (or the proxy, or STORAGE_EMULATOR_HOST), or use "
                f"local paths"], argv
    assert not (tmp_path / "out").exists()


def test_a_report_whose_images_are_on_unreachable_storage_shows_them_missing_at_once(
        gcs_bucket, demo_model_path, tmp_path, monkeypatch, capsys):
    """A run's folder copied to a machine that cannot reach the bucket its images are in: each
    gallery image waited out the storage client's two minutes of retries (a report of six
    images a gallery, about an hour). Now the report is written at once, without them, and
    says why."""
    import socket

    from segbeam.pipeline.cli import main

    gcs = gcs_bucket()
    _put_scenes(f"{gcs}/data", 3, seed=6)
    run(["--input", f"{gcs}/data/images/*.png", "--masks", f"{gcs}/data/masks", "--model",
         demo_model_path, "--num_classes", "3", "--input_size", "64", "--ignore_index", "-1",
         "--crf_iterations", "2", "--output", str(tmp_path / "out"), "--no_auth"])
    with socket.socket() as closed:  # bound, never listening: connections are refused
        closed.bind(("127.0.0.1", 0))
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{closed.getsockname()[1]}")
        assert main(["report", str(tmp_path / "out"), "--gallery_size", "2"]) == 0
    error = capsys.readouterr().err
    assert "warning: the galleries show no image from Cloud Storage: gs://" in error
    assert "Connection refused" in error
    report = json.loads((tmp_path / "out" / "report" / "report.json").read_text())
    shown = [entry for name in ("worst", "worst_boundary", "best")
             for entry in report["evaluation"][name]]
    assert shown and all(entry["cloud_storage_unread"] for entry in shown)
    page = (tmp_path / "out" / "report" / "report.html").read_text()
    # the image and its ground truth are not read; the masks written locally are
    assert page.count("not readable from here") == 2 * len(shown)
    assert page.count('alt="prediction (CRF-refined)"') == len(shown)


def _without_credentials(monkeypatch, tmp_path, as_the_service: bool = True) -> None:
    """No application default credentials anywhere, and Beam's credential cache unsettled, as
    in a fresh process. ``as_the_service``: the emulator addressed as the service itself
    (``API_ENDPOINT_OVERRIDE``), where credentials are looked for; an emulator
    (``STORAGE_EMULATOR_HOST``) is read anonymously without a word."""
    from apache_beam.internal.gcp import auth

    if as_the_service:
        endpoint = os.environ["STORAGE_EMULATOR_HOST"]
        monkeypatch.delenv("STORAGE_EMULATOR_HOST")
        monkeypatch.setenv("API_ENDPOINT_OVERRIDE", endpoint)
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))  # no gcloud login there
    monkeypatch.setattr(auth._Credentials, "_credentials_init", False)
    monkeypatch.setattr(auth._Credentials, "_credentials", None)


def test_without_credentials_cloud_storage_is_read_anonymously_saying_so(
        gcs_bucket, demo_model_path, tmp_path, monkeypatch, caplog):
    """Beam retried for about 25 s, logging a traceback each time, before it read
    anonymously; now that is one warning, at once, and in the manifest."""
    from apache_beam.internal.gcp import auth

    gcs = gcs_bucket()
    _put_scenes(gcs, 2, seed=3)
    argv = ["--input", f"{gcs}/images/*.png", "--masks", f"{gcs}/masks", "--model",
            demo_model_path, "--num_classes", "3", "--input_size", "64", "--ignore_index", "-1",
            "--crf_iterations", "1"]
    warning = (f"no Google Cloud credentials were found, so {gcs}/images/*.png is read "
               f"anonymously, which reaches public buckets only (for private ones run `gcloud "
               f"auth application-default login`); --no_auth says that is meant")
    for as_the_service, warnings in ((False, None), (True, [warning])):
        _without_credentials(monkeypatch, tmp_path, as_the_service)
        outcome = run([*argv, "--output", str(tmp_path / f"out{as_the_service}")])
        assert outcome.summary["counts"]["segmented"] == 2
        assert outcome.manifest.get("warnings") == warnings  # an emulator takes none
        assert (auth._Credentials._credentials_init, auth._Credentials._credentials) == \
            (True, None)
        assert "Traceback" not in caplog.text
        assert "Retry with exponential backoff" not in caplog.text


def test_credentials_named_but_unusable_are_an_error_not_anonymous_access(
        gcs_bucket, tmp_path, monkeypatch, capsys):
    from segbeam.pipeline.cli import main

    gcs = gcs_bucket()
    _without_credentials(monkeypatch, tmp_path)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "key.json"))
    code = main(["report", f"{gcs}/out"])
    error = capsys.readouterr().err.splitlines()
    assert code == 2 and len(error) == 1, error
    assert error[0].startswith(f"segbeam report: error: Google Cloud credentials for {gcs}/out: ")
    assert str(tmp_path / "key.json") in error[0]
    assert "run `gcloud auth application-default login`" in error[0]


@contextlib.contextmanager
def _refusing_storage(status: int, seen: Optional[list] = None):
    """A server on a loopback port that answers every request as Cloud Storage answers one it
    refuses (401: no credentials; 403: credentials without the permission): the emulator
    grants everything, so it cannot show what a refusal does. ``seen`` collects each
    request's method and path."""
    import http.server
    import threading

    body = json.dumps({"error": {"code": status, "message": "caller does not have "
                                 "storage.objects.list access to the bucket."}}).encode()

    class Refuse(http.server.BaseHTTPRequestHandler):
        def refuse(self):
            # The body read first: a socket closed on unread data resets the connection, and
            # the client would see a reset rather than the refusal.
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if seen is not None:
                seen.append(f"{self.command} {self.path}")
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_DELETE = refuse

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
    server.handle_error = lambda request, address: None  # a client gone: not the test's stderr
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_cloud_storage_refusing_access_is_one_line_naming_the_path(tmp_path, monkeypatch,
                                                                   capsys, demo_model_path):
    """A listing refused was "internal error ... please report it"; a model or an output
    refused read "error: Anonymous credentials cannot be refreshed." or ended in an internal
    error, naming no path."""
    from segbeam.pipeline.cli import main

    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(png_bytes(np.zeros((8, 8, 3), np.uint8)))
    local = ["--input", str(tmp_path / "images"), "--model", demo_model_path]
    commands = [
        (["--input", "gs://b/images/*.png", "--model", demo_model_path], "gs://b/images/"),
        (["--input", str(tmp_path / "images"), "--model", "gs://b/m.keras", "--num_classes",
          "3"], "gs://b/m.keras"),
        ([*local, "--masks", "gs://b/masks"], "gs://b/masks/"),
        ([*local, "--output", "gs://b/out"], "gs://b/")]
    suffix = ("check the credentials (`gcloud auth application-default login`; without any, "
              "only public buckets can be read) and the bucket's permissions")
    for status, reason in (
            (403, "403 caller does not have storage.objects.list access to the bucket"),
            (401, "no credentials were used, and it is not public")):
        with _refusing_storage(status) as endpoint:
            monkeypatch.setenv("STORAGE_EMULATOR_HOST", endpoint)
            for flags, path in commands:
                argv = ["run", *flags, "--no_auth"]
                if "--output" not in flags:
                    argv += ["--output", str(tmp_path / "out")]
                code = main(argv)
                error = capsys.readouterr().err.splitlines()
                named = f" to {path}" if status == 403 or "images" in path or "masks" in path \
                    else ""
                assert (code, error) == (2, [
                    f"segbeam run: error: Cloud Storage refused access{named}: {reason}; "
                    f"{suffix}"]), (status, argv)
            code = main(["report", "gs://b/out"])
            error = capsys.readouterr().err.splitlines()
            assert code == 2 and error[-1].startswith("segbeam report: error: Cloud Storage "
                                                      "refused access"), "\n".join(error)
    assert not (tmp_path / "out").exists()


def test_a_refused_write_is_not_tried_again_when_its_file_is_collected(monkeypatch):
    """A Cloud Storage writer whose upload was refused stayed open, and its finaliser tried
    the upload again in whichever thread collected it: a temporary file could appear after
    the failure was reported, and the refusing test server, collecting one in its own thread,
    waited on itself until the client's 120 s of retries ran out."""
    from apache_beam.internal.gcp import auth

    from segbeam.layout import write_bytes_atomically
    from segbeam.storage import settle_credentials

    seen: list = []
    with _refusing_storage(403, seen) as endpoint:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", endpoint)
        for name in ("_credentials_init", "_credentials"):  # restored after the test
            monkeypatch.setattr(auth._Credentials, name, getattr(auth._Credentials, name))
        settle_credentials(no_auth=True)
        with pytest.raises(Exception, match="403"):
            write_bytes_atomically("gs://b/out/summary.json", b"{}")
        refused = list(seen)
        gc.collect()
    assert refused and all(r.startswith("POST /upload/") for r in refused), refused
    assert seen == refused


def _record_retries() -> None:
    """On a Dask worker: keep what Beam's retry helper logs (it retries a credential lookup
    that finds nothing)."""
    import logging

    kept, handler = [], logging.Handler()
    handler.emit = lambda record: kept.append(record.getMessage())
    logger = logging.getLogger("apache_beam.utils.retry")
    logger.addHandler(handler)
    logger.kept = kept


def _retries_recorded() -> list:
    import logging

    return list(getattr(logging.getLogger("apache_beam.utils.retry"), "kept", ["no recorder"]))


@pytest.mark.parametrize("no_auth", [True, False])
def test_dask_workers_without_credentials_read_anonymously_at_once(
        gcs_bucket, demo_model_path, tmp_path, monkeypatch, no_auth):
    """Beam's gcsio ignores --no_auth, and looks for credentials a worker may not have: each
    Dask worker process looked for them for about 25 s, logging a traceback per try, before
    it read anonymously anyway (with --no_auth; and without it, where the launcher had found
    none and read anonymously at once)."""
    from dask.distributed import Client, LocalCluster

    gcs = gcs_bucket()
    _put_scenes(gcs, 2, seed=6)
    # the workers' too; without --no_auth, the emulator addressed as the service itself
    _without_credentials(monkeypatch, tmp_path, as_the_service=not no_auth)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0") as cluster, \
            Client(cluster.scheduler_address) as client:
        client.run(_record_retries)
        outcome = run(["--input", f"{gcs}/images/*.png", "--masks", f"{gcs}/masks", "--model",
                       demo_model_path, "--num_classes", "3", "--input_size", "64",
                       "--ignore_index", "-1", "--crf_iterations", "1",
                       *(["--no_auth"] if no_auth else []),
                       "--runner", "DaskRunner", "--dask_client_address",
                       cluster.scheduler_address, "--output", str(tmp_path / "out")])
        assert outcome.summary["counts"]["segmented"] == 2
        assert list(client.run(_retries_recorded).values()) == [[]]


def test_the_standing_evaluation_reads_nightly_partitions_on_cloud_storage(gcs_bucket,
                                                                            tmp_path):
    """The standing sum reads each night's keys, then its rows a batch at a time, through one
    handle per file: on Cloud Storage as on a local disk, to the same figures."""
    from benchmarks.standing import write_nights
    from segbeam.pipeline.standing import standing_summary

    gcs = gcs_bucket()
    write_nights(str(tmp_path), 600)
    for path in sorted(tmp_path.rglob("*")):
        if path.is_file():
            put(f"{gcs}/nightly/{path.relative_to(tmp_path)}", path.read_bytes())
    remote, local = standing_summary(f"{gcs}/nightly"), standing_summary(str(tmp_path))
    assert remote["standing"]["root"] == f"{gcs}/nightly"
    remote["standing"]["root"] = local["standing"]["root"]
    assert json.dumps(remote, sort_keys=True) == json.dumps(local, sort_keys=True)
    assert local["counts"]["images_with_mask"] > 0
