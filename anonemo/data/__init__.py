"""Datasets, preprocessing, augmentation, grouped folds and the LightningDataModule."""
