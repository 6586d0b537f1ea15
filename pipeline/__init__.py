"""The pipeline: options, the graph that wires the stages, the command line, run metadata."""
