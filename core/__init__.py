"""segbeam: batch semantic segmentation with Apache Beam, Keras and a dense CRF.

This folder (``core/`` in the repository) is installed as the package ``segbeam`` itself and
holds the bottom layer: plain functions and types on numpy arrays and bytes (decoding, keys,
geometry, metrics, the CRF call, codecs, the output layout and its readers, the dataset
reader, configuration) that know nothing of Beam pipelines or Keras models. The layers above
are subpackages installed from the repository's other folders (see ``setup.py``)::

    segbeam.pipeline    (pipeline/)    the command line, options, the job graph, reports
    segbeam.transforms  (transforms/)  Beam PTransforms and DoFns, thin shells over segbeam.*
    segbeam.models      (models/)      Keras architectures, registry, loading, training
    segbeam             (core/)        pure code, imported by all of the above

Each layer imports only the layers below it.
"""
