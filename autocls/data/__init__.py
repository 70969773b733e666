"""Labelled images: discovery, CSV and multi-label parsing, decoding, the image cache and store, leakage checks."""
