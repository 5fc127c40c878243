"""ONNX export of the generator, the classifier and the ascent step, and an onnxruntime edit backend.

Public entry points (import them from their modules; nothing here imports onnx or onnxruntime, which
are optional: extras ``cpu`` / ``gpu``):

- ``zsteer.export.onnx_export.export_models(generator, classifier, out_dir)``: writes the ONNX models, a
  manifest and a parity report; raises ``ExportError`` (a ``ZsteerError``) when onnxruntime and PyTorch
  disagree;
- ``zsteer.export.backend.OrtAscentEngine``: ``AscentEngine``'s ``edit`` / ``render`` on onnxruntime;
- ``zsteer.export.graphs`` / ``zsteer.export.vjp``: the exported torch modules and the hand-written
  input-gradients they are built from.
"""
