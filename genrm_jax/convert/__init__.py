"""Checkpoints in and out of the model directory format.

``keymap`` is the one declarative map between our parameter tree and the Hugging Face and official
Gemma layouts (and between ``ModelConfig`` and HF's config.json), read by import and export alike.
``import_model`` (``python -m genrm_jax.convert.import_model``) writes a model directory from a
Hugging Face folder, a GGUF file (parsed and dequantized by ``gguf``) or an official Gemma Flax
checkpoint; ``export_hf`` (``python -m genrm_jax.convert.export_hf``) writes one back out as a
Hugging Face folder or a PEFT adapter.
"""
