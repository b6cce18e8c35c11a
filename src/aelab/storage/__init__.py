"""Files on disk: the run folder and its paths (runfolder), safe writes and locks (files), the one hardened
safetensors reader (tensorfile), and files other tools read: ONNX (export) and SAELens (saelens)."""
