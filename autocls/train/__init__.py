"""One trainer for every caller: configuration, backbones, optimizers, augmentation, batch feeding,
callbacks and cross-validation."""
