"""Data generators for tests and benchmarks; the engine never imports this package.

* :mod:`pyengine.testing.blocks` -- random but valid GGUF blocks of any type
  (``random_raw``): property-test scale modes, or model-like weights of a chosen RMS.
* :mod:`pyengine.testing.synthetic` -- GGUF files with random weights in llama.cpp's
  Q4_K_M type mix (dense Llama shapes and mixture-of-experts shapes), for benchmarking
  big shapes without downloading big models.
"""
