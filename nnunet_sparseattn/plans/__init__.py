"""Plans that choose among the network variants: ``nnunet-sparseattn plan -d ID --variant NAME``."""

from nnunet_sparseattn.plans.variants import PAPER_CONFIGURATIONS, VARIANTS, Variant, get_variant
from nnunet_sparseattn.plans.writer import variant_plans, write_variant_plans

__all__ = ["PAPER_CONFIGURATIONS", "VARIANTS", "Variant", "get_variant", "variant_plans", "write_variant_plans"]
