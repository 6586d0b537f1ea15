"""Every workaround for a third-party defect, in one place: what it targets, in which version,
and how to tell when it can go. Each is applied by an explicit call, never on import.

Beyond these, ``segbeam.pipeline.dask_runner`` is a whole runner that replaces Beam's Dask
runner (Beam 2.77 loses elements there) and builds on Beam internals (``DoFnInvoker``,
``_OutputHandler``, the Dask runner's overrides); re-check it on every Beam upgrade.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile


def restore_beam_inference_memory_metric() -> None:
    """Beam 2.77 (``apache_beam.ml.inference.base``) imports the standard ``resource`` module in
    one try block with its PyTorch-only ModelManager, so without torch RunInference cannot read
    its memory use: it reports 0 and warns "Resource module is not available for current
    platform" on every model load. This puts the module back.

    Can go when ``apache_beam.ml.inference.base.resource`` is set without torch installed."""
    from apache_beam.ml.inference import base

    if getattr(base, "resource", None) is not None:
        return
    try:
        import resource
    except ImportError:  # not on Windows; Beam then reports 0, as it would anyway
        return
    base.resource = resource


def settle_anonymous_gcs_credentials() -> None:
    """With ``--no_auth``, Beam 2.77's gcsio still asks for default credentials, retrying for
    about 25 s before it connects anonymously anyway. This settles Beam's credential cache (in
    this process, through the private ``apache_beam.internal.gcp.auth._Credentials``) to "none"
    at once.

    Can go when a ``--no_auth`` run against an emulator starts without that pause (the Cloud
    Storage tests time it)."""
    try:
        from apache_beam.internal.gcp import auth
    except ImportError:  # no GCP extras: nothing to settle
        return
    credentials = getattr(auth, "_Credentials", None)
    if credentials is not None and hasattr(credentials, "_credentials_init"):
        with credentials._credentials_lock:
            credentials._credentials, credentials._credentials_init = None, True


# TensorFlow 2.21's native start-up lines. absl writes them to file descriptor 2 while
# TensorFlow's libraries load, before TF_CPP_MIN_LOG_LEVEL is read, so only filtering the
# descriptor hides them.
_STARTUP_NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called"
    r"|[IW]\d{4} [\d:. ]+\d+ (port|cpu_feature_guard)\.cc:\d+\]"
    r"|To enable the following instructions:)")


_QUIETED = "SEGBEAM_QUIETED_TF_LOG_LEVEL"  # marks a level that segbeam set, not the user


@contextlib.contextmanager
def _filtered_stderr(noise: re.Pattern):
    """Holds back what is written to file descriptor 2 (by Python or by C libraries) and writes
    it out afterwards, less the lines that match ``noise``."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            for line in held.read().decode("utf-8", "replace").splitlines():
                if not noise.match(line):
                    print(line, file=sys.stderr)


def import_keras_quietly():
    """Imports Keras (and with it the backend) without TensorFlow's start-up lines: the oneDNN
    and CPU-feature notices and absl's "All log messages before absl::InitializeLog()" (TF 2.21),
    and, through ``TF_CPP_MIN_LOG_LEVEL=3``, native messages such as "oneDNN supports DT_HALF
    only on platforms with AVX-512", an information that reads like an error. A user who sets
    ``TF_CPP_MIN_LOG_LEVEL`` sees everything TensorFlow says at that level.

    Can go when TensorFlow honours ``TF_CPP_MIN_LOG_LEVEL`` for its start-up lines."""
    asked = ("TF_CPP_MIN_LOG_LEVEL" in os.environ
             and os.environ.get(_QUIETED) != os.environ["TF_CPP_MIN_LOG_LEVEL"])
    if "keras" in sys.modules or asked:
        return _import_keras()
    # Inherited by worker processes, which then hold back the same lines.
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = os.environ[_QUIETED] = "3"
    with _filtered_stderr(_STARTUP_NOISE):
        return _import_keras()


def _import_keras():
    """Keras; a ValueError in one line where its backend (or another module it needs) is not
    installed, as with ``KERAS_BACKEND=torch`` and no PyTorch, or is no backend at all
    (``KERAS_BACKEND=jaxx``)."""
    try:
        import keras
    except ImportError as error:
        backend = os.environ.get("KERAS_BACKEND")
        chosen = f"KERAS_BACKEND={backend}" if backend else \
            "KERAS_BACKEND is not set: tensorflow, unless ~/.keras/keras.json names another"
        raise ValueError(f"cannot import Keras: {error} ({chosen}); install the backend (pip "
                         f"install 'segbeam[tensorflow]', or jax, or torch), or set "
                         f"KERAS_BACKEND to one that is installed") from None
    except ValueError as error:  # Keras's own words: "Unable to import backend : jaxx"
        if "backend" not in str(error):
            raise
        raise ValueError(f"KERAS_BACKEND={os.environ.get('KERAS_BACKEND')} is not a Keras "
                         f"backend ({error}); set it to tensorflow, jax or torch, or unset it "
                         f"for tensorflow") from None
    return keras
