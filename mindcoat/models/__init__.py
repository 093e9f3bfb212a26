from .coat import CoaT
from .registry import ARCHS, DATA_CONFIGS, PUBLISHED_TOP1, list_models


def create_model(name, pretrained=False, num_classes=1000, in_channels=3, checkpoint_path=None,
                 features_only=False, out_indices=(0, 1, 2, 3), drop_rate=0.0, drop_path_rate=0.0,
                 **kwargs):
    """Builds a CoaT variant by name. ``checkpoint_path`` (or ``pretrained`` given as a path) loads
    weights in any format ``mindcoat.convert`` reads: mindcoat/MindSpore .ckpt, the official
    .pth, timm .pth/.safetensors, MindCV .ckpt."""
    if name not in ARCHS:
        raise ValueError(f"unknown model '{name}'; choose one of: {', '.join(list_models())}")
    if pretrained and not checkpoint_path:
        if not isinstance(pretrained, str):
            raise ValueError("pretrained=True needs local weights: pass checkpoint_path=FILE "
                             "(nothing is downloaded at run time)")
        checkpoint_path = pretrained
    model = CoaT(**dict(ARCHS[name], **kwargs), num_classes=num_classes, in_channels=in_channels,
                 features_only=features_only, out_indices=out_indices, drop_rate=drop_rate,
                 drop_path_rate=drop_path_rate)
    model.name = name
    model.default_cfg = dict(DATA_CONFIGS[name], num_classes=num_classes)
    if checkpoint_path:
        from ..convert import load_weights
        load_weights(model, checkpoint_path)
    return model


__all__ = ['CoaT', 'create_model', 'list_models', 'ARCHS', 'DATA_CONFIGS', 'PUBLISHED_TOP1']
