"""Registers every GenRM seqio task and mixture on import.

``import tasks`` registers, for each source ``<src>`` in {gsm8k, last_letters, word_sorting}:
``<src>_verify``, ``<src>_verify_cot``, ``<src>_correct``, ``<src>_discriminative``,
``<src>_dpo_pairs`` and the mixtures ``<src>_genrm`` / ``<src>_genrm_cot``. Registration reads no
data. Sizes, lambda and data paths are gin-configurable (``register_gsm8k.lam = 0.25``,
``register_algorithmic.problems_per_length = 350``, ...): gin needs this package imported to parse
those bindings, so call ``register_all()`` after parsing to apply them.
"""

from genrm_jax import word_puzzles
from tasks import algorithmic
from tasks import gsm8k


def register_all() -> None:
  """(Re-)registers every task and mixture with the current gin bindings."""
  for task in word_puzzles.TASKS:
    algorithmic.register_algorithmic(task)
    algorithmic.register_policy_sft(task)
  algorithmic.register_policy_candidates()
  gsm8k.register_gsm8k()
