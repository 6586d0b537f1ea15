"""The dense-CRF flags of ``segbeam run`` and their reading into ``CrfParams`` (apart from
``pipeline.options``, which holds the other flags)."""

from __future__ import annotations

import argparse
import os
from typing import Optional

from segbeam.crf import CRF_BACKENDS, CrfParams
from segbeam.pipeline.flags import UsageError


def add_crf_flags(parser: argparse.ArgumentParser) -> None:
    crf = parser.add_argument_group("dense CRF (defaults: DeepLab v2)")
    crf.add_argument("--crf", action=argparse.BooleanOptionalAction, default=True,
                     help="Refine predictions with a dense CRF (--no-crf to skip).")
    defaults = CrfParams()
    crf.add_argument("--crf_backend", default=defaults.backend, choices=CRF_BACKENDS,
                     help="pydensecrf: the reference C++ implementation (one core per image); "
                          "keras: the same inference in keras.ops, on the Keras backend's "
                          "device (a GPU where there is one). README: Dense CRF backends.")
    crf.add_argument("--crf_processes", type=int, default=0,
                     help="Processes the CRF stage runs pydensecrf in; 0 (auto): every core "
                          "on the local runner (shared among --direct_num_workers), 1 "
                          "elsewhere (there a worker already runs one process per core).")
    crf.add_argument("--crf_iterations", type=int, default=defaults.iterations,
                     help="Mean-field iterations.")
    crf.add_argument("--crf_pos_w", type=float, default=defaults.pos_w,
                     help="Weight of the Gaussian (smoothness) term.")
    crf.add_argument("--crf_pos_xy_std", type=float, default=defaults.pos_xy_std,
                     help="Spatial std (pixels) of the Gaussian term.")
    crf.add_argument("--crf_bi_w", type=float, default=defaults.bi_w,
                     help="Weight of the bilateral (appearance) term.")
    crf.add_argument("--crf_bi_xy_std", type=float, default=defaults.bi_xy_std,
                     help="Spatial std (pixels) of the bilateral term.")
    crf.add_argument("--crf_bi_rgb_std", type=float, default=defaults.bi_rgb_std,
                     help="Colour std (intensity levels) of the bilateral term.")
    crf.add_argument("--crf_scale", type=float, default=defaults.scale,
                     help="Run the CRF at this fraction of each image's resolution "
                          "(spatial stds scaled to match) and upsample its marginals; "
                          "1 is the plain full-resolution CRF.")
    crf.add_argument("--crf_min_side", type=int, default=defaults.min_side,
                     help="With --crf_scale below 1: the reduced copy keeps at least this "
                          "many pixels on its short side (smaller images stay at full "
                          "resolution).")
    crf.add_argument("--crf_class_floor", type=float, default=defaults.class_floor,
                     help="Leave out of an image's CRF the classes whose probability "
                          "stays below this everywhere in it; 0 keeps every class.")


def _defaults() -> dict:
    """Each CRF flag's default, by its destination name (``crf_iterations``: 10, ...)."""
    parser = argparse.ArgumentParser(add_help=False)
    add_crf_flags(parser)
    return {action.dest: action.default for action in parser._actions if action.dest != "crf"}


def crf_params(o) -> Optional[CrfParams]:
    """The CRF settings the flags ask for, or None with --no-crf. A CRF flag set with --no-crf
    would do nothing: a ``UsageError`` naming it (also ``--crf_min_ram``); so is
    ``--crf_min_side`` with ``--crf_scale 1``, and ``--calibration`` with the CRF."""
    if not o.crf:
        given = [name for name, default in _defaults().items()
                 if getattr(o, name, default) != default]
        if getattr(o, "crf_min_ram", None) is not None:
            given.append("crf_min_ram")
        if given:
            raise UsageError(f"--{given[0]} sets the dense CRF, which --no-crf turns off; "
                             f"drop one of them")
        return None
    if getattr(o, "calibration", False):
        raise UsageError("--calibration adds calibration figures to runs with --no-crf; with "
                         "the CRF they are always computed: drop --calibration")
    if o.crf_scale == 1 and o.crf_min_side != _defaults()["crf_min_side"]:
        raise UsageError("--crf_min_side bounds the reduced copy that --crf_scale below 1 "
                         "makes; --crf_scale 1 runs the CRF at full resolution: drop one of "
                         "them")
    return CrfParams(o.crf_iterations, o.crf_pos_w, o.crf_pos_xy_std, o.crf_bi_w,
                     o.crf_bi_xy_std, o.crf_bi_rgb_std, o.crf_scale, o.crf_class_floor,
                     o.crf_min_side, o.crf_backend)


def crf_processes(requested: int, backend: str, local: bool,
                  direct_workers: Optional[int]) -> int:
    """How many processes the CRF stage spreads pydensecrf over in each worker. The keras
    backend runs in the worker itself (its kernels use the cores, or the device, already)."""
    if requested < 0:
        raise ValueError(f"--crf_processes must be 0 (auto) or more; received {requested}")
    if requested or backend != "pydensecrf":
        return requested or 1
    if not local:
        return 1
    return max(1, (os.cpu_count() or 1) // max(1, direct_workers or 1))
