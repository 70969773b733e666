"""autocls: find the best image classifier for a folder of labelled images by transfer learning."""

__version__ = "0.1.0"
