"""Assembled networks, one paper per module: ``bsa`` (BSA-Seg), ``mdsa`` (MDSA-UNet), ``bilateral``.

Each is a :class:`~nnunet_sparseattn.architectures.base.PlansNetwork`: built from any nnU-Net plans, with
nnU-Net's deep-supervision and state-dict contracts. Import the modules directly (they are not imported here, so
that nnU-Net's ``pydoc.locate`` of one network does not build the others' dependencies).
"""
