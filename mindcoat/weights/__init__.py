"""CoaT weights from every source: safe readers (torch zip, safetensors, MindSpore .ckpt), the
mapping of other implementations' names onto mindcoat's, all-or-nothing loading into a model,
what a file says about its model, mindcoat's own checkpoint files and the official downloads.

Above ``models`` (it reads the registry to name the variant a file holds) and below everything
that loads weights: ``mindcoat.create_model`` builds a model, then calls ``load_weights``."""
from .checkpoint import TRAIN_FORMAT, save_ckpt
from .hub import fetch_weights, pretrained_cfg
from .loading import LoadReport, architecture, checkpoint_info, likely_variant, load_weights, \
    read_weights
from .readers import DEFAULT_MAX_GB, MAX_GB_ENV, read_any, read_mindspore_ckpt

__all__ = ['TRAIN_FORMAT', 'save_ckpt', 'fetch_weights', 'pretrained_cfg', 'LoadReport',
           'architecture', 'checkpoint_info', 'likely_variant', 'load_weights', 'read_weights',
           'DEFAULT_MAX_GB', 'MAX_GB_ENV', 'read_any', 'read_mindspore_ckpt']
