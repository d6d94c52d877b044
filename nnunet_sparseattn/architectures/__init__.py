"""Assembled networks (BSA-Seg, MDSA-UNet, the bilateral spatial attention network).

Not built yet: this package holds no network so far. The trainers in ``nnunet_sparseattn.trainers`` use nnU-Net's
own U-Net until the networks land here.
"""
