"""The optimizer a config names, built for a model: one place that reads the optimizer keys."""
from .adamw import AdamW, split_decay


def create_optimizer(model, cfg):
    """An optimizer Cell for ``model``'s trainable parameters from the trainer's config:
    ``optimizer(grads, lr)`` updates them in place; ``optimizer.state_params()`` lists the state
    a resume restores."""
    params = model.trainable_params()
    opt = cfg.opt.lower()
    if opt != 'adamw':
        raise ValueError(f"opt '{cfg.opt}': the CoaT recipe uses adamw (the only optimizer here)")
    decays = split_decay(params, model.no_weight_decay_names(), cfg.weight_decay,
                         cfg.filter_bias_and_bn)
    return AdamW(params, decays, betas=tuple(cfg.betas), eps=cfg.eps)
