"""Decoding algorithms implemented on top of the public transformers API."""
