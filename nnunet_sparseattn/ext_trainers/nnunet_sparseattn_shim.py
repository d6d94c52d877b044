# nnU-Net imports every module in a folder named by nnUNet_extTrainer as a top-level module and drops those modules
# from sys.modules afterwards. This shim is the only module here: it re-exports the trainers from the installed
# package, so the class nnU-Net finds is the very object that lives in nnunet_sparseattn.trainers (and pickles).
from nnunet_sparseattn.errors import install_user_error_hook
from nnunet_sparseattn.trainers import *  # noqa: F401,F403

install_user_error_hook()  # our one-line errors (e.g. a refused plans file) inside nnUNetv2_train/predict
