"""Training scripts for cxr-hub (segmentation, classifiers) and their shared data layer."""
