"""Registers every GenRM seqio task and mixture on import.

``import tasks`` registers, for each source ``<src>`` in {gsm8k, last_letters, word_sorting}:
``<src>_verify``, ``<src>_verify_cot``, ``<src>_correct``, ``<src>_discriminative``,
``<src>_dpo_pairs`` and the mixtures ``<src>_genrm`` / ``<src>_genrm_cot``. Registration reads no
data. The mixture settings (lambda, the per-question caps, a policy's candidates file) are typed,
``records.MixtureConfig`` (``DataConfig.mixture``): ``register_all(mixture)`` registers with them.
Sizes and data paths are gin-configurable (``register_algorithmic.problems_per_length = 350``,
``register_gsm8k.data_dir``): gin needs this package imported to parse those bindings, and
``register_all`` applies them.
"""

from genrm_jax import records
from genrm_jax import word_puzzles
from tasks import algorithmic
from tasks import gsm8k


def register_all(mixture: records.MixtureConfig = records.MixtureConfig()) -> None:
  """(Re-)registers every task and mixture with ``mixture`` and the current gin bindings."""
  for task in word_puzzles.TASKS:
    algorithmic.register_algorithmic(task, lam=mixture.lam_for(task))
    algorithmic.register_policy_sft(task)
  algorithmic.register_policy_candidates(
      mixture.candidates_task, mixture.candidates_file or None,
      lam=mixture.lam_for(mixture.candidates_task), max_per_class=mixture.max_per_class,
      balance=mixture.balance, rationale_style=mixture.rationale_style)
  gsm8k.register_gsm8k(lam=mixture.lam_for("gsm8k"), max_per_class=mixture.max_per_class,
                       balance=mixture.balance)
