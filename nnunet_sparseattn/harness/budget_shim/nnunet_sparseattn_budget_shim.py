# nnU-Net imports the modules of every folder in nnUNet_extTrainer as top-level modules and asks each for the
# trainer it wants (hasattr). This one answers every budgeted name, <Trainer>_bench<budget>, with the module
# __getattr__ (PEP 562) of nnunet_sparseattn.harness.budgets, which makes the class there on first access: the class
# nnU-Net finds is the object bound in the installed package, so it pickles. Other names are not found here.
from nnunet_sparseattn.errors import install_user_error_hook
from nnunet_sparseattn.harness.budgets import __getattr__  # noqa: F401

install_user_error_hook()  # our one-line errors inside nnUNetv2_train/predict
