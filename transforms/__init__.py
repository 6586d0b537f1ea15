"""Beam PTransforms and DoFns, each a thin shell over a pure function in the same folder."""
