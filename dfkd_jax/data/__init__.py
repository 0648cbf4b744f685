"""Datasets as NumPy batches: the built-in sources, digits, TFDS and Tiny-ImageNet
(:mod:`~dfkd_jax.data.datasets`, and ``python -m dfkd_jax.data prepare``), your own image
folders and arrays (:mod:`~dfkd_jax.data.file_datasets`), the spec both share
(:mod:`~dfkd_jax.data.dataset_spec`) and the decoded-split cache
(:mod:`~dfkd_jax.data.data_cache`)."""
