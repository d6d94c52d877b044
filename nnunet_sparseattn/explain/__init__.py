"""``nnunet-sparseattn explain``: what a trained model's attention decided on one image, drawn back on the image.

A command layer: it reads the layers' records through forward hooks (:mod:`.recorder`), maps voxels between the
image and the network input exactly as nnU-Net's preprocessing and sliding window place them (:mod:`.geometry`),
and draws (:mod:`.figures`). Only the CLI imports it.
"""
