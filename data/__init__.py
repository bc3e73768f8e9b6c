"""Data: COCO-style datasets to TFRecords, decoding, augmentation and batching."""
