"""aelab: an autoencoder laboratory.

The chapter's deep autoencoder, its variants and the PCA baselines, trained on real Fashion-MNIST.
Importing the package is cheap; torch is loaded by the submodules that need it.

    >>> from aelab.runfolder import load_model
    >>> model = load_model("runs/chapter")
    >>> codes = model.encode(images)            # numpy uint8/float or torch tensors
"""

__version__ = "0.1.0"
