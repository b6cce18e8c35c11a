"""A run as aelab keeps it: the run folder and loading its model back (runfolder), and its exports (ONNX, SAELens)."""
