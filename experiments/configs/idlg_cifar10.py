"""iDLG (Zhao et al., 2020) on real CIFAR-10: dlg_cifar10.py with the label read off the update.

The label of the single image is the class whose column of the last layer's weight gradient
sums lowest (`labels.idlg`, exact for non-negative penultimate features such as LeNet's
sigmoids); then only the image is optimized (L-BFGS, squared-L2 matching, 6,000 iterations).

Commands, from the repository root:
  gipip-jax attack --config experiments/configs/idlg_cifar10.py:smoke --workdir runs/idlg_smoke
      1 target, 300 iterations: ~30 s on the 2-core CPU (mostly compile)
  gipip-jax attack --config experiments/configs/idlg_cifar10.py --workdir runs/idlg_cifar10
      8 targets x 6,000 iterations: as dlg_cifar10.py (not timed separately)
Batch label strategies with the same attack: --set targets.batch_size=4 --set attack.labels=bias_count
(or yin, llg). Label accuracy over many images without attacking: experiments/labels_cifar10.py.
"""

import pathlib
import runpy


def get_config(arg=None):
    c = runpy.run_path(str(pathlib.Path(__file__).with_name("dlg_cifar10.py")))["get_config"](arg)
    c.name = "idlg"
    c.attack.labels = "idlg"
    return c
