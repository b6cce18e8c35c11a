"""A run as aelab keeps it: its settings put together from the registry's defaults (settings), the run folder and
loading its model back (runfolder), a layer's activations written out (activations), and its exports (export: ONNX,
saelens: SAELens)."""
