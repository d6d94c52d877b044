"""Building blocks, each defined once: the routed (bi-level) sparse-attention core and routing, the shared
transformer block and MLP, Swin window attention, and the convolutional pieces of the three networks."""

from .routing import (
    RegionLayout,
    Router,
    Routing,
    from_regions,
    region_affinity,
    region_layout,
    region_pool,
    route,
    to_regions,
)
from .sparse_attention import (
    RoutedAttention,
    build_block_mask,
    compute_routing,
    flex_available,
    routed_attention,
    routed_attention_reference,
    select_backend,
)

__all__ = [
    "RegionLayout",
    "RoutedAttention",
    "Router",
    "Routing",
    "build_block_mask",
    "compute_routing",
    "flex_available",
    "from_regions",
    "region_affinity",
    "region_layout",
    "region_pool",
    "route",
    "routed_attention",
    "routed_attention_reference",
    "select_backend",
    "to_regions",
]
