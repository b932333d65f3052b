"""sdga-train: corpus -> features -> augmentation -> Lightning fit -> export of one model file."""
