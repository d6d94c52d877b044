"""``nnunet-sparseattn compare``: which method is best on a dataset, at equal budget, beside stock nnU-Net.

``run.run_compare`` runs (or resumes) a comparison, ``results`` holds its record and the paired test, ``report`` its
table and plot, ``baselines`` the references.
"""
