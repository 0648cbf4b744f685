"""Other frameworks' files: PyTorch teachers in (:mod:`~dfkd_jax.interop.convert`), students out
as ONNX, PyTorch or Flax (:mod:`~dfkd_jax.interop.export`), and the PyTorch weight layouts
(:mod:`~dfkd_jax.interop.torch_layout`)."""
